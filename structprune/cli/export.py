"""`structprune export DIR --onnx FILE`: the run's network as ONNX, checked with ONNX Runtime."""

from __future__ import annotations

import argparse
from pathlib import Path

from structprune.cli.quantize import PACKED_FILE
from structprune.errors import StructpruneError
from structprune.export_onnx import DEFAULT_TOLERANCE, EXPORTERS, export_onnx
from structprune.output import claim_file
from structprune.quant.packing import load_packed
from structprune.runfolder import load_run


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a run's network to ONNX",
        description="Export the network of run DIR (compact layers as they are; a quantized run is read from its "
        f"{PACKED_FILE}, weights dequantized to float32) to an ONNX file with a dynamic batch size. The file is "
        f"written only if ONNX Runtime reproduces PyTorch's outputs within --tolerance.",
    )
    p.add_argument("run_dir", type=Path, metavar="DIR", help="run folder")
    p.add_argument("--onnx", type=Path, required=True, metavar="FILE", help="ONNX file to write (a new file)")
    p.add_argument("--overwrite", action="store_true", help="replace the --onnx file if it exists")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"largest |ONNX - PyTorch| accepted (default {DEFAULT_TOLERANCE:g})")
    p.add_argument("--exporter", choices=EXPORTERS, default="dynamo",
                   help="torch.export-based (default) or the older TorchScript exporter")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.run_dir.is_dir():
        raise StructpruneError(f"{args.run_dir}: no such run folder")
    claim_file(args.onnx, inputs=(args.run_dir,), overwrite=args.overwrite)
    packed = args.run_dir / PACKED_FILE
    model = load_packed(packed)[0] if packed.exists() else load_run(args.run_dir).model
    check = export_onnx(model, args.onnx, tolerance=args.tolerance, exporter=args.exporter)
    size = args.onnx.stat().st_size
    print(f"{args.onnx}: {size:,} bytes; ONNX Runtime matches PyTorch within {check.max_abs_diff:.2g}")
    return 0
