"""Export a (compact, possibly quantized) network to ONNX and check it with ONNX Runtime.

Quantized weights are exported as the float32 values code·step they represent, so the ONNX model
computes what the quantized PyTorch network computes. The batch dimension is dynamic.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from structprune.arch import input_shape_of
from structprune.errors import StructpruneError
from structprune.jsonio import write_bytes_atomic

log = logging.getLogger(__name__)

OPSET = 18
DEFAULT_TOLERANCE = 1e-4
EXPORTERS = ("dynamo", "torchscript")


@dataclass(frozen=True)
class ExportCheck:
    max_abs_diff: float  # largest |ONNX − PyTorch| over the check batch
    batch: int


def _export_to(model: nn.Module, example: torch.Tensor, path: Path, exporter: str) -> None:
    """torch.export-based exporter ("dynamo"; falls back to TorchScript if a layer defeats torch.export)
    or the TorchScript one ("torchscript": older, deprecated, several times faster to run)."""
    # the exporters log routine notices ("torchvision is not installed", optimizer passes) at INFO/WARNING
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        try:
            if exporter == "torchscript":
                _export_torchscript(model, example, path)
            else:
                _export_either(model, example, path)
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def _export_either(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    try:
        program = torch.onnx.export(
            model, (example,), None, input_names=["input"], output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), opset_version=OPSET, dynamo=True,
            verbose=False, optimize=True,
        )
        program.save(str(path))
        return
    except Exception as exc:  # torch.export refuses some Python control flow: try the tracer
        log.warning("torch.export-based ONNX export failed (%s); using the TorchScript exporter",
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    _export_torchscript(model, example, path)


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.onnx.export(
        model, (example,), str(path), input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=OPSET, dynamo=False,
    )


def onnx_session(path: str | Path | bytes, threads: int | None = None, stop_spinning: bool = False,
                 profile_prefix: str | None = None):
    """An ONNX Runtime CPU session for `path` (or a serialized model, bytes). stop_spinning: its threads stop
    busy-waiting when a run ends (by default they spin a while, as ONNX Runtime does). profile_prefix: ONNX
    Runtime's profiler records every node's kernel time, written to a JSON file starting with this prefix by
    `session.end_profiling()`."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if stop_spinning:
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


@torch.no_grad()
def check_onnx(model: nn.Module, path: str | Path, batch: int = 4, seed: int = 0,
               tolerance: float = DEFAULT_TOLERANCE) -> ExportCheck:
    """Run PyTorch and ONNX Runtime on the same random batch; raise if they differ by more than `tolerance`."""
    x = torch.randn(batch, *input_shape_of(model), generator=torch.Generator().manual_seed(seed))
    model.eval()
    expected = model(x).numpy()
    got = onnx_session(path).run(None, {"input": x.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if not diff <= tolerance:
        raise StructpruneError(f"{path}: ONNX Runtime output differs from PyTorch by {diff:.3g} (> {tolerance:g})")
    return ExportCheck(diff, batch)


def export_onnx(model: nn.Module, path: str | Path, tolerance: float = DEFAULT_TOLERANCE,
                exporter: str = "dynamo") -> ExportCheck:
    """Write `model` as ONNX to `path` (atomically), after checking it against PyTorch at batch 1 and 4."""
    if exporter not in EXPORTERS:
        raise StructpruneError(f"unknown ONNX exporter {exporter!r}; choose from {', '.join(EXPORTERS)}")
    path = Path(path)
    if path.exists() and path.is_dir():
        raise StructpruneError(f"{path}: is a folder, expected an .onnx file name")
    if not path.parent.exists():
        raise StructpruneError(f"{path.parent}: no such folder")
    model = model.eval()
    example = torch.zeros(2, *input_shape_of(model))
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        staged = Path(tmp) / path.name
        try:
            _export_to(model, example, staged, exporter)
        except Exception as exc:  # the exporter raises many types; report the first line
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StructpruneError(f"ONNX export failed: {first}") from None
        check_onnx(model, staged, batch=1, tolerance=tolerance)
        result = check_onnx(model, staged, batch=4, seed=1, tolerance=tolerance)
        write_bytes_atomic(path, staged.read_bytes())
    log.info("exported %s (max |ONNX - PyTorch| = %.2g)", path, result.max_abs_diff)
    return result
