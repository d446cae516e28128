"""The train / eval / info / demo verbs, end to end and with bad input (one line, exit 2, nothing half-written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datafiles_helpers import random_set

from structprune.cli import main
from structprune.runfolder import MODEL_FILE, load_run

REPO = Path(__file__).parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "structprune", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)



@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "digits-run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    assert main(["train", "--model", "tiny-paper", "--data", "digits", "--epochs", "2", "--out", str(out), "--threads", "1",
                 "--no-progress"]) == 0
    torch.set_num_threads(before)
    return out


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("structprune: error:"), err
    return err[0]


def test_help_of_every_verb():
    result = _cli("--help")
    assert result.returncode == 0
    for verb in ("train", "eval", "info", "demo"):
        assert verb in result.stdout
    for verb in ("train", "eval", "info", "demo"):
        with pytest.raises(SystemExit) as exit_:
            main([verb, "--help"])
        assert exit_.value.code == 0


def test_train_writes_a_complete_run_folder(trained):
    names = sorted(p.name for p in trained.iterdir())
    assert names == ["arch.json", "config.json", "metrics.json", "model.safetensors"]
    metrics = json.loads((trained / "metrics.json").read_text())
    for key in ("val_mcr", "test_mcr", "params", "macs", "weight_bytes"):
        assert key in metrics
    assert 0 <= metrics["test_mcr"] <= 1 and metrics["macs"] > 0
    config = json.loads((trained / "config.json").read_text())
    assert config["model"] == "tiny-paper" and config["train"]["epochs"] == 2 and config["threads"] == 1
    assert not (trained.parent / ".digits-run.structprune").exists()  # the staging area goes once the run is saved


def test_eval_reproduces_the_saved_metrics(trained, capsys):
    assert main(["eval", str(trained), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    metrics = json.loads((trained / "metrics.json").read_text())
    assert result["test_mcr"] == metrics["test_mcr"] and result["val_mcr"] == metrics["val_mcr"]


def test_info_lists_layers_and_totals(trained, capsys):
    assert main(["info", str(trained), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    metrics = json.loads((trained / "metrics.json").read_text())
    assert sum(r["macs"] for r in info["layers"]) == metrics["macs"]
    assert sum(r["params"] for r in info["layers"]) == metrics["params"]
    assert info["layers"][0] == {"name": "features.0", "type": "Conv2d", "output_shape": [8, 8, 8],
                                 "weight_shape": [8, 1, 3, 3], "params": 80,
                                 "macs": 8 * 8 * 8 * 9}


def test_subprocess_bad_model_is_one_line_without_traceback(tmp_path):
    result = _cli("train", "--model", "nope", "--data", "digits", "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "unknown model 'nope'" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_subprocess_corrupt_weights(trained, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in trained.iterdir():
        (broken / p.name).write_bytes(p.read_bytes())
    (broken / MODEL_FILE).write_bytes((trained / MODEL_FILE).read_bytes()[:-50])
    result = _cli("eval", str(broken))
    assert result.returncode == 2 and "Traceback" not in result.stderr and "truncated" in result.stderr


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


@pytest.mark.parametrize("damage", ["arch", "weights", "missing"])
def test_eval_and_info_of_damaged_runs(trained, tmp_path, capsys, damage):
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in trained.iterdir():
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


def test_demo_writes_a_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "2", "--no-progress"]) == 0
    report = (out / "report.md").read_text()
    assert "## Dense baseline" in report and "test MCR" in report
    assert load_run(out / "dense").arch["kwargs"]["input_size"] == 8
    bench = json.loads((out / "bench.json").read_text())  # records name the runs where they end up
    assert {Path(r["run"]).parent for r in bench} == {out} and not any(".structprune" in r["run"] for r in bench)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
