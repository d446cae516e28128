"""The prune / compact / retrain / bench verbs, run as real commands on a tiny digits network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from structprune import models
from structprune.cli import main
from structprune.metrics import size_metrics
from structprune.runfolder import load_run, save_run

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}


def cli(*args: str) -> subprocess.CompletedProcess:
    """The real command, in a subprocess."""
    return subprocess.run([sys.executable, "-m", "structprune", *args], capture_output=True, text=True, env=ENV,
                          timeout=300)


def cli_inline(capsys, *args: str) -> tuple[int, str]:
    """The same entry point in this process (cheaper, for the error paths): exit code and stderr."""
    code = main(list(args))
    return code, capsys.readouterr().err


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
    out = source.parent / "pruned"
    r = cli("prune", str(source), "--granularity", "channel,intra", "--ratio", "0.5,0.55", "--method", "l1",
            "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


def test_prune_writes_a_masked_run_with_masks_and_metrics(source, pruned):
    metrics = json.loads((pruned / "metrics.json").read_text())
    masks = json.loads((pruned / "masks.json").read_text())
    assert masks["layers"]["features.0"]["keep_out"] is not None
    assert masks["layers"]["features.2"]["intra"] is not None
    assert metrics["nonzero_params"] < metrics["params"]
    assert metrics["compact_macs"] < metrics["macs"]
    assert 0.0 <= metrics["test_mcr"] <= 1.0
    run = load_run(pruned)
    assert float(run.model.features[0].weight.detach().abs().flatten(1).sum(1).eq(0).sum()) == 4  # 4 of 8 maps zero


def test_compact_matches_the_masked_run(pruned):
    out = pruned.parent / "compact"
    r = cli("compact", str(pruned), "--out", str(out))
    assert r.returncode == 0, r.stderr
    masked, small = load_run(pruned), load_run(out)
    arch = json.loads((out / "arch.json").read_text())
    assert arch["modules"]["features.2"]["type"] == "IntraKernelConv2d"
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        a, b = masked.model(x), small.model(x)
    assert float((a - b).abs().max()) <= 1e-4 * float(a.abs().max())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["params"] < metrics["source_metrics"]["params"]
    assert metrics["macs"] == json.loads((pruned / "metrics.json").read_text())["compact_macs"]
    assert metrics["test_mcr"] == metrics["masked_test_mcr"]
    assert {"params", "macs", "weight_bytes", "val_mcr", "test_mcr"} <= set(metrics)


def test_retrain_keeps_pruned_weights_exactly_zero(pruned):
    out = pruned.parent / "retrained"
    r = cli("retrain", str(pruned), "--epochs", "1", "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    before, after = load_run(pruned).model.state_dict(), load_run(out).model.state_dict()
    zeros = before["features.0.weight"] == 0
    assert bool(zeros.any())
    assert bool((after["features.0.weight"][zeros] == 0).all())
    assert not torch.equal(before["features.0.weight"], after["features.0.weight"])
    assert (out / "masks.json").exists() and not (out.parent / ".retrained.structprune").exists()


def test_bench_writes_the_records(source, pruned, tmp_path):
    target = tmp_path / "bench.json"
    r = cli("bench", str(source), str(pruned), "--batch", "1,3", "--threads", "1", "--rounds", "2",
            "--json", str(target), "--no-progress")
    assert r.returncode == 0, r.stderr
    records = json.loads(target.read_text())
    assert len(records) == 4
    r = cli("bench", str(source), "--batch", "1", "--threads", "1", "--rounds", "1", "--json", str(target),
            "--no-progress")  # an existing file is kept...
    assert r.returncode == 2 and "--overwrite" in r.stderr and len(json.loads(target.read_text())) == 4
    r = cli("bench", str(source), "--batch", "1", "--threads", "1", "--rounds", "1", "--json", str(target),
            "--no-progress", "--overwrite")  # ...unless replacing it is asked for
    assert r.returncode == 0, r.stderr
    assert len(json.loads(target.read_text())) == 1
    r = cli("bench", str(source), "--batch", "1", "--json", str(tmp_path), "--no-progress")
    assert r.returncode == 2 and r.stderr.strip().endswith("is a folder, not a file") and "Traceback" not in r.stderr
    for rec in records:
        assert {"run", "batch", "threads", "median_ms", "macs", "params", "test_mcr"} <= set(rec)
        assert rec["median_ms"] > 0 and rec["threads"] == 1


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["layers"].__setitem__("features.7", m["layers"]["features.0"]), "features.7"),
        (lambda m: m["layers"]["features.0"].__setitem__("keep_out", []), r"features\.0: mask removes every"),
        (lambda m: m["layers"]["features.2"].__setitem__("intra", [[10, 1]] * 8), r"features\.2: intra-kernel pattern"),
        (lambda m: m["layers"]["features.2"].__setitem__("intra", [[0, 1]] * 3), r"features\.2: 3 intra-kernel patterns"),
    ],
)
def test_bad_masks_get_one_line_naming_the_layer_and_no_output(pruned, tmp_path, capsys, edit, message):
    import re
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(pruned, broken)
    masks = json.loads((broken / "masks.json").read_text())
    edit(masks)
    (broken / "masks.json").write_text(json.dumps(masks))
    out = tmp_path / "out"
    code, err = cli_inline(capsys, "compact", str(broken), "--out", str(out))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]) and "Traceback" not in err
    assert not out.exists()


def test_bad_prune_arguments_are_one_line_errors(source, tmp_path, capsys):
    x = str(tmp_path / "x")
    code, err = cli_inline(capsys, "prune", str(source), "--granularity", "channel,kernel", "--ratio", "0.1,0.2,0.3",
                           "--out", x)
    assert code == 2 and "3 values for 2 granularities" in err
    code, err = cli_inline(capsys, "prune", str(source), "--granularity", "channels", "--ratio", "0.5", "--out", x)
    assert code == 2 and "unknown granularity 'channels'" in err
    code, err = cli_inline(capsys, "compact", str(source), "--out", x)
    assert code == 2 and "no masks.json" in err
    assert not (tmp_path / "x").exists()


def test_kernel_blocks_prune_and_compact_into_grouped_convolutions(source, tmp_path, capsys):
    blocked, small = tmp_path / "blocks", tmp_path / "blocks-compact"
    code, err = cli_inline(capsys, "prune", str(source), "--granularity", "kernel", "--ratio", "0.5",
                           "--kernel-structure", "blocks", "--kernel-groups", "2", "--out", str(blocked))
    assert code == 0, err
    masks = json.loads((blocked / "masks.json").read_text())["layers"]
    assert "features.0" not in masks or masks["features.0"]["keep_kernel"] is None  # reads the image: no blocks
    rows = masks["features.2"]["keep_kernel"]
    assert {r.count("1") for r in rows} == {4} and len(set(rows)) == 2  # two blocks of 4 of the 8 input maps
    code, err = cli_inline(capsys, "compact", str(blocked), "--out", str(small))
    assert code == 0, err
    arch = json.loads((small / "arch.json").read_text())["modules"]
    assert arch["features.2"]["type"] == arch["features.5"]["type"] == "KernelSparseConv2d"
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        a, b = load_run(blocked).model(x), load_run(small).model(x)
    assert float((a - b).abs().max()) <= 1e-4 * float(a.abs().max())
    layer = load_run(small).model.features[2]
    assert layer._single and [branch.groups for branch in layer.branches] == [2]
    code, err = cli_inline(capsys, "prune", str(source), "--granularity", "kernel", "--ratio", "0.5", "--method", "pf",
                           "--kernel-structure", "blocks", "--out", str(tmp_path / "no"))
    assert code == 2 and "the search chooses 2 kernel blocks per layer: give --kernel-groups 2, not 4" in err
    assert not (tmp_path / "no").exists()


def test_linear_ratio_prunes_the_hidden_fc_units_and_compact_removes_them(source, tmp_path, capsys):
    pruned, small = tmp_path / "units", tmp_path / "units-compact"
    code, err = cli_inline(capsys, "prune", str(source), "--granularity", "channel", "--ratio", "0.25",
                           "--linear-ratio", "0.5", "--out", str(pruned))
    assert code == 0, err
    masks = json.loads((pruned / "masks.json").read_text())["layers"]
    assert masks["classifier.1"]["shape"] == [32, 64] and len(masks["classifier.1"]["keep_out"]) == 16
    assert json.loads((pruned / "config.json").read_text())["prune"]["linear_ratio"] == 0.5
    code, err = cli_inline(capsys, "compact", str(pruned), "--out", str(small))
    assert code == 0, err
    arch = json.loads((small / "arch.json").read_text())["modules"]
    assert arch["classifier.1"]["out_features"] == 16 and arch["classifier.3"]["in_features"] == 16
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        a, b = load_run(pruned).model(x), load_run(small).model(x)
    assert float((a - b).abs().max()) <= 1e-4 * float(a.abs().max())
    code, err = cli_inline(capsys, "prune", str(source), "--granularity", "channel", "--ratio", "0.5", "--method", "pf",
                           "--linear-ratio", "0.5", "--out", str(tmp_path / "no"))
    assert code == 2 and "--linear-ratio is for one-shot selection" in err and len(err.strip().splitlines()) == 1
    r = cli("prune", str(source), "--granularity", "channel", "--ratio", "0.5", "--linear-ratio", "1.5",
            "--out", str(tmp_path / "no"))
    assert r.returncode == 2 and "each ratio must be in [0, 1)" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "no").exists()


def test_pruning_a_pruned_run_nests_inside_its_masks(pruned, tmp_path, capsys):
    out = tmp_path / "further"
    code, err = cli_inline(capsys, "prune", str(pruned), "--granularity", "channel", "--ratio", "0.75", "--out", str(out))
    assert code == 0, err
    first = json.loads((pruned / "masks.json").read_text())["layers"]
    second = json.loads((out / "masks.json").read_text())["layers"]
    for name, layer in first.items():
        if layer["keep_out"] is not None:
            assert set(second[name]["keep_out"]) < set(layer["keep_out"])
        assert second[name]["intra"] == layer["intra"]  # the earlier intra patterns are kept


def test_l1_with_schedule_runs_the_search_schedule_with_its_retraining(source, tmp_path, capsys):
    out = tmp_path / "l1-schedule"
    code, _ = cli_inline(capsys, "prune", str(source), "--granularity", "channel", "--method", "l1", "--ratio", "0.5",
                         "--schedule", "--particles", "2", "--generations", "1", "--score-images", "50",
                         "--check-images", "50", "--retrain-epochs", "0", "--final-epochs", "1", "--final-images",
                         "200", "--out", str(out))
    assert code == 0
    search = json.loads((out / "search.json").read_text())
    assert search["config"]["method"] == "l1" and search["config"]["final_epochs"] == 1
    one_shot = load_run(source.parent / "pruned").metrics  # the plain l1 path: no search.json, no retraining
    assert not (source.parent / "pruned" / "search.json").exists() and "search_seconds" not in one_shot
