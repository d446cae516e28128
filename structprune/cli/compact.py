"""`structprune compact`: turn a pruned (masked) run into a smaller network that computes the same thing."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from structprune.bench import DEFAULT_RUNTIME
from structprune.cli.common import add_output_arguments
from structprune.output import claim_folder
from structprune.stages.measure import BenchConfig
from structprune.stages.prune import compact_run


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compact",
        help="build the compact network of a pruned run",
        description="Remove pruned channels and turn kernel / intra-kernel masks into compact layers; write OUT with "
        "arch.json describing the compact layers and metrics.json with its own params, MACs, weight bytes and MCR. "
        "Prints the predicted speed-up over the dense network (MACs / efficiency of each compact layer form, no "
        "timing; recorded as predicted_speedup and predicted_layers) and warns about each layer predicted slower "
        "than its dense original.",
    )
    p.add_argument("run_dir", type=Path, metavar="DIR", help="pruned run folder (with masks.json)")
    add_output_arguments(p, "compact run folder")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: the one the run was trained with)")
    p.add_argument("--measure", action="store_true",
                   help=f"also time the dense and the compact network ({DEFAULT_RUNTIME}, as `structprune bench` does "
                   "by default: batch 1 and 64, 2 threads) and record measured_speedup beside the prediction")
    p.set_defaults(func=run)


def _measured(records: list[dict[str, Any]]) -> str:
    runtime, threads = records[0]["runtime"], records[0]["threads"]
    each = ", ".join(f"{r['speedup']:.2f}x at batch {r['batch']}" for r in records)
    return f"measured speed-up ({runtime}, {threads} threads): {each}"


def run(args: argparse.Namespace) -> int:
    output = claim_folder(args.out, "compact", inputs=(args.run_dir,), overwrite=args.overwrite)
    config = {"command": shlex.join(["structprune", *sys.argv[1:]]), "verb": "compact"}
    measure = BenchConfig(runtime=DEFAULT_RUNTIME) if args.measure else None
    out, m = compact_run(args.run_dir, output, data_dir=args.data_dir, config=config, measure=measure)
    src = m.get("source_metrics", {})
    mcr = f", test MCR {m['test_mcr']:.4f}" if "test_mcr" in m else ""

    def was(key: str) -> str:
        return f" (was {src[key]:,})" if isinstance(src.get(key), int) else ""

    print(f"{out}: {m['params']:,} params{was('params')}, {m['macs']:,} MACs{was('macs')}, "
          f"{m['weight_bytes']:,} weight bytes{mcr}")
    slower = m["predicted_slower_layers"]
    note = f"; {len(slower)} layer(s) predicted slower than dense: {', '.join(slower)}" if slower else ""
    print(f"predicted speed-up over the dense network: {m['predicted_speedup']:.2f}x (MACs / form efficiency, "
          f"no timing){note}")
    if "measured_speedup" in m:
        print(_measured(m["measured_speedup"]))
    return 0
