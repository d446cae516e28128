"""The prune and compact stages on a tiny digits network: kernel blocks, hidden fully connected units, nesting,
and damaged masks (called as library functions; the command line is tested in test_cli_basic.py)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from structprune import models
from structprune.errors import StructpruneError
from structprune.metrics import size_metrics
from structprune.runfolder import load_run, save_run
from structprune.sparsity.granularity import Granularity, KernelForm
from structprune.sparsity.selection import SelectionConfig
from structprune.stages.prune import compact_run, select_run

CHANNEL, KERNEL, INTRA = Granularity.CHANNEL, Granularity.KERNEL, Granularity.INTRA


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """An (untrained, seeded) tiny-paper run on digits: what `structprune train` writes, minus the training."""
    torch.manual_seed(0)
    model = models.create("tiny-paper", in_channels=1, input_size=8)
    out = tmp_path_factory.mktemp("runs") / "base"
    save_run(out, model, None, {**size_metrics(model)}, {"dataset": "digits", "train": {"seed": 0}})
    return out


@pytest.fixture(scope="module")
def pruned(source) -> Path:
    out, _ = select_run(source, source.parent / "pruned", [CHANNEL, INTRA], [0.5, 0.55], SelectionConfig())
    return out


def _same_function(a: Path, b: Path) -> None:
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        ya, yb = load_run(a).model(x), load_run(b).model(x)
    assert float((ya - yb).abs().max()) <= 1e-4 * float(ya.abs().max())


def test_select_run_records_its_selection_and_masks(pruned):
    metrics = json.loads((pruned / "metrics.json").read_text())
    masks = json.loads((pruned / "masks.json").read_text())["layers"]
    assert masks["features.0"]["keep_out"] is not None and masks["features.2"]["intra"] is not None
    assert metrics["nonzero_params"] < metrics["params"] and metrics["compact_macs"] < metrics["macs"]
    assert 0.0 <= metrics["test_mcr"] <= 1.0
    assert float(load_run(pruned).model.features[0].weight.detach().abs().flatten(1).sum(1).eq(0).sum()) == 4
    prune = json.loads((pruned / "config.json").read_text())["prune"]
    assert prune == {"granularity": ["channel", "intra"], "method": "l1", "ratio": [0.5, 0.55], "scope": "layer",
                     "seed": 0, "round_to": 1, "kernel": "unstructured", "intra_shared": False, "linear_ratio": 0.0,
                     "intra_patterns": None, "bn_batches": 16}


def test_compact_metrics_follow_the_masked_run(pruned):
    out, metrics = compact_run(pruned, pruned.parent / "compact")
    assert metrics["params"] < metrics["source_metrics"]["params"]
    assert metrics["macs"] == json.loads((pruned / "metrics.json").read_text())["compact_macs"]
    assert metrics["test_mcr"] == metrics["masked_test_mcr"]
    assert {"params", "macs", "weight_bytes", "val_mcr", "test_mcr"} <= set(metrics)
    _same_function(pruned, out)


def test_kernel_blocks_prune_and_compact_into_grouped_convolutions(source, tmp_path):
    blocked, _ = select_run(source, tmp_path / "blocks", [KERNEL], [0.5], SelectionConfig(kernel=KernelForm("blocks", 2)))
    masks = json.loads((blocked / "masks.json").read_text())["layers"]
    assert "features.0" not in masks or masks["features.0"]["keep_kernel"] is None  # reads the image: no blocks
    rows = masks["features.2"]["keep_kernel"]
    assert {r.count("1") for r in rows} == {4} and len(set(rows)) == 2  # two blocks of 4 of the 8 input maps
    small, _ = compact_run(blocked, tmp_path / "blocks-compact")
    arch = json.loads((small / "arch.json").read_text())["modules"]
    assert arch["features.2"]["type"] == arch["features.5"]["type"] == "KernelSparseConv2d"
    _same_function(blocked, small)
    layer = load_run(small).model.features[2]
    assert layer._single and [branch.groups for branch in layer.branches] == [2]


def test_linear_ratio_prunes_the_hidden_fc_units_and_compact_removes_them(source, tmp_path):
    pruned, _ = select_run(source, tmp_path / "units", [CHANNEL], [0.25], SelectionConfig(linear_ratio=0.5))
    masks = json.loads((pruned / "masks.json").read_text())["layers"]
    assert masks["classifier.1"]["shape"] == [32, 64] and len(masks["classifier.1"]["keep_out"]) == 16
    assert json.loads((pruned / "config.json").read_text())["prune"]["linear_ratio"] == 0.5
    small, _ = compact_run(pruned, tmp_path / "units-compact")
    arch = json.loads((small / "arch.json").read_text())["modules"]
    assert arch["classifier.1"]["out_features"] == 16 and arch["classifier.3"]["in_features"] == 16
    _same_function(pruned, small)


def test_pruning_a_pruned_run_nests_inside_its_masks(pruned, tmp_path):
    out, _ = select_run(pruned, tmp_path / "further", [CHANNEL], [0.75], SelectionConfig())
    first = json.loads((pruned / "masks.json").read_text())["layers"]
    second = json.loads((out / "masks.json").read_text())["layers"]
    for name, layer in first.items():
        if layer["keep_out"] is not None:
            assert set(second[name]["keep_out"]) < set(layer["keep_out"])
        assert second[name]["intra"] == layer["intra"]  # the earlier intra patterns are kept


def test_compact_needs_masks(source, tmp_path):
    with pytest.raises(StructpruneError, match=r"no masks\.json"):
        compact_run(source, tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["layers"].__setitem__("features.7", m["layers"]["features.0"]), "features.7"),
        (lambda m: m["layers"]["features.0"].__setitem__("keep_out", []), r"features\.0: mask removes every"),
        (lambda m: m["layers"]["features.2"].__setitem__("intra", [[10, 1]] * 8), r"features\.2: intra-kernel pattern"),
        (lambda m: m["layers"]["features.2"].__setitem__("intra", [[0, 1]] * 3), r"features\.2: 3 intra-kernel patterns"),
    ],
)
def test_bad_masks_are_one_line_naming_the_layer_and_no_output(pruned, tmp_path, edit, message):
    broken = tmp_path / "broken"
    shutil.copytree(pruned, broken)
    masks = json.loads((broken / "masks.json").read_text())
    edit(masks)
    (broken / "masks.json").write_text(json.dumps(masks))
    out = tmp_path / "out"
    with pytest.raises(StructpruneError) as err:
        compact_run(broken, out)
    assert re.search(message, str(err.value)) and len(str(err.value).splitlines()) == 1
    assert not out.exists()
