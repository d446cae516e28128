"""ONNX export: each compacted tiny zoo network, float and quantized, matches PyTorch in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from compact_zoo import TINY_ZOO, compacted

from structprune.arch import example_input
from structprune.errors import StructpruneError
from structprune.export_onnx import check_onnx, export_onnx, onnx_session
from structprune.quant.apply import plan_formats, quantize_model_

pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("name", TINY_ZOO)
def test_compacted_zoo_network_matches_pytorch(tmp_path: Path, name: str):
    net = compacted(name)
    path = tmp_path / f"{name}.onnx"
    check = export_onnx(net, path)
    assert path.exists() and check.max_abs_diff <= 1e-4
    # an independent check at another batch size than those used inside export_onnx
    x = example_input(net, 7)
    with torch.no_grad():
        expected = net(x).numpy()
    got = onnx_session(path).run(None, {"input": x.numpy()})[0]
    assert got.shape == expected.shape
    assert float(np.abs(got - expected).max()) <= 1e-4


def test_kernel_sparse_and_intra_layers_match_pytorch(tmp_path: Path):
    net = compacted("tiny-paper", kernel=0.3)
    assert {"KernelSparseConv2d"} <= {type(m).__name__ for m in net.modules()}
    quantize_model_(net, plan_formats(net, 6))
    assert export_onnx(net, tmp_path / "k.onnx").max_abs_diff <= 1e-4


def test_quantized_compact_network_matches_pytorch_with_the_torchscript_exporter_too(tmp_path: Path):
    net = compacted("tiny-vgg")
    quantize_model_(net, plan_formats(net, 4))
    path = tmp_path / "q.onnx"
    assert export_onnx(net, path, exporter="torchscript").max_abs_diff <= 1e-4


def test_a_mismatch_is_refused_in_one_line(tmp_path: Path):
    net = compacted("tiny-paper")
    path = tmp_path / "a.onnx"
    export_onnx(net, path, exporter="torchscript")
    with torch.no_grad():
        net.classifier[-1].bias.add_(1.0)  # PyTorch now differs from the exported file
    with pytest.raises(StructpruneError) as info:
        check_onnx(net, path)
    assert "differs from PyTorch" in str(info.value) and "\n" not in str(info.value)


def test_bad_destinations(tmp_path: Path):
    net = compacted("tiny-paper")
    with pytest.raises(StructpruneError):
        export_onnx(net, tmp_path / "no" / "such" / "dir.onnx")
    with pytest.raises(StructpruneError):
        export_onnx(net, tmp_path)
    with pytest.raises(StructpruneError):
        export_onnx(net, tmp_path / "x.onnx", exporter="tflite")
