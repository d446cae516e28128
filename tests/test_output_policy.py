"""The output policy: no command deletes or changes what a user owns; resumed work checks its identity;
a diverged training stops in one line; staging folders never linger."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

import structprune.train as train_module
from structprune.cli import main
from structprune.errors import StructpruneError
from structprune.output import claim_file, claim_folder

TRAIN = ["train", "--model", "tiny-paper", "--data", "digits", "--epochs", "1", "--val-size", "100", "--no-progress"]


def tree_hash(path: Path) -> str:
    """Every file's relative path and content below `path` (or the file itself)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("structprune: error:"), err
    return err


@pytest.fixture(scope="module")
def dense(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("policy") / "a" / "b" / "dense"
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def pruned(dense) -> Path:
    out = dense.parent / "pruned"
    assert main(["prune", str(dense), "--ratio", "0.5", "--out", str(out)]) == 0
    return out


def user_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "userdata"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious\n")
    return folder


# ---------------------------------------------------------------- a user's folder at --out is never touched
@pytest.mark.parametrize("verb", ["train", "prune-l1", "prune-pf", "compact", "retrain", "quantize", "demo"])
def test_a_users_folder_at_out_is_refused_and_kept(verb, dense, pruned, tmp_path, capsys):
    folder = user_folder(tmp_path)
    before = tree_hash(folder), tree_hash(dense.parent)
    argv = {
        "train": [*TRAIN, "--out", str(folder)],
        "prune-l1": ["prune", str(dense), "--ratio", "0.5", "--out", str(folder)],
        "prune-pf": ["prune", str(dense), "--method", "pf", "--ratio", "0.5", "--particles", "2", "--generations", "1",
                     "--out", str(folder)],
        "compact": ["compact", str(pruned), "--out", str(folder)],
        "retrain": ["retrain", str(pruned), "--epochs", "1", "--out", str(folder), "--no-progress"],
        "quantize": ["quantize", str(dense), "--bits", "6", "--out", str(folder)],
        "demo": ["demo", "--epochs", "1", "--out", str(folder), "--no-progress"],
    }[verb]
    for extra in ([], ["--overwrite"]):  # --overwrite replaces only structprune's own output
        assert main([*argv, *extra]) == 2
        assert "did not write" in error_line(capsys)
        assert (tree_hash(folder), tree_hash(dense.parent)) == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["userdata"]  # no staging folder left either


@pytest.mark.parametrize("where", ["input", "ancestor", "inside"])
def test_the_input_run_its_parents_and_its_inside_are_refused(where, dense, pruned, capsys):
    target = {"input": dense, "ancestor": dense.parent, "inside": dense / "pruned"}[where]
    before = tree_hash(dense.parent)
    for argv in (["prune", str(dense), "--ratio", "0.5"], ["compact", str(pruned)] if where != "input" else None):
        if argv is None:
            continue
        source = Path(argv[1])
        if where == "inside":
            target = source / "out"
        elif where == "ancestor":
            target = source.parent
        else:
            target = source
        assert main([*argv, "--out", str(target), "--overwrite"]) == 2
        assert "input run" in error_line(capsys)
        assert tree_hash(dense.parent) == before


def test_the_working_folder_is_refused(dense, capsys, monkeypatch, tmp_path):
    work = tmp_path / "here"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["prune", str(dense), "--ratio", "0.5", "--out", "."]) == 2
    assert "working folder" in error_line(capsys)
    assert main(["prune", str(dense), "--ratio", "0.5", "--out", ".."]) == 2
    assert "working folder" in error_line(capsys)
    assert list(work.iterdir()) == []


def test_an_output_is_replaced_only_with_overwrite_and_only_by_its_own_verb(dense, pruned, tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["prune", str(dense), "--ratio", "0.25", "--out", str(out)]) == 0
    first = tree_hash(out)
    assert main(["prune", str(dense), "--ratio", "0.5", "--out", str(out)]) == 2
    assert "--overwrite" in error_line(capsys) and tree_hash(out) == first
    assert main(["compact", str(pruned), "--out", str(out), "--overwrite"]) == 2
    assert "`prune` output" in error_line(capsys) and tree_hash(out) == first
    (out / "notes.txt").write_text("mine")
    assert main(["prune", str(dense), "--ratio", "0.5", "--out", str(out), "--overwrite"]) == 2
    assert "notes.txt" in error_line(capsys)
    (out / "notes.txt").unlink()
    assert main(["prune", str(dense), "--ratio", "0.5", "--out", str(out), "--overwrite"]) == 0
    capsys.readouterr()
    assert tree_hash(out) != first
    assert json.loads((out / "config.json").read_text())["prune"]["ratio"] == [0.5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]


