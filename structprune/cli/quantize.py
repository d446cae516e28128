"""`structprune quantize DIR --bits B [--per-layer auto] [--epochs N] --out DIR2`."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from structprune.cli.common import (
    add_output_arguments,
    existing_file,
    fraction,
    name_in,
    non_negative_int,
    positive_float,
    positive_int,
    seed,
)
from structprune.data import DATASETS
from structprune.errors import StructpruneError
from structprune.jsonio import read_json
from structprune.output import claim_folder
from structprune.quant.fixed_point import MAX_BITS, MIN_BITS, check_bits
from structprune.quant.run import (
    PACKED_FILE,
    QUANT_FILE,
    SENSITIVITY_FILE,
    STORAGE_FILE,
    VERB,
    QuantizeConfig,
    describe_bits,
    quantize_run,
)
from structprune.sparsity.masks import MASKS_FILE


def word_length(text: str) -> int:
    """--bits: an integer word length in MIN_BITS..MAX_BITS."""
    try:
        return check_bits(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    except StructpruneError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        VERB,
        help="fixed-point weights, storage accounting and a packed artifact",
        description="Quantize the weights of run DIR to B-bit fixed point (L2-optimal step per layer), optionally "
        "retrain with quantized forward passes, and write run DIR2 with model.safetensors (dequantized), "
        f"{PACKED_FILE} (the compact network, its weights packed at their word lengths; a masked run is compacted "
        f"for it), {QUANT_FILE}, {STORAGE_FILE}; metrics.json weight_bytes is the storage total (kept weights at "
        "their word lengths + sparsity indices + float biases). A retraining checkpoint is kept in the staging "
        "folder .DIR2.structprune/ beside DIR2: run the same command again to resume.",
    )
    p.add_argument("run_dir", type=Path, metavar="DIR", help="run folder to quantize")
    p.add_argument("--bits", type=word_length, required=True,
                   help=f"word length, {MIN_BITS}–{MAX_BITS} bits (the longest allowed with --per-layer auto)")
    p.add_argument("--per-layer", choices=("auto",), default=None,
                   help="auto: per-layer word lengths from a sensitivity sweep on the validation set")
    p.add_argument("--tolerance", type=fraction, default=0.002,
                   help="--per-layer auto: allowed validation MCR increase per layer, a fraction in [0, 1) (default 0.002)")
    p.add_argument("--epochs", type=non_negative_int, default=0, help="quantization-aware retraining epochs (default 0)")
    p.add_argument("--lr", type=positive_float, default=0.005, help="retraining learning rate (default 0.005)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--data", default=None, type=name_in(DATASETS, "dataset"),
                   help="dataset (default: the one in DIR/config.json)")
    p.add_argument("--data-dir", default=None, help="folder with the dataset files (default: as in DIR/config.json)")
    add_output_arguments(p, "quantized run folder", resumable=True)
    p.add_argument("--masks", type=existing_file, default=None,
                   help=f"masks.json for the index cost (default: DIR/{MASKS_FILE}, else that of the run DIR was compacted from)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = QuantizeConfig(bits=args.bits, per_layer=args.per_layer, tolerance=args.tolerance, epochs=args.epochs,
                         lr=args.lr, batch_size=args.batch_size, seed=args.seed, data=args.data, data_dir=args.data_dir,
                         masks=args.masks)
    output = claim_folder(args.out, VERB, inputs=(args.run_dir,), overwrite=args.overwrite)
    path, m = quantize_run(args.run_dir, output, cfg, progress=not args.no_progress, restart=args.restart,
                           extra_config={"command": shlex.join(["structprune", *sys.argv[1:]])})
    bits: int | dict[str, int] = cfg.bits
    if cfg.per_layer == "auto":
        bits = read_json(path / SENSITIVITY_FILE)["chosen_bits"]  # logged by quantize_run as they are chosen
    print(f"{path}: {describe_bits(bits)}, val MCR {m['float_val_mcr']:.4f} -> {m['val_mcr']:.4f}, "
          f"test MCR {m['float_test_mcr']:.4f} -> {m['test_mcr']:.4f}; weight_bytes {m['weight_bytes']:,} "
          f"({m['compression']:.1f}x smaller than dense 32-bit), packed file {m['packed_file_bytes']:,} bytes")
    return 0
