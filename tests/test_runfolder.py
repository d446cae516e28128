"""Run folders: save -> load gives identical outputs; corrupt files and failed writes leave nothing half-done."""

from __future__ import annotations

import json
import os

import pytest
import torch

from structprune.errors import StructpruneError
from structprune.metrics import size_metrics
from structprune.models import create
from structprune.output import claim_folder
from structprune.runfolder import ARCH_FILE, MODEL_FILE, load_run, save_run

NETS = [("tiny-paper", 1), ("tiny-vgg", 3), ("tiny-resnet", 3), ("tiny-mobilenet", 3), ("tiny-densenet", 3)]


def _trained_looking(name: str, channels: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create(name, in_channels=channels, input_size=16)
    for m in model.modules():  # non-trivial batch-norm statistics, so their saving is tested too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return model.eval()


def _save(tmp_path, model, name="run"):
    metrics = {"val_mcr": 0.1, "test_mcr": 0.2, **size_metrics(model)}
    return save_run(tmp_path / name, model, None, metrics, {"verb": "test"})


@pytest.mark.parametrize(("name", "channels"), NETS)
def test_save_then_load_gives_identical_outputs(tmp_path, name, channels):
    model = _trained_looking(name, channels)
    out = _save(tmp_path, model)
    loaded = load_run(out)
    x = torch.randn(4, channels, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.model(x))
    assert loaded.metrics["params"] == size_metrics(model)["params"]
    assert sorted(p.name for p in out.iterdir()) == ["arch.json", "config.json", "metrics.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_weight_bytes_is_what_the_file_stores(tmp_path):
    model = _trained_looking("tiny-vgg", 3)
    out = _save(tmp_path, model)
    stored = (out / MODEL_FILE).stat().st_size
    header = int.from_bytes((out / MODEL_FILE).read_bytes()[:8], "little") + 8
    assert size_metrics(model)["weight_bytes"] == stored - header


def test_safetensors_file_holds_no_pickle(tmp_path):
    out = _save(tmp_path, _trained_looking("tiny-paper", 1))
    payload = (out / MODEL_FILE).read_bytes()
    header = json.loads(payload[8 : 8 + int.from_bytes(payload[:8], "little")])
    assert header["__metadata__"] == {"format": "structprune"}
    assert b"\x80\x04\x95" not in payload[:64]  # no pickle protocol-4 opcode at the start


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete"])
def test_corrupt_weights_are_one_line_errors(tmp_path, damage):
    out = _save(tmp_path, _trained_looking("tiny-resnet", 3))
    path = out / MODEL_FILE
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-200])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 100)
    else:
        path.unlink()
    with pytest.raises(StructpruneError) as err:
        load_run(out)
    assert "\n" not in str(err.value) and MODEL_FILE in str(err.value)


@pytest.mark.parametrize("damage", ["truncate", "wrong-format", "wrong-shape", "unknown-layer"])
def test_corrupt_arch_json_is_a_one_line_error(tmp_path, damage):
    out = _save(tmp_path, _trained_looking("tiny-vgg", 3))
    path = out / ARCH_FILE
    text = path.read_text()
    arch = json.loads(text)
    if damage == "truncate":
        path.write_text(text[: len(text) // 2])
    elif damage == "wrong-format":
        path.write_text(json.dumps({**arch, "format": "other"}))
    elif damage == "wrong-shape":
        arch["modules"]["features.0"]["out_channels"] = 5
        path.write_text(json.dumps(arch))
    else:
        arch["modules"]["features.99"] = arch["modules"]["features.0"]
        path.write_text(json.dumps(arch))
    with pytest.raises(StructpruneError) as err:
        load_run(out)
    assert "\n" not in str(err.value)


def test_failed_write_leaves_no_folder(tmp_path):
    with pytest.raises(RuntimeError), claim_folder(tmp_path / "run", "train").publish() as tmp:
        (tmp / "half.json").write_text("{")
        raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []  # nothing to resume: the staging folder goes too


def test_failed_overwrite_keeps_the_previous_run(tmp_path):
    model = _trained_looking("tiny-paper", 1)
    out = _save(tmp_path, model)
    before = (out / MODEL_FILE).read_bytes()
    with pytest.raises(RuntimeError), claim_folder(out, "test", overwrite=True).publish():
        raise RuntimeError("crash")
    assert (out / MODEL_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_destination_under_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StructpruneError, match="is a file"):
        _save(tmp_path, _trained_looking("tiny-paper", 1), name="file/run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_destination_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(StructpruneError, match="cannot write"):
            _save(locked, _trained_looking("tiny-paper", 1))
    finally:
        locked.chmod(0o700)


def test_missing_run_folder(tmp_path):
    with pytest.raises(StructpruneError, match="no such run folder"):
        load_run(tmp_path / "nope")