def test_an_empty_folder_is_taken(dense, tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    assert main(["prune", str(dense), "--ratio", "0.5", "--out", str(out)]) == 0
    assert (out / "masks.json").is_file()


def test_a_users_folder_named_like_the_old_checkpoint_is_left_alone(tmp_path, capsys):
    mine = tmp_path / "run.ckpt"
    mine.mkdir()
    (mine / "weights.bin").write_bytes(b"user's own")
    as_file = tmp_path / "other.ckpt"
    as_file.write_text("a file")
    assert main([*TRAIN, "--out", str(tmp_path / "run"), "--restart"]) == 0
    assert main([*TRAIN, "--out", str(tmp_path / "other")]) == 0
    assert (mine / "weights.bin").read_bytes() == b"user's own" and as_file.read_text() == "a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "other.ckpt", "run", "run.ckpt"]


@pytest.mark.parametrize("target", ["file", "proc", "sys", "under-file", "staging-name"])
def test_impossible_destinations_are_refused_before_any_work(target, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    out = {"file": tmp_path / "f", "proc": Path("/proc/structprune-run"), "sys": Path("/sys/structprune-run"),
           "under-file": tmp_path / "f" / "run", "staging-name": tmp_path / ".x.structprune"}[target]
    called = []
    original = train_module.train

    def spy(*args, **kwargs):
        called.append(1)
        return original(*args, **kwargs)

    pytest.MonkeyPatch().setattr(train_module, "train", spy)
    assert main([*TRAIN, "--out", str(out)]) == 2
    error_line(capsys)
    assert not called
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_reproduce_into_a_file_or_a_foreign_folder_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["reproduce", "digits", "--out", str(tmp_path / "f")]) == 2
    assert "not a folder" in error_line(capsys)
    folder = user_folder(tmp_path)
    assert main(["reproduce", "digits", "--out", str(folder)]) == 2
    assert "did not write" in error_line(capsys)
    assert (folder / "thesis.tex").read_text() == "precious\n"


def test_files_are_new_or_replaced_with_overwrite(dense, tmp_path, capsys):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"mine")
    assert main(["export", str(dense), "--onnx", str(target)]) == 2
    assert "--overwrite" in error_line(capsys) and target.read_bytes() == b"mine"
    assert main(["export", str(dense), "--onnx", str(target), "--overwrite"]) == 0
    assert target.read_bytes() != b"mine"
    report = tmp_path / "report.html"
    report.write_text("mine")
    assert main(["report", str(dense), "--out", str(report)]) == 2
    assert "--overwrite" in error_line(capsys) and report.read_text() == "mine"
    with pytest.raises(StructpruneError, match="inside the input run"):
        claim_file(dense / "x.json", inputs=(dense,))


# ---------------------------------------------------------------- resume identity
def _interrupt_after_first_checkpoint(monkeypatch):
    original = train_module.save_checkpoint

    def save_then_stop(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_stop)


def test_a_resumed_train_refuses_other_data_or_settings(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    argv = ["train", "--model", "tiny-paper", "--data", "digits", "--epochs", "2", "--val-size", "100", "--no-progress",
            "--out", str(out)]
    _interrupt_after_first_checkpoint(monkeypatch)
    assert main(argv) == 130
    capsys.readouterr()
    monkeypatch.undo()
    staging = tmp_path / ".run.structprune"
    assert (staging / "checkpoints" / "checkpoint.safetensors").is_file() and not out.exists()
    for changed in (["--val-size", "300"], ["--seed", "1"], ["--model", "tiny-vgg"], ["--lr", "0.01"]):
        assert main([*argv, *changed]) == 2
        assert "other settings or inputs" in error_line(capsys)
        assert not out.exists() and staging.is_dir()
    assert main(argv) == 0  # the same command resumes
    config = json.loads((out / "config.json").read_text())
    assert config["val_size"] == 100 and len(json.loads((out / "metrics.json").read_text())["history"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_restart_discards_the_interrupted_run(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    _interrupt_after_first_checkpoint(monkeypatch)
    assert main([*TRAIN, "--out", str(out)]) == 130
    monkeypatch.undo()
    assert main([*TRAIN, "--val-size", "300", "--out", str(out), "--restart"]) == 0
    assert json.loads((out / "config.json").read_text())["val_size"] == 300


# ---------------------------------------------------------------- divergence
@pytest.mark.parametrize("lr", ["1e30", "1e20"])
def test_a_diverging_training_stops_in_one_line_and_writes_no_nan(lr, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--epochs", "2", "--lr", lr, "--out", str(out)]) == 2
    assert "diverged" in error_line(capsys)
    assert not out.exists()


def test_json_never_holds_nan(tmp_path):
    from structprune.jsonio import write_json_atomic

    with pytest.raises(StructpruneError, match="non-finite"):
        write_json_atomic(tmp_path / "m.json", {"val_mcr": float("nan")})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- staging folders and files
def test_a_killed_write_leaves_a_staging_folder_the_next_run_cleans(dense, tmp_path, capsys):
    out = tmp_path / "p"
    output = claim_folder(out, "prune")
    output.open()
    (output.work / "half.json").parent.mkdir(parents=True)
    (output.work / "half.json").write_text("{")  # what a kill during the final write leaves
    assert main(["prune", str(dense), "--ratio", "0.5", "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]
    assert not (out / "half.json").exists()


def test_a_failed_command_with_nothing_to_resume_leaves_no_staging(dense, tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["prune", str(dense), "--method", "pf", "--ratio", "0.5", "--layers", "nope", "--out", str(out)]) == 2
    error_line(capsys)
    assert list(tmp_path.iterdir()) == []
    assert main(["prune", str(dense), "--method", "pf", "--ratio", "0.5", "--particles", "2", "--generations", "1",
                 "--retrain-epochs", "0", "--final-epochs", "0", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"params", "macs", "weight_bytes"} <= set(metrics)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]


def test_run_files_follow_the_umask(dense, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "p"
        assert main(["prune", str(dense), "--ratio", "0.5", "--out", str(out)]) == 0
    finally:
        os.umask(old)
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
