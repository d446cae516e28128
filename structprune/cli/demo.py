"""`structprune demo --out DIR`: run every stage on the embedded digits data and write DIR/report.md."""

from __future__ import annotations

import argparse

from structprune.cli.common import add_output_arguments, positive_int, seed
from structprune.demo import run_demo
from structprune.output import claim_folder


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="run the whole method on embedded data and write a report",
                              description="Train paper-mnist (8×8 inputs) on scikit-learn's digits, then every "
                              "later stage; write DIR/report.md and the stages' run folders.")
    add_output_arguments(p, "output folder")
    p.add_argument("--epochs", type=positive_int, default=30, help="dense training epochs (default 30)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    output = claim_folder(args.out, "demo", overwrite=args.overwrite)
    ctx = run_demo(output, epochs=args.epochs, seed=args.seed, progress=not args.no_progress)
    dense = ctx.results.get("dense", {})
    print(f"{args.out / 'report.md'}: dense test MCR {dense.get('test_mcr', float('nan')):.4f}; "
          f"stages: {', '.join(ctx.seconds)}")
    return 0
