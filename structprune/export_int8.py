"""int8 deployment: ONNX Runtime's static quantization of a network's float ONNX export.

The float export (export_onnx, checked against PyTorch) goes through ONNX Runtime's pre-processing (shape
inference, graph optimization) and `quantize_static`: QDQ format (QuantizeLinear/DequantizeLinear pairs
around each quantized operator, which ONNX Runtime fuses into integer kernels), int8 weights with one scale
per output channel, uint8 activations (the U8S8 kernels of x86 CPUs) whose ranges are calibrated (min/max)
on `calibration` images, normally training images of the run's dataset. Weights use 7 of their 8 bits
(`reduce_range`): x86 CPUs without VNNI multiply u8×s8 pairs into saturating 16-bit sums, and full-range
weights overflow them (measured on the 3× compact paper-cifar10: top-1 agreement with float 0.887 with full
range, 0.980 with 7-bit weights; test MCR +2.2 and +0.2 points; benchmarks/results/int8-cifar10/ before and after).

The int8 model is then checked against the float network: top-1 agreement (the fraction of images on which
both pick the same class) and the MCR of each, per split (`compare_int8`).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from structprune.data import Split
from structprune.errors import StructpruneError
from structprune.export_onnx import DEFAULT_TOLERANCE, export_onnx, onnx_session
from structprune.jsonio import write_bytes_atomic

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION_IMAGES = 512
CALIBRATION_BATCH = 64
EVAL_BATCH = 256
# operators whose weights ONNX Runtime quantizes; a network with none of them is refused
WEIGHT_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


@dataclass(frozen=True)
class QuantSettings:
    """What `quantize_static` was asked for (recorded beside the int8 model)."""

    format: str = "QDQ"
    per_channel: bool = True
    weight_type: str = "int8"
    activation_type: str = "uint8"
    calibration_method: str = "minmax"
    reduce_range: bool = True  # 7-bit weights: no u8×s8 saturation on CPUs without VNNI


@dataclass(frozen=True)
class SplitAgreement:
    split: str
    images: int
    top1_agreement: float  # fraction of images where the int8 and float networks predict the same class
    float_mcr: float
    int8_mcr: float
    max_abs_logit_diff: float


def calibration_images(train: Split, n: int, seed: int = 0) -> np.ndarray:
    """`n` training images (a seeded random choice, all of them when the split holds fewer), float32 NCHW."""
    if n < 1:
        raise StructpruneError(f"calibration images must be at least 1 (got {n})")
    if n > len(train):
        log.warning("calibrating on all %d training images (%d asked for)", len(train), n)
        n = len(train)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
    return train.x[order].numpy().astype(np.float32, copy=False)


def _reader(images: np.ndarray):
    """A CalibrationDataReader feeding `images` to the model's input in batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches: Iterator[dict[str, np.ndarray]] = iter(
                {"input": np.ascontiguousarray(images[i : i + CALIBRATION_BATCH])}
                for i in range(0, len(images), CALIBRATION_BATCH))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    return Reader()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _require_onnxruntime() -> None:
    try:
        import onnxruntime.quantization  # noqa: F401
    except ImportError:
        raise StructpruneError("int8 export needs onnxruntime (pip install 'structprune[onnx]')") from None


