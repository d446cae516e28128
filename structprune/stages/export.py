"""The export stage as a folder of its own (reproduce, the demo): model.onnx checked with ONNX Runtime,
export.json with the check, config.json naming the source run."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from structprune.export_onnx import export_onnx
from structprune.jsonio import write_json_atomic
from structprune.output import Output
from structprune.quant.packing import load_packed
from structprune.quant.run import PACKED_FILE
from structprune.runcheck import load_checked_run
from structprune.runfiles import CONFIG_FILE, EXPORT_FILE, ONNX_FILE
from structprune.runfolder import as_output


def export_model(src: str | Path):
    """The network a run exports: a quantized run's packed compact network (dequantized), else its model."""
    packed = Path(src) / PACKED_FILE
    return load_packed(packed)[0] if packed.exists() else load_checked_run(src).model


def export_run(src: str | Path, out: Output | str | Path) -> tuple[Path, dict[str, Any]]:
    """Export the network of run `src` into the folder `out`; returns the folder and the export record."""
    output = as_output(out, "export", inputs=(src,))
    model = export_model(src)
    with output.publish() as tmp:
        check = export_onnx(model, tmp / ONNX_FILE)
        record = {"source_run": str(src), "onnx": ONNX_FILE, "onnx_bytes": (tmp / ONNX_FILE).stat().st_size,
                  **asdict(check)}
        write_json_atomic(tmp / EXPORT_FILE, record)
        write_json_atomic(tmp / CONFIG_FILE, {"verb": "export", "source_run": str(src)})
    return output.path, record
