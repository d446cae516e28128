"""`structprune compact`: turn a pruned (masked) run into a smaller network that computes the same thing."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from structprune.cli.common import add_output_arguments
from structprune.output import claim_folder
from structprune.stages.prune import compact_run


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compact",
        help="build the compact network of a pruned run",
        description="Remove pruned channels and turn kernel / intra-kernel masks into compact layers; write OUT with "
        "arch.json describing the compact layers and metrics.json with its own params, MACs, weight bytes and MCR.",
    )
    p.add_argument("run_dir", type=Path, metavar="DIR", help="pruned run folder (with masks.json)")
    add_output_arguments(p, "compact run folder")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: the one the run was trained with)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    output = claim_folder(args.out, "compact", inputs=(args.run_dir,), overwrite=args.overwrite)
    config = {"command": shlex.join(["structprune", *sys.argv[1:]]), "verb": "compact"}
    out, m = compact_run(args.run_dir, output, data_dir=args.data_dir, config=config)
    src = m.get("source_metrics", {})
    mcr = f", test MCR {m['test_mcr']:.4f}" if "test_mcr" in m else ""

    def was(key: str) -> str:
        return f" (was {src[key]:,})" if isinstance(src.get(key), int) else ""

    print(f"{out}: {m['params']:,} params{was('params')}, {m['macs']:,} MACs{was('macs')}, "
          f"{m['weight_bytes']:,} weight bytes{mcr}")
    return 0
