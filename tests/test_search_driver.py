"""The network-level search on a tiny model: resumes exactly, honours the tolerance, rejects bad input."""

import json

import numpy as np
import pytest
import torch
from search_helpers import tiny_digits_run

from structprune.cli import main
from structprune.data import load_dataset
from structprune.errors import StructpruneError
from structprune.metrics import size_metrics
from structprune.models import create
from structprune.runfolder import load_run, save_run
from structprune.search import driver as driver_mod
from structprune.search.driver import Search, SearchConfig, conv_macs, search_run
from structprune.sparsity.granularity import Granularity, IntraPattern, KernelForm
from structprune.sparsity.masks import NetworkMask
from structprune.sparsity.method import Method
from structprune.train import TrainConfig, train

FAST = {"particles": 4, "generations": 3, "score_images": 80, "check_images": 80, "step_epochs": 0, "final_epochs": 0}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return tiny_digits_run(tmp_path_factory.mktemp("runs"), epochs=2)


def test_interrupted_search_resumes_to_the_same_result(tiny_run, digits, tmp_path, monkeypatch):
    cfg = SearchConfig(method=Method.EPF, granularities=(Granularity.CHANNEL, Granularity.INTRA), tolerance=0.05,
                       layers=("features.0",), **FAST)
    _, full = search_run(load_run(tiny_run), digits, cfg, tmp_path / "full")

    calls = {"n": 0}
    original = Search._save_pf

    def interrupt_after_four(self, pf):
        original(self, pf)
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(Search, "_save_pf", interrupt_after_four)
    with pytest.raises(KeyboardInterrupt):
        search_run(load_run(tiny_run), digits, cfg, tmp_path / "resumed")
    saved = json.loads((tmp_path / ".resumed.structprune" / "checkpoints" / "state" / "driver.json").read_text())
    assert saved["pf"]["pf"] and len(saved["state"]["history"]) == 4  # the filter and its history, in one file
    assert not (tmp_path / "resumed").exists()  # never looks finished
    monkeypatch.setattr(Search, "_save_pf", original)
    _, resumed = search_run(load_run(tiny_run), digits, cfg, tmp_path / "resumed")

    assert resumed["kept_fraction"] == full["kept_fraction"] and resumed["val_mcr"] == full["val_mcr"]
    a = json.loads((tmp_path / "full" / "search.json").read_text())
    b = json.loads((tmp_path / "resumed" / "search.json").read_text())
    assert a["history"] == b["history"] and a["steps"] == b["steps"]
    assert len(a["history"]) >= FAST["generations"]
    assert {"generation", "best", "mean", "kept_fraction"} <= set(a["history"][0])
    fa = load_run(tmp_path / "full").model.state_dict()
    fb = load_run(tmp_path / "resumed").model.state_dict()
    assert all(torch.equal(fa[k], fb[k]) for k in fa)
    assert not (tmp_path / "resumed" / "state").exists() and not (tmp_path / ".resumed.structprune").exists()


def test_tolerance_decides_how_far_the_ladder_goes(tiny_run, digits, tmp_path):
    loose = SearchConfig(method=Method.L1, tolerance=0.99, **FAST)
    _, m_loose = search_run(load_run(tiny_run), digits, loose, tmp_path / "loose")
    tight = SearchConfig(method=Method.L1, tolerance=0.0, **FAST)
    _, m_tight = search_run(load_run(tiny_run), digits, tight, tmp_path / "tight")
    assert m_loose["conv_macs_removed"] > 0.9  # every rung accepted
    assert m_tight["conv_macs_removed"] < m_loose["conv_macs_removed"]
    steps = json.loads((tmp_path / "tight" / "search.json").read_text())["steps"]
    base = json.loads((tmp_path / "tight" / "search.json").read_text())["base_check_mcr"]
    for s in steps:  # a step is kept exactly when its check MCR stays within the tolerance
        assert s["accepted"] == (s["check_mcr"] - base <= 0.0)


