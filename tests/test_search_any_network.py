"""The search on networks that are not chains: residual adds, depthwise convs, concatenation, a user's own
registered network. Units at channel scale are the coupled channel groups; every result compacts into a network
with the masked one's outputs."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from search_helpers import UserResNet  # noqa: F401  (registers test-search-user-resnet)
from torch import nn

from structprune.compact.compaction import compact
from structprune.data import Split, load_dataset
from structprune.models import create
from structprune.runfolder import load_run, save_run
from structprune.search.driver import SearchConfig, search_run
from structprune.search.scoring_full import SCORING_CACHED, SCORING_FULL, SCORING_FX
from structprune.sparsity.channel_groups import find_channel_groups
from structprune.sparsity.granularity import Granularity
from structprune.sparsity.method import Method
from structprune.stages.prune import load_masks

FAST = {"particles": 3, "generations": 1, "score_images": 50, "check_images": 50, "step_epochs": 0, "final_epochs": 0}


@pytest.fixture(scope="module")
def data():
    """About 100 digits per split, resized to 16×16 with 3 channels."""
    digits = load_dataset("digits")

    def resized(split: Split) -> Split:
        x = F.interpolate(split.x[:100], size=(16, 16), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
        return Split(x, split.y[:100])

    return replace(digits, train=resized(digits.train), val=resized(digits.val), test=resized(digits.test),
                   in_channels=3, input_size=16)


def saved(tmp_path, name: str) -> object:
    torch.manual_seed(0)
    model = create(name, num_classes=10, in_channels=3, input_size=16)
    for m in model.modules():  # batch norms with statistics of their own, so that pruned maps matter
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.bias.data.uniform_(-0.2, 0.2)
    save_run(tmp_path / name, model, None, {}, {"dataset": "digits"})
    return tmp_path / name


def searched_and_compacted(run_path, data, cfg, out):
    """Search; then the compact network of the result and its outputs against the masked network's."""
    path, metrics = search_run(load_run(run_path), data, cfg, out)
    run = load_run(path)
    mask = load_masks(run)
    small = compact(run.model, mask).eval()
    x = data.test.x[:16]
    with torch.no_grad():
        a, b = run.model.eval()(x), small(x)
    assert float((a - b).abs().max()) <= 1e-4 * float(a.abs().max())
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in run.model.parameters())
    return mask, json.loads((path / "search.json").read_text()), metrics


@pytest.mark.parametrize("name", ["tiny-vgg", "tiny-resnet", "tiny-mobilenet", "tiny-densenet",
                                  "test-search-user-resnet"])
@pytest.mark.parametrize("method", ["pf", "epf"])
def test_channel_search_runs_on_every_network_and_compacts(tmp_path, data, name, method):
    cfg = SearchConfig(method=Method(method), ratio=0.5, **FAST)
    mask, record, metrics = searched_and_compacted(saved(tmp_path, name), data, cfg, tmp_path / "out")
    model = create(name, num_classes=10, in_channels=3, input_size=16)
    groups = find_channel_groups(model, torch.zeros(1, 3, 16, 16))
    roots = [g.root for g in groups if not g.linear]
    assert [unit for _, unit in record["order"]] == roots  # one step per coupled channel group
    assert {n for n, lm in mask if lm.keep_out is not None} <= set(roots)
    assert metrics["conv_macs_removed"] > 0.3
    scoring = {s["scoring"] for s in record["steps"]}
    assert all(s["scoring_reason"] for s in record["steps"])
    if name == "tiny-vgg":  # a chain: cached activations throughout
        assert scoring == {SCORING_CACHED}
    elif name in ("tiny-resnet", "test-search-user-resnet"):  # not chains: cached on the traced graph, but
        # the first groups' tails are (nearly) the whole graph: the full forward pass scores them
        kinds = [s["scoring"] for s in record["steps"]]
        fallen = kinds.index(SCORING_FX)
        assert fallen >= 1 and set(kinds[:fallen]) == {SCORING_FULL} and set(kinds[fallen:]) == {SCORING_FX}
        assert "no convolution runs before" in record["steps"][0]["scoring_reason"]
        assert all("of the conv MACs" in s["scoring_reason"] for s in record["steps"][1:])
    else:  # chains of blocks: the chain's cache where a group is one conv of the chain, else the traced graph
        assert SCORING_FX in scoring and scoring <= {SCORING_CACHED, SCORING_FX, SCORING_FULL}


