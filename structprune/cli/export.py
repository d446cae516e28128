"""`structprune export DIR --onnx FILE [--int8]`: the run's network as ONNX, checked with ONNX Runtime; with
--int8, statically quantized by ONNX Runtime and compared with the float network (FILE.json)."""

from __future__ import annotations

import argparse
from pathlib import Path

from torch import nn

from structprune.cli.common import positive_float
from structprune.errors import StructpruneError
from structprune.export_int8 import DEFAULT_CALIBRATION_IMAGES, export_int8
from structprune.export_onnx import DEFAULT_TOLERANCE, EXPORTERS, export_onnx
from structprune.jsonio import write_json_atomic
from structprune.output import claim_file
from structprune.quant.run import PACKED_FILE
from structprune.sensitivity import dataset_of_run
from structprune.stages.export import export_model


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
    p.add_argument("--tolerance", type=positive_float, default=DEFAULT_TOLERANCE,
                   help=f"largest |ONNX - PyTorch| accepted (default {DEFAULT_TOLERANCE:g})")
    p.add_argument("--exporter", choices=EXPORTERS, default="dynamo",
                   help="torch.export-based (default) or the older TorchScript exporter")
    p.add_argument("--int8", action="store_true",
                   help="write an int8 model: ONNX Runtime's static quantization (QDQ, per-channel int8 weights in "
                   "7-bit range, uint8 activations calibrated on training images of the run's dataset), checked "
                   "against the float network on the validation and test sets; the comparison is written to FILE.json")
    p.add_argument("--calibration-images", type=int, default=None, metavar="N",
                   help=f"with --int8: training images that calibrate the activation ranges (default "
                   f"{DEFAULT_CALIBRATION_IMAGES})")
    p.add_argument("--data-dir", default=None, help="with --int8: dataset folder (default: the one the run recorded)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.run_dir.is_dir():
        raise StructpruneError(f"{args.run_dir}: no such run folder")
    if not args.int8 and (args.calibration_images is not None or args.data_dir is not None):
        raise StructpruneError("--calibration-images and --data-dir apply to --int8 only")
    claim_file(args.onnx, inputs=(args.run_dir,), overwrite=args.overwrite)
    model = export_model(args.run_dir)
    if args.int8:
        return _int8(args, model)
    check = export_onnx(model, args.onnx, tolerance=args.tolerance, exporter=args.exporter)
    size = args.onnx.stat().st_size
    print(f"{args.onnx}: {size:,} bytes; ONNX Runtime matches PyTorch within {check.max_abs_diff:.2g}")
    return 0


def _int8(args: argparse.Namespace, model: nn.Module) -> int:
    count = DEFAULT_CALIBRATION_IMAGES if args.calibration_images is None else args.calibration_images
    if count < 1:
        raise StructpruneError(f"--calibration-images must be at least 1 (got {count})")
    report_path = claim_file(args.onnx.with_name(args.onnx.name + ".json"), inputs=(args.run_dir,),
                             overwrite=args.overwrite)
    data = dataset_of_run(args.run_dir, data_dir=args.data_dir)
    report = export_int8(model, args.onnx, data.train, {"val": data.val, "test": data.test}, calibration_count=count,
                         tolerance=args.tolerance, exporter=args.exporter)
    report = {"source_run": str(args.run_dir), "dataset": data.name, **report}
    write_json_atomic(report_path, report)
    print(f"{args.onnx}: int8, {report['int8_onnx_bytes']:,} bytes (float {report['float_onnx_bytes']:,}), "
          f"calibrated on {report['calibration_images']} training images")
    for name, s in report["splits"].items():
        print(f"  {name}: top-1 agreement with float {s['top1_agreement']:.4f} over {s['images']} images; "
              f"MCR int8 {s['int8_mcr']:.4f}, float {s['float_mcr']:.4f}")
    print(f"{report_path}: the comparison")
    return 0
