"""Per-layer sensitivity sweep: each point equals an independent masked evaluation; resume; CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from structprune.cli import main
from structprune.data import load_dataset
from structprune.errors import StructpruneError
from structprune.metrics import size_metrics
from structprune.models import create
from structprune.report import collect
from structprune.report.plots import all_plots
from structprune.runfolder import save_run
from structprune.sensitivity import SensitivityConfig, sweep
from structprune.sparsity.granularity import Granularity
from structprune.sparsity.masking import MaskApplier, apply_mask_
from structprune.sparsity.masks import NetworkMask
from structprune.sparsity.method import Method
from structprune.sparsity.selection import SelectionConfig, select
from structprune.train import TrainConfig, evaluate, train


@pytest.fixture(scope="module")
def trained():
    data = load_dataset("digits")
    model = create("tiny-paper", num_classes=10, in_channels=1, input_size=8)
    train(model, data, TrainConfig(epochs=2, seed=0))
    return model.eval(), data


@pytest.mark.parametrize("granularity", list(Granularity))
def test_each_point_equals_an_independent_masked_evaluation(trained, granularity):
    model, data = trained
    before = copy.deepcopy(model.state_dict())
    cfg = SensitivityConfig(granularity=granularity, ratios=(0.25, 0.75), images=150)
    result = sweep(model, data, cfg)
    split = data.val.subset(150)
    assert result["baseline_mcr"] == evaluate(model, split).mcr
    assert result["complete"] and result["layers"]
    groups = MaskApplier(model, sample=split.x[:1]).groups
    for name, mcrs in result["layers"].items():
        assert len(mcrs) == 2
        for j, ratio in enumerate(cfg.ratios):
            full = select(model, [granularity], [ratio], SelectionConfig(seed=j), groups=groups)
            alone = copy.deepcopy(model)
            apply_mask_(alone, NetworkMask({name: full.layers[name]}), groups)
            assert mcrs[j] == evaluate(alone, split).mcr
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights restored


def test_pruning_a_layer_entirely_hurts(trained):
    model, data = trained
    result = sweep(model, data, SensitivityConfig(ratios=(0.05, 0.95), images=200))
    first = result["layers"]["features.0"]
    assert first[0] == result["baseline_mcr"]  # 5% of 8 maps rounds to none pruned: nothing changes
    assert first[1] > result["baseline_mcr"]  # one map of 8 left


def test_resume_keeps_finished_layers(trained, tmp_path):
    model, data = trained
    cfg = SensitivityConfig(ratios=(0.5,), images=100)
    out = tmp_path / "sensitivity.json"
    full = sweep(model, data, cfg, out_file=out)
    names = list(full["layers"])
    partial = {**full, "layers": {names[0]: [0.123]}, "complete": False}
    out.write_text(json.dumps(partial))
    resumed = sweep(model, data, cfg, out_file=out)
    assert resumed["layers"][names[0]] == [0.123]  # not recomputed
    assert resumed["layers"][names[1]] == full["layers"][names[1]]
    assert json.loads(out.read_text())["complete"] is True
    other = sweep(model, data, SensitivityConfig(ratios=(0.5,), images=100, method=Method.RANDOM), out_file=out)
    assert other["layers"][names[0]] != [0.123]  # a different sweep does not resume from it


def test_never_overwrites_another_sweep(trained, tmp_path):
    model, data = trained
    out = tmp_path / "sensitivity.json"
    out.write_text(json.dumps({"base_mcr": 0.1, "layers": {"features.0": {"4": 0.2}}}))
    with pytest.raises(StructpruneError, match="another kind of sweep"):
        sweep(model, data, SensitivityConfig(ratios=(0.5,), images=50), out_file=out)
    assert json.loads(out.read_text())["base_mcr"] == 0.1


def test_bad_config_is_one_line_error():
    with pytest.raises(StructpruneError, match="between 0 and 1"):
        SensitivityConfig(ratios=(0.5, 1.0))
    with pytest.raises(StructpruneError, match="selection method 'pf' does not apply"):
        SensitivityConfig(method=Method.PF)
    with pytest.raises(StructpruneError, match="must be a Method"):
        SensitivityConfig(method="l1")


def test_cli_writes_sensitivity_and_report_plots_it(trained, tmp_path, capsys):
    model, data = trained
    run = tmp_path / "run"
    metrics = {"val_mcr": evaluate(model, data.val).mcr, "test_mcr": evaluate(model, data.test).mcr, **size_metrics(model)}
    save_run(run, model, None, metrics, {"model": "tiny-paper", "dataset": "digits", "train": {"seed": 0}})
    assert main(["sensitivity", str(run), "--ratios", "0.25,0.5", "--images", "100"]) == 0
    saved = json.loads((run / "sensitivity.json").read_text())
    assert saved["ratios"] == [0.25, 0.5] and saved["images"] == 100 and saved["complete"]
    assert any(p.key == "sensitivity_run" for p in all_plots(collect([run])))
    assert main(["sensitivity", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "structprune: error:" in err and "Traceback" not in err
    assert main(["sensitivity", str(run), "--ratios", "0.5,1.5"]) == 2
    assert not Path(tmp_path / "nope").exists()
