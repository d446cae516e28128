"""The command line: argv parsed into typed values (or refused in one line), and one end-to-end pipeline on digits.

What each stage does is tested on the stage functions (test_stages.py, test_prune_stages.py, test_quantize_run.py);
bad input of every verb in test_bad_input.py, the output policy in test_output_policy.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datafiles_helpers import random_set

from structprune.cli import VERBS, UsageError, build_parser, main
from structprune.runfolder import MODEL_FILE, load_run
from structprune.sparsity.granularity import Granularity, IntraPattern, KernelStructure
from structprune.sparsity.method import Method


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("structprune: error:"), err
    return err[0]


# ------------------------------------------------------------------------------------------------ parsing
def test_help_of_every_verb(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    listed = capsys.readouterr().out
    for verb in VERBS:
        assert verb in listed
        with pytest.raises(SystemExit) as exit_:
            main([verb, "--help"])
        assert exit_.value.code == 0


def test_prune_arguments_parse_into_typed_values():
    args = build_parser().parse_args(["prune", "run", "--out", "o", "--granularity", "intra,channel,intra",
                                      "--method", "random-best", "--ratio", "0.5,0.25", "--kernel-structure", "blocks",
                                      "--intra-patterns", "1:3,0:2", "--max"])
    assert args.granularity == [Granularity.INTRA, Granularity.CHANNEL]
    assert args.method is Method.RANDOM_BEST and args.ratio == [0.5, 0.25]
    assert args.kernel_structure is KernelStructure.BLOCKS
    assert args.intra_patterns == (IntraPattern(1, 3), IntraPattern(0, 2)) and args.max
    defaults = build_parser().parse_args(["prune", "run", "--out", "o"])
    assert defaults.method is Method.L1 and defaults.granularity == [Granularity.CHANNEL]
    assert defaults.kernel_structure is None and defaults.intra_patterns is None  # resolved to the fast forms in run()
    assert defaults.round_to is None and not defaults.intra_free
    sens = build_parser().parse_args(["sensitivity", "run", "--granularity", "kernel", "--method", "random"])
    assert sens.granularity is Granularity.KERNEL and sens.method is Method.RANDOM


@pytest.mark.parametrize(("argv", "message"), [
    (["prune", "r", "--out", "o", "--method", "magic"], "unknown method 'magic'; choose from l1, random, pf"),
    (["prune", "r", "--out", "o", "--granularity", "channels"], "unknown granularity 'channels'"),
    (["prune", "r", "--out", "o", "--kernel-structure", "lattice"], "unknown kernel structure 'lattice'"),
    (["prune", "r", "--out", "o", "--intra-patterns", "1:3,1:3"], "lists a pattern twice"),
    (["prune", "r", "--out", "o", "--ratio", "0.5", "--linear-ratio", "1.5"], "each ratio must be in [0, 1)"),
    (["sensitivity", "r", "--method", "pf"], "unknown selection method 'pf'; choose from l1, random"),
    (["quantize", "r", "--bits", "17", "--out", "o"], "2–16"),
])
def test_bad_arguments_are_one_line_usage_errors(argv, message):
    with pytest.raises(UsageError) as err:
        build_parser().parse_args(argv)
    assert message in str(err.value) and len(str(err.value).splitlines()) == 1


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "tiny-paper", "--data", "imagenet"], "unknown dataset"),
    (["--model", "tiny-paper", "--data", "mnist", "--data-dir", "{empty}"], "mnist.npz"),
    (["--model", "tiny-paper", "--data", "mnist", "--data-dir", "{badlabels}"], "outside the class range"),
    (["--model", "tiny-paper", "--data", "mnist", "--data-dir", "{badshape}"], "expected 1×28×28"),
    (["--model", "tiny-paper", "--data", "mnist", "--data-dir", "{truncated}"], "corrupt or truncated"),
    (["--model", "tiny-paper", "--data", "digits", "--model-arg", "colour=1"], "colour"),
    (["--model", "tiny-paper", "--data", "digits", "--device", "cuda"], "CUDA"),
])
def test_bad_training_input(tmp_path, capsys, args, message):
    if "--device" in args and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    rng = np.random.default_rng(0)
    folders = {name: tmp_path / name for name in ("empty", "badlabels", "badshape", "truncated")}
    for folder in folders.values():
        folder.mkdir()
    bad = random_set(rng, (28, 28))
    bad["y_train"][0] = 12
    np.savez(folders["badlabels"] / "mnist.npz", **bad)
    np.savez(folders["badshape"] / "mnist.npz", **random_set(rng, (27, 28)))
    np.savez(folders["truncated"] / "mnist.npz", **random_set(rng, (28, 28)))
    npz = folders["truncated"] / "mnist.npz"
    npz.write_bytes(npz.read_bytes()[:-300])
    args = [a.format(**{k: str(v) for k, v in folders.items()}) for a in args]
    out = tmp_path / "run"
    assert main(["train", *args, "--epochs", "1", "--out", str(out), "--no-progress"]) == 2
    assert message in _one_line_error(capsys)
    assert not out.exists() and not (tmp_path / ".run.structprune").exists()


def test_train_on_a_small_data_set_with_the_defaults(tmp_path, capsys):
    np.savez(tmp_path / "mnist.npz", **random_set(np.random.default_rng(0), (28, 28), n_train=40))
    out = tmp_path / "run"
    assert main(["train", "--model", "tiny-paper", "--data", "mnist", "--data-dir", str(tmp_path), "--epochs", "1",
                 "--out", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["val_size"] == 4  # a tenth of the 40 training images


def test_output_under_a_file_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["train", "--model", "tiny-paper", "--data", "digits", "--out", str(tmp_path / "file" / "run")]) == 2
    assert "is a file" in _one_line_error(capsys)


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict[str, Path]:
    """train -> prune -> compact -> retrain -> export -> bench -> report, each a `structprune` command."""
    root = tmp_path_factory.mktemp("cli")
    runs = {name: root / name for name in ("dense", "pruned", "compact", "retrained")}
    files = {"onnx": root / "compact.onnx", "bench": root / "bench.json", "report": root / "report.html"}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        commands = [
            ["train", "--model", "tiny-paper", "--data", "digits", "--epochs", "2", "--out", str(runs["dense"]),
             "--threads", "1", "--no-progress"],
            ["prune", str(runs["dense"]), "--granularity", "channel,intra", "--ratio", "0.5,0.55", "--method", "l1",
             "--intra-free", "--round-to", "1", "--out", str(runs["pruned"])],
            ["compact", str(runs["pruned"]), "--out", str(runs["compact"])],
            ["retrain", str(runs["pruned"]), "--epochs", "1", "--out", str(runs["retrained"]), "--no-progress"],
            ["export", str(runs["compact"]), "--onnx", str(files["onnx"]), "--exporter", "torchscript"],
            ["bench", str(runs["dense"]), str(runs["compact"]), "--runtime", "eager", "--batch", "1,3", "--threads", "1",
             "--rounds", "1", "--json", str(files["bench"]), "--no-progress"],
            ["report", str(root), "--bench", str(files["bench"]), "--out", str(files["report"])],
        ]
        for argv in commands:
            assert main(argv) == 0, argv
    finally:
        torch.set_num_threads(before)
    return {**runs, **files, "root": root}


def test_pipeline_writes_every_stage(pipeline):
    dense = pipeline["dense"]
    assert sorted(p.name for p in dense.iterdir()) == ["arch.json", "config.json", "metrics.json", "model.safetensors"]
    config = json.loads((dense / "config.json").read_text())
    assert config["model"] == "tiny-paper" and config["train"]["epochs"] == 2 and config["threads"] == 1
    assert not any(p.name.endswith(".structprune") for p in pipeline["root"].iterdir())  # staging areas are gone
    prune = json.loads((pipeline["pruned"] / "config.json").read_text())["prune"]
    assert prune["method"] == "l1" and prune["granularity"] == ["channel", "intra"] and prune["ratio"] == [0.5, 0.55]
    arch = json.loads((pipeline["compact"] / "arch.json").read_text())
    assert arch["modules"]["features.2"]["type"] == "IntraKernelConv2d"
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        a, b = load_run(pipeline["pruned"]).model(x), load_run(pipeline["compact"]).model(x)
    assert float((a - b).abs().max()) <= 1e-4 * float(a.abs().max())
    assert (pipeline["retrained"] / "masks.json").is_file() and pipeline["onnx"].is_file()
    records = json.loads(pipeline["bench"].read_text())
    assert len(records) == 4 and all(r["median_ms"] > 0 and r["threads"] == 1 for r in records)
    assert "<table" in pipeline["report"].read_text()


def test_bench_keeps_an_existing_json_unless_told(pipeline, capsys):
    target = pipeline["bench"]
    argv = ["bench", str(pipeline["dense"]), "--runtime", "eager", "--batch", "1", "--threads", "1", "--rounds", "1",
            "--json", str(target), "--no-progress"]
    assert main(argv) == 2 and "--overwrite" in _one_line_error(capsys) and len(json.loads(target.read_text())) == 4
    assert main([*argv, "--overwrite"]) == 0 and len(json.loads(target.read_text())) == 1


def test_eval_reproduces_the_saved_metrics(pipeline, capsys):
    assert main(["eval", str(pipeline["dense"]), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    metrics = json.loads((pipeline["dense"] / "metrics.json").read_text())
    assert result["test_mcr"] == metrics["test_mcr"] and result["val_mcr"] == metrics["val_mcr"]


def test_info_lists_layers_and_totals(pipeline, capsys):
    assert main(["info", str(pipeline["dense"]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    metrics = json.loads((pipeline["dense"] / "metrics.json").read_text())
    assert sum(r["macs"] for r in info["layers"]) == metrics["macs"]
    assert sum(r["params"] for r in info["layers"]) == metrics["params"]
    assert info["layers"][0] == {"name": "features.0", "type": "Conv2d", "output_shape": [8, 8, 8],
                                 "weight_shape": [8, 1, 3, 3], "params": 80, "macs": 8 * 8 * 8 * 9}


def test_l1_with_schedule_runs_the_search_schedule(pipeline, tmp_path, capsys):
    out = tmp_path / "l1-schedule"
    assert main(["prune", str(pipeline["dense"]), "--granularity", "channel", "--method", "l1", "--ratio", "0.5",
                 "--schedule", "--particles", "2", "--generations", "1", "--score-images", "50", "--check-images", "50",
                 "--retrain-epochs", "0", "--final-epochs", "0", "--out", str(out)]) == 0
    assert json.loads((out / "search.json").read_text())["config"]["method"] == "l1"
    assert not (pipeline["pruned"] / "search.json").exists()  # the one-shot path: no search


@pytest.mark.parametrize(("argv", "message"), [
    (["--granularity", "channel,kernel", "--ratio", "0.1,0.2,0.3"], "3 values for 2 granularities"),
    (["--granularity", "kernel", "--ratio", "0.5", "--method", "pf", "--kernel-structure", "blocks"],
     "the search chooses 2 kernel blocks per layer: give --kernel-groups 2, not 4"),
    (["--granularity", "channel", "--ratio", "0.5", "--method", "pf", "--linear-ratio", "0.5"],
     "--linear-ratio is for one-shot selection"),
    (["--granularity", "channel", "--ratio", "0.5", "--method", "random", "--max"], "--method random cannot run the "
     "search schedule"),
])
def test_prune_option_combinations_are_refused_in_one_line(pipeline, tmp_path, capsys, argv, message):
    assert main(["prune", str(pipeline["dense"]), *argv, "--out", str(tmp_path / "no")]) == 2
    assert message in _one_line_error(capsys) and not (tmp_path / "no").exists()


@pytest.mark.parametrize("damage", ["arch", "weights", "missing"])
def test_eval_and_info_of_damaged_runs(pipeline, tmp_path, capsys, damage):
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in pipeline["dense"].iterdir():
        (broken / p.name).write_bytes(p.read_bytes())
    if damage == "arch":
        (broken / "arch.json").write_text('{"format": "structprune-arch/1", "model": ')
    elif damage == "weights":
        (broken / MODEL_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    else:
        (broken / MODEL_FILE).unlink()
    for verb in ("eval", "info"):
        assert main([verb, str(broken)]) == 2
        _one_line_error(capsys)
