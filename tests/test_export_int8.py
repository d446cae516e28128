"""int8 deployment: ONNX Runtime's static quantization of a trained tiny network, checked against the float
network, timed by bench, and bad input refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from structprune import models
from structprune.cli import main
from structprune.data import load_dataset
from structprune.errors import StructpruneError
from structprune.export_int8 import calibration_images, quantize_onnx
from structprune.export_onnx import onnx_session
from structprune.metrics import size_metrics
from structprune.runfolder import load_run, save_run
from structprune.train import TrainConfig, evaluate, train

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """tiny-paper trained 3 epochs on digits: confident enough that int8 rounding rarely flips its choice."""
    torch.manual_seed(0)
    data = load_dataset("digits")
    model = models.create("tiny-paper", in_channels=1, input_size=8)
    train(model, data, TrainConfig(epochs=3, lr=0.05))
    test = evaluate(model, data.test)
    out = tmp_path_factory.mktemp("int8") / "dense"
    save_run(out, model, None, {**size_metrics(model), "test_mcr": test.mcr},
             {"model": "tiny-paper", "dataset": "digits", "train": {"seed": 0}})
    return out


@pytest.fixture(scope="module")
def exported(trained) -> tuple[Path, dict]:
    path = trained.parent / "dense.int8.onnx"
    rc = main(["-q", "export", str(trained), "--onnx", str(path), "--int8", "--calibration-images", "256",
               "--exporter", "torchscript"])
    assert rc == 0
    return path, json.loads(Path(f"{path}.json").read_text())


def test_int8_export_writes_a_quantized_model_that_onnx_runtime_runs(exported):
    path, report = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    assert len(int8_weights) == 5  # three convs and two linear layers, their weights stored as int8
    conv_scales = [t for t in model.graph.initializer if t.name.endswith("_scale") and len(t.dims) == 1 and t.dims[0] > 1]
    assert conv_scales  # per-channel: one scale per output channel
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    assert onnx_session(path).run(None, {"input": x})[0].shape == (3, 10)  # the batch size stays dynamic
    assert report["int8_onnx_bytes"] == path.stat().st_size < report["float_onnx_bytes"]
    assert report["calibration_images"] == 256 and report["quantization"]["per_channel"] is True
    assert report["quantization"]["format"] == "QDQ"


def test_int8_agrees_with_the_float_network_on_val_and_test(trained, exported):
    _, report = exported
    data = load_dataset("digits")
    float_test = load_run(trained).metrics["test_mcr"]
    assert set(report["splits"]) == {"val", "test"}
    assert report["splits"]["test"]["images"] == len(data.test) and report["splits"]["val"]["images"] == len(data.val)
    for split in report["splits"].values():
        assert split["top1_agreement"] >= 0.9
        assert 0 <= split["int8_mcr"] <= 1 and split["max_abs_logit_diff"] > 0  # really quantized, not a copy
    assert report["splits"]["test"]["float_mcr"] == pytest.approx(float_test)
    assert abs(report["splits"]["test"]["int8_mcr"] - float_test) <= 0.1


def test_calibration_images_are_training_images_and_at_least_one():
    data = load_dataset("digits")
    images = calibration_images(data.train, 100)
    assert images.shape == (100, 1, 8, 8) and images.dtype == np.float32
    rows = {row.tobytes() for row in data.train.x.numpy()}
    assert all(row.tobytes() in rows for row in images)
    assert len(calibration_images(data.train, 10**6)) == len(data.train)  # all of them, with a warning
    with pytest.raises(StructpruneError, match="at least 1"):
        calibration_images(data.train, 0)


def test_a_network_without_weight_layers_is_refused_in_one_line(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["logits"])], "relu",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, 8, 8])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(StructpruneError) as info:
        quantize_onnx(path, tmp_path / "q.onnx", np.zeros((4, 1, 8, 8), np.float32))
    assert "quantized none" in str(info.value) and "\n" not in str(info.value)


def test_a_model_onnx_runtime_cannot_quantize_is_one_line_and_exit_2(trained, tmp_path, monkeypatch, capsys):
    import onnxruntime.quantization

    def refuse(*args, **kwargs):
        raise ValueError("Unsupported operator Foo\nstack details")

    monkeypatch.setattr(onnxruntime.quantization, "quantize_static", refuse)
    path = tmp_path / "x.onnx"
    rc = main(["-q", "export", str(trained), "--onnx", str(path), "--int8", "--calibration-images", "8",
               "--exporter", "torchscript"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["structprune: error: ONNX Runtime cannot quantize this network to int8: Unsupported operator Foo"]
    assert not path.exists() and not Path(f"{path}.json").exists()


@pytest.mark.parametrize("args, words", [
    (["--int8", "--calibration-images", "0"], "--calibration-images must be at least 1 (got 0)"),
    (["--calibration-images", "8"], "apply to --int8 only"),
])
def test_export_bad_calibration_options_are_one_line(trained, tmp_path, capsys, args, words):
    rc = main(["-q", "export", str(trained), "--onnx", str(tmp_path / "x.onnx"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and words in err[0]


def test_bench_times_the_int8_model_beside_the_float_one(trained, tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["-q", "bench", str(trained), "--runtime", "onnxruntime", "--int8", "--calibration-images", "64",
               "--batch", "1", "--threads", "1", "--rounds", "1", "--sample-seconds", "0.003", "--no-progress",
               "--json", str(out)])
    assert rc == 0
    records = json.loads(out.read_text())
    assert [r["run"] for r in records] == [str(trained), f"{trained}#int8"]
    float_row, int8_row = records
    assert int8_row["variant"] == int8_row["precision"] == "int8" and int8_row["calibration_images"] == 64
    assert int8_row["runtime"] == float_row["runtime"] == "onnxruntime" and int8_row["median_ms"] > 0
    assert int8_row["macs"] == float_row["macs"] and int8_row["test_mcr"] is None
    assert f"{trained}#int8" in capsys.readouterr().out


def test_bench_int8_candidate_is_the_int8_model_of_the_same_network(trained):
    from structprune.arch import input_shape_of
    from structprune.bench import Candidate, int8_candidate

    model = load_run(trained).model
    data = load_dataset("digits")
    candidate = int8_candidate(Candidate("d", model, input_shape_of(model), {"macs": 1}),
                               calibration_images(data.train, 64), threads=1)
    with torch.no_grad():
        agree = float((candidate.model(data.test.x).argmax(1) == model(data.test.x).argmax(1)).float().mean())
    assert agree >= 0.9 and candidate.name == "d#int8"


@pytest.mark.parametrize("args, words", [
    (["--int8", "--runtime", "eager"], "drop --runtime eager"),
    (["--int8", "--runtime", "onnxruntime", "--calibration-images", "0"], "must be at least 1"),
    (["--calibration-images", "5"], "apply to --int8 only"),
])
def test_bench_bad_int8_options_are_one_line(trained, capsys, args, words):
    rc = main(["-q", "bench", str(trained), *args, "--batch", "1", "--rounds", "1", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and words in err[0]