@pytest.mark.parametrize("name", ["tiny-resnet", "tiny-mobilenet", "test-search-user-resnet"])
def test_kernel_and_intra_scales_where_the_structure_allows(tmp_path, data, name, caplog):
    cfg = SearchConfig(method=Method.PF, granularities=(Granularity.KERNEL, Granularity.INTRA), ratio=0.5, **FAST)
    with caplog.at_level(logging.INFO, logger="structprune.search"):
        mask, _, _ = searched_and_compacted(saved(tmp_path, name), data, cfg, tmp_path / "out")
    model = create(name, num_classes=10, in_channels=3, input_size=16)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    three = {n for n, m in convs.items() if m.kernel_size == (3, 3)}
    assert {n for n, lm in mask if lm.intra is not None} == three  # intra patterns on every 3×3 conv
    depthwise = {n for n, m in convs.items() if m.groups > 1}
    assert {n for n, lm in mask if lm.keep_kernel is not None} == set(convs) - depthwise
    lines = [r.getMessage() for r in caplog.records]
    for n in depthwise:
        assert any(line.startswith(f"{n}: a grouped or depthwise convolution") for line in lines)
    for n in set(convs) - three:
        assert any(line.startswith(f"{n}: a 1×1 convolution") for line in lines)


def test_kernel_blocks_on_a_residual_network_block_the_layers_with_one_producer(tmp_path, data, caplog):
    from structprune.sparsity.granularity import KernelForm
    from structprune.sparsity.kernel_blocks import input_blocks

    cfg = SearchConfig(method=Method.EPF, granularities=(Granularity.KERNEL,), ratio=0.5, kernel=KernelForm("blocks", 2),
                       **FAST)
    with caplog.at_level(logging.INFO, logger="structprune.search"):
        mask, _, _ = searched_and_compacted(saved(tmp_path, "test-search-user-resnet"), data, cfg, tmp_path / "out")
    blocked = {n for n, lm in mask if lm.keep_kernel is not None and input_blocks(lm.keep_kernel) is not None}
    # the second conv of each block reads its first conv alone; the others read the residual sum or the image
    assert blocked == {"blocks.0.2", "blocks.1.2", "down.2"}
    assert any(r.getMessage().startswith("blocks.0.0: its input maps have no blocks") for r in caplog.records)


def test_global_search_on_a_residual_network(tmp_path, data):
    cfg = SearchConfig(method=Method.PF, scope="global", ratio=0.5, **FAST)
    mask, record, _ = searched_and_compacted(saved(tmp_path, "tiny-resnet"), data, cfg, tmp_path / "out")
    assert record["steps"][0]["scoring"] == SCORING_FULL  # every group at once: the tail is the whole graph
    kept = sum(int(lm.keep_out.sum()) for _, lm in mask if lm.keep_out is not None)
    total = sum(lm.keep_out.numel() for _, lm in mask if lm.keep_out is not None)
    assert kept == round(0.5 * total)


def test_batch_norm_recalibration_in_cached_graph_scoring(tmp_path, data):
    run = saved(tmp_path, "tiny-resnet")
    best = {}
    for batches in (0, 1):
        cfg = SearchConfig(method=Method.PF, ratio=0.5, bn_batches=batches, layers=("layer2.0.conv1",),
                           **{**FAST, "generations": 2})
        _, record, _ = searched_and_compacted(run, data, cfg, tmp_path / f"b{batches}")
        assert record["steps"][0]["scoring"] == SCORING_FX
        best[batches] = [h["best"] for h in record["history"]]
    assert best[0] != best[1]  # the candidates were scored under other batch-norm statistics
    after = load_run(tmp_path / "b0").model.state_dict()
    before = load_run(run).model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "running_" in k)  # scoring left them alone