def quantize_onnx(float_path: str | Path, int8_path: str | Path, images: np.ndarray,
                  settings: QuantSettings = QuantSettings()) -> None:
    """Statically quantize the float ONNX model in `float_path` into `int8_path`, activations calibrated on
    `images` ([N, C, H, W] float32). Raises StructpruneError (one line) when ONNX Runtime cannot quantize it,
    or quantizes none of its weight layers."""
    _require_onnxruntime()
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(images) < 1:
        raise StructpruneError("calibration images must be at least 1 (got 0)")
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    int8_path = Path(int8_path)
    quiet = logging.getLogger("onnxruntime.quantization")  # routine notices ("Performing symbolic shape inference")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    root = logging.getLogger()  # the quantizer also warns on the root logger about every unfused batch norm
    root.addFilter(_quantizer_notices)
    with tempfile.TemporaryDirectory(prefix="structprune-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(float_path), str(prepared))
            quantize_static(str(prepared), str(int8_path), _reader(images),
                            quant_format=QuantFormat[settings.format], per_channel=settings.per_channel,
                            weight_type=types[settings.weight_type], activation_type=types[settings.activation_type],
                            calibrate_method=methods[settings.calibration_method],
                            reduce_range=settings.reduce_range,
                            calibration_providers=["CPUExecutionProvider"])
        except StructpruneError:
            raise
        except Exception as exc:  # ONNX Runtime's quantizer raises many types; report the first line
            raise StructpruneError(f"ONNX Runtime cannot quantize this network to int8: {_first_line(exc)}") from None
        finally:
            quiet.setLevel(level)
            root.removeFilter(_quantizer_notices)
    graph = onnx.load(str(int8_path)).graph
    quantized = _quantized_weight_ops(graph)
    if not quantized:
        raise StructpruneError("ONNX Runtime quantized none of this network's layers "
                               f"(it quantizes the weights of {', '.join(WEIGHT_OPS)} operators)")
    log.info("int8: %d weight layers quantized (%s)", len(quantized), ", ".join(sorted(set(quantized))))


def _quantizer_notices(record: logging.LogRecord) -> bool:
    """False (drop) for ONNX Runtime quantizer warnings logged on the root logger, e.g. 'Axis 1 is out-of-range
    for weight ... with rank 1' for each batch norm it quantizes per tensor instead of per channel."""
    return not ("onnxruntime" in record.pathname and record.levelno < logging.ERROR)


def _quantized_weight_ops(graph: Any) -> list[str]:
    """Operator types of the weight layers that read a dequantized (int8) weight in a QDQ graph."""
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    return [node.op_type for node in graph.node
            if node.op_type in WEIGHT_OPS and len(node.input) > 1 and node.input[1] in dequantized]


def _logits(session: Any, x: np.ndarray) -> np.ndarray:
    return np.concatenate([session.run(None, {"input": np.ascontiguousarray(x[i : i + EVAL_BATCH])})[0]
                           for i in range(0, len(x), EVAL_BATCH)])


@torch.no_grad()
def compare_int8(model: nn.Module, int8_path: str | Path, splits: dict[str, Split]) -> list[SplitAgreement]:
    """Top-1 agreement and MCR of the int8 model in `int8_path` against the float `model`, on each split."""
    session = onnx_session(int8_path)
    model = model.eval()
    out = []
    for name, split in splits.items():
        x, y = split.x.numpy().astype(np.float32, copy=False), split.y.numpy()
        want = torch.cat([model(split.x[i : i + EVAL_BATCH]) for i in range(0, len(split), EVAL_BATCH)]).numpy()
        got = _logits(session, x)
        n = max(len(y), 1)
        out.append(SplitAgreement(
            split=name, images=len(y), top1_agreement=float((got.argmax(1) == want.argmax(1)).sum() / n),
            float_mcr=float((want.argmax(1) != y).sum() / n), int8_mcr=float((got.argmax(1) != y).sum() / n),
            max_abs_logit_diff=float(np.abs(got - want).max()) if len(y) else 0.0))
        log.info("int8 %s: top-1 agreement %.4f with float, MCR %.4f (float %.4f)", name, out[-1].top1_agreement,
                 out[-1].int8_mcr, out[-1].float_mcr)
    return out


def write_int8_onnx(model: nn.Module, path: str | Path, images: np.ndarray, settings: QuantSettings = QuantSettings(),
                    tolerance: float = DEFAULT_TOLERANCE, exporter: str = "dynamo") -> dict[str, Any]:
    """`model` exported to float ONNX (checked against PyTorch within `tolerance`), statically quantized to
    int8 on the calibration `images` and written to `path` atomically. Returns what was done (bytes of both
    models, settings, calibration images)."""
    path = Path(path)
    if path.exists() and path.is_dir():
        raise StructpruneError(f"{path}: is a folder, expected an .onnx file name")
    if not path.parent.exists():
        raise StructpruneError(f"{path.parent}: no such folder")
    _require_onnxruntime()
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        float_path, int8_path = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        check = export_onnx(model, float_path, tolerance=tolerance, exporter=exporter)
        quantize_onnx(float_path, int8_path, images, settings)
        try:
            onnx_session(int8_path)
        except Exception as exc:
            raise StructpruneError(f"ONNX Runtime cannot run the int8 model: {_first_line(exc)}") from None
        summary = {"float_onnx_bytes": float_path.stat().st_size, "int8_onnx_bytes": int8_path.stat().st_size,
                   "float_max_abs_diff": check.max_abs_diff, "calibration_images": len(images),
                   "quantization": asdict(settings)}
        write_bytes_atomic(path, int8_path.read_bytes())
    log.info("int8 model %s: %d bytes (float %d)", path, summary["int8_onnx_bytes"], summary["float_onnx_bytes"])
    return summary


def export_int8(model: nn.Module, path: str | Path, calibration: Split, splits: dict[str, Split],
                calibration_count: int = DEFAULT_CALIBRATION_IMAGES, seed: int = 0,
                settings: QuantSettings = QuantSettings(), tolerance: float = DEFAULT_TOLERANCE,
                exporter: str = "dynamo") -> dict[str, Any]:
    """Write the int8 form of `model` to `path`, calibrated on `calibration_count` images of `calibration`
    (the training split), and compare it with the float network on `splits` (e.g. val and test).
    Returns the report: sizes, settings, and per split top-1 agreement and both MCRs."""
    images = calibration_images(calibration, calibration_count, seed)
    summary = write_int8_onnx(model, path, images, settings, tolerance=tolerance, exporter=exporter)
    agreement = compare_int8(model, path, splits)
    import onnxruntime

    return {"onnx": Path(path).name, **summary, "calibration_seed": seed, "calibration_split": "train",
            "onnxruntime": onnxruntime.__version__, "splits": {a.split: asdict(a) for a in agreement}}