def test_fixed_ratio_gives_equal_structure_for_every_method(tiny_run, digits, tmp_path):
    kept = {}
    for method in (Method.PF, Method.L1, Method.RANDOM_BEST, Method.TP_L2):
        cfg = SearchConfig(method=method, ratio=0.5, granularities=(Granularity.CHANNEL,), **FAST)
        _, m = search_run(load_run(tiny_run), digits, cfg, tmp_path / method)
        kept[method] = m["kept_fraction"]
        mask = NetworkMask.from_json(json.loads((tmp_path / method / "masks.json").read_text()))
        assert all(int(lm.keep_out.sum()) == lm.shape[0] // 2 for _, lm in mask)
    assert kept[Method.PF] == kept[Method.L1] == kept[Method.RANDOM_BEST] == kept[Method.TP_L2]


def test_conv_macs_count_pruned_inputs(tiny_run):
    model = load_run(tiny_run).model
    mask = NetworkMask()
    conv = model.get_submodule("features.0")
    lm = mask.layer("features.0", conv)
    lm.keep_out = torch.tensor([True, False] * 4)
    masked, dense = conv_macs(model, mask, (1, 8, 8))
    # conv0 8x1x3x3 at 8x8, conv1 8x8x3x3 at 8x8, conv2 16x8x3x3 at 4x4: halving conv0's maps halves
    # conv0 (its outputs) and conv1 (its inputs), not conv2
    assert dense == 64 * 72 + 64 * 576 + 16 * 1152
    assert masked == 64 * 72 // 2 + 64 * 576 // 2 + 16 * 1152


def test_bad_input_is_one_line(tiny_run, digits, tmp_path, capsys):
    with pytest.raises(StructpruneError, match="tolerance"):
        SearchConfig(tolerance=1.5)
    with pytest.raises(StructpruneError, match="ratio"):
        SearchConfig(ratio=1.0)
    empty = digits.__class__(**{**digits.__dict__, "val": digits.val.subset(0)})
    with pytest.raises(StructpruneError, match="empty"):
        Search(load_run(tiny_run), empty, SearchConfig(**FAST), tmp_path / "x")
    (tmp_path / "untrained").mkdir()
    cases = [
        [str(tmp_path / "untrained"), "--method", "pf", "--max"],
        [str(tiny_run), "--method", "pf", "--max", "--tolerance", "-1"],
        [str(tiny_run), "--method", "pf"],
    ]
    for args in cases:
        assert main(["prune", *args, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("structprune: error:") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_cli_search_writes_a_run(tiny_run, tmp_path, capsys):
    out = tmp_path / "pf"
    args = ["prune", str(tiny_run), "--granularity", "channel", "--method", "pf", "--max", "--tolerance", "5",
            "--particles", "4", "--generations", "2", "--score-images", "80", "--check-images", "80",
            "--retrain-epochs", "0", "--final-epochs", "1"]
    assert main([*args, "--out", str(out)]) == 0
    assert "conv MACs removed" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["conv_macs_removed"] < 1 and np.isfinite(metrics["test_mcr"])
    sizes = {k: metrics[k] for k in ("params", "macs", "weight_bytes")}  # what every run folder's metrics promise
    assert sizes == size_metrics(load_run(out).model)
    assert {"masks.json", "search.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    assert driver_mod.SEARCH_FILE == "search.json"


def test_batch_norm_recalibration_runs_through_the_search(digits, tmp_path):
    torch.manual_seed(0)
    model = create("tiny-paper", in_channels=1, input_size=8, bn=True)
    train(model, digits, TrainConfig(epochs=1, lr=0.05))
    save_run(tmp_path / "bn", model, None, {}, {"dataset": "digits"})
    runs = {}
    for batches in (0, 2):
        cfg = SearchConfig(method=Method.PF, ratio=0.5, bn_batches=batches, layers=("features.3",), **FAST)
        search_run(load_run(tmp_path / "bn"), digits, cfg, tmp_path / f"b{batches}")
        runs[batches] = json.loads((tmp_path / f"b{batches}" / "search.json").read_text())["history"]
    # the candidates were scored with other batch-norm statistics, so the scores differ
    assert [h["best"] for h in runs[0]] != [h["best"] for h in runs[2]]


def test_kernel_units_share_one_bit_per_group_and_input_map():
    from structprune.search.scoring import kernel_masks_from_units, kernel_units

    alive = torch.ones(4, 3, dtype=torch.bool)
    alive[1] = False  # a pruned output map
    free = kernel_units(alive, 0)
    assert free[alive].tolist() == list(range(9)) and bool((free[~alive] == -1).all())
    units = kernel_units(alive, 3)  # 3 alive rows: 3 groups of one row each
    assert units.max() == 8 and bool((units[1] == -1).all())
    units = kernel_units(alive, 2)  # 3 alive rows do not split in 2: one group, every row the same bits
    assert units[0].tolist() == units[2].tolist() == units[3].tolist() == [0, 1, 2]
    alive[:, 1] = False  # input map 1 pruned everywhere: its unit drops out, the others are renumbered
    units = kernel_units(alive, 1)
    assert units[0].tolist() == [0, -1, 1]
    masks = kernel_masks_from_units(np.array([[1, 0]], dtype=np.int16), units, (4, 3, 3, 3))
    assert masks[0, :, :, 1, 1].tolist() == [[1, 0, 0], [0, 0, 0], [1, 0, 0], [1, 0, 0]]


@pytest.mark.parametrize("method", [Method.PF, Method.L1])
def test_structured_kernel_and_shared_pattern_searches_give_fast_masks(tiny_run, digits, tmp_path, method):
    from structprune.compact.compaction import compact
    from structprune.stages.prune import load_masks

    cfg = SearchConfig(method=method, granularities=(Granularity.KERNEL, Granularity.INTRA), tolerance=0.99, ratio=0.5,
                       kernel=KernelForm("structured", 1), intra_shared=True,
                       intra_patterns=(IntraPattern(1, 3), IntraPattern(0, 2)), **FAST)
    out, _ = search_run(load_run(tiny_run), digits, cfg, tmp_path / "fast")
    run = load_run(out)
    mask = load_masks(run)
    kk = mask.layers["features.2"].keep_kernel  # the second conv: every output map keeps the same input maps
    assert 0 < int(kk.sum()) < kk.numel() and bool((kk == kk[0]).all())
    for name, layer in mask:
        if layer.intra is not None:
            assert len({(p.start, p.stride) for p in layer.intra if p is not None}) == 1, name
            assert {p for p in layer.intra if p is not None} <= {IntraPattern(1, 3), IntraPattern(0, 2)}
    small = compact(run.model, mask)
    for module in small.modules():
        if hasattr(module, "branches"):
            assert len(module.branches) == 1


@pytest.mark.parametrize("method", [Method.PF, Method.L1])
def test_kernel_block_search_gives_grouped_convolutions(tiny_run, digits, tmp_path, method):
    """The search assigns output maps to two blocks; its L1 candidate is the one-shot L1 selection."""
    from structprune.compact.compaction import compact
    from structprune.sparsity.kernel_blocks import input_blocks
    from structprune.sparsity.selection import select_masks
    from structprune.stages.prune import load_masks

    cfg = SearchConfig(method=method, granularities=(Granularity.KERNEL,), tolerance=0.99, ratio=0.5,
                       kernel=KernelForm("blocks", 2), **FAST)
    out, _ = search_run(load_run(tiny_run), digits, cfg, tmp_path / "blocks")
    run = load_run(out)
    mask = load_masks(run)
    assert "features.0" not in mask.layers or mask.layers["features.0"].keep_kernel is None  # reads the image
    second, third = mask.layers["features.2"].keep_kernel, mask.layers["features.5"].keep_kernel
    for kk in (second, third):
        assert input_blocks(kk) is not None and {int(r.sum()) for r in kk} == {kk.shape[1] // 2}
        assert sorted(torch.unique(kk, dim=0, return_counts=True)[1].tolist()) == [kk.shape[0] // 2] * 2
    # the third conv's input blocks are the second conv's output blocks
    read_by_third = {tuple(torch.nonzero(r).flatten().tolist()) for r in torch.unique(third, dim=0)}
    outputs_of_second = {tuple(torch.nonzero((second == s).all(1)).flatten().tolist()) for s in torch.unique(second, dim=0)}
    assert read_by_third == outputs_of_second
    if method == "l1":
        one_shot = select_masks(load_run(tiny_run).model, "kernel", 0.5, kernel=KernelForm("blocks", 2))
        for name in ("features.2", "features.5"):
            assert torch.equal(one_shot.layers[name].keep_kernel, mask.layers[name].keep_kernel), name
    small = compact(run.model, mask).eval()
    for name in ("features.2", "features.5"):
        layer = small.get_submodule(name)
        assert layer._single and [branch.groups for branch in layer.branches] == [2]
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        a, b = run.model.eval()(x), small(x)
    assert float((a - b).abs().max()) <= 1e-4 * float(a.abs().max())


def test_recalibrated_statistics_stay_with_an_accepted_rung_and_leave_with_an_undone_one(digits, tmp_path):
    torch.manual_seed(0)
    model = create("tiny-paper", in_channels=1, input_size=8, bn=True)
    train(model, digits, TrainConfig(epochs=1, lr=0.05))
    save_run(tmp_path / "bn", model, None, {}, {"dataset": "digits"})
    before = {k: v for k, v in load_run(tmp_path / "bn").model.state_dict().items() if "running_" in k}

    def statistics(out):
        return {k: v for k, v in load_run(out).model.state_dict().items() if "running_" in k}

    kept = SearchConfig(method=Method.L1, ratio=0.5, bn_batches=2, layers=("features.3",), **FAST)
    search_run(load_run(tmp_path / "bn"), digits, kept, tmp_path / "kept")
    after = statistics(tmp_path / "kept")
    assert any(not torch.equal(before[k], after[k]) for k in before)  # re-estimated under the accepted mask

    undone = SearchConfig(method=Method.L1, tolerance=0.0, ladder=(0.9,), bn_batches=2, layers=("features.3",), **FAST)
    search_run(load_run(tmp_path / "bn"), digits, undone, tmp_path / "undone")
    steps = json.loads((tmp_path / "undone" / "search.json").read_text())["steps"]
    assert [s["accepted"] for s in steps] == [False]
    after = statistics(tmp_path / "undone")
    assert all(torch.equal(before[k], after[k]) for k in before)  # the candidate's statistics left with it


def test_kernel_block_rungs_need_two_equal_blocks_of_inputs_and_outputs():
    from structprune.search.driver import kernel_block_rung

    model = create("plain", spec="6C3-6C3-6C3-10FC", in_channels=1, input_size=8)
    mask = NetworkMask()
    assert kernel_block_rung(model, mask, "features.0", 2) is None  # reads the image
    rung = kernel_block_rung(model, mask, "features.2", 2)
    assert rung.space.n == 6 and rung.space.keep == 3 and rung.in_blocks.tolist() == [0, 0, 0, 1, 1, 1]
    mask.layer("features.0", model.features[0]).keep_out = torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.bool)
    assert kernel_block_rung(model, mask, "features.2", 2) is None  # 3 input maps cannot split evenly
    mask.layers["features.0"].keep_out = torch.tensor([1, 1, 0, 1, 1, 0], dtype=torch.bool)
    assert kernel_block_rung(model, mask, "features.2", 2).in_blocks.tolist() == [0, 0, -1, 1, 1, -1]
    mask.layer("features.2", model.features[2]).keep_out = torch.tensor([1, 1, 1, 1, 1, 0], dtype=torch.bool)
    assert kernel_block_rung(model, mask, "features.2", 2) is None  # 5 output maps cannot split evenly


def test_search_config_takes_one_kernel_form_and_saves_as_json():
    import json
    from dataclasses import asdict

    cfg = SearchConfig(granularities=(Granularity.KERNEL, Granularity.INTRA), kernel=KernelForm("structured", 2),
                       intra_patterns=(IntraPattern(1, 3),))
    saved = json.loads(json.dumps(asdict(cfg)))
    assert saved["kernel"] == {"structure": "structured", "groups": 2}
    assert saved["intra_patterns"] == [{"start": 1, "stride": 3}]
    assert saved["granularities"] == ["kernel", "intra"] and saved["method"] == "pf"
    assert json.loads(json.dumps(asdict(SearchConfig(method=Method.RANDOM_BEST))))["method"] == "random-best"
    assert Method.from_stored("random", search=True) is Method.RANDOM_BEST  # how earlier search configs spelt it
    assert Method.from_stored("random") is Method.RANDOM
    with pytest.raises(StructpruneError, match="search method must be a Method"):
        SearchConfig(method="pf")
    with pytest.raises(StructpruneError, match="search method 'random' does not apply"):
        SearchConfig(method=Method.RANDOM)
    with pytest.raises(StructpruneError, match="tuple of Granularity"):
        SearchConfig(granularities=("channel",))
    assert saved == json.loads(json.dumps(asdict(SearchConfig(**{**vars(cfg)}))))  # deterministic
    with pytest.raises(StructpruneError, match="the search chooses 2 kernel blocks per layer, not 3"):
        SearchConfig(kernel=KernelForm("blocks", 3))
    with pytest.raises(StructpruneError, match="kernel must be a KernelForm"):
        SearchConfig(kernel="blocks:2")
    with pytest.raises(StructpruneError, match="tuple of IntraPattern"):
        SearchConfig(intra_patterns=((1, 3),))


def test_a_rise_of_exactly_the_tolerance_is_within_it(tiny_run, digits):
    cfg = SearchConfig(method=Method.PF, granularities=(Granularity.CHANNEL,), tolerance=0.002, **FAST)
    search = Search(load_run(tiny_run), digits, cfg, "unused-out")
    assert 0.021 - 0.019 > 0.002  # what float subtraction gives
    assert search.within_tolerance(0.021, 0.019) and not search.within_tolerance(0.022, 0.019)
