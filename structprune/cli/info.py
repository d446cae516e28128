"""`structprune info DIR`: per-layer shapes, parameters and MACs of a saved run."""

from __future__ import annotations

import argparse
import json

from structprune.layers import layer_table
from structprune.runcheck import load_checked_run


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="per-layer shapes, parameters and MACs of a run folder",
                              description="Print each layer's output shape, parameters and MACs (one image), "
                              "the totals, and the run's metrics.")
    p.add_argument("run_dir", metavar="DIR", help="run folder")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    loaded = load_checked_run(args.run_dir)
    rows = layer_table(loaded.model)
    if args.json:
        print(json.dumps({"layers": rows, "metrics": {k: v for k, v in loaded.metrics.items() if k != "history"}},
                         indent=2))
        return 0
    print(f"{args.run_dir}: {loaded.arch.get('model')} {loaded.arch.get('kwargs')}")
    tw = max([14, *(len(r["type"]) for r in rows)])
    print(f"{'layer':<28} {'type':<{tw}} {'output shape':<16} {'weight shape':<16} {'params':>12} {'MACs':>14}")
    for r in rows:
        print(f"{r['name']:<28} {r['type']:<{tw}} {'x'.join(map(str, r['output_shape'])):<16} "
              f"{'x'.join(map(str, r['weight_shape'])):<16} {r['params']:>12,} {r['macs']:>14,}")
    print(f"{'total':<28} {'':<{tw}} {'':<16} {'':<16} {sum(r['params'] for r in rows):>12,} {sum(r['macs'] for r in rows):>14,}")
    for key in ("val_mcr", "test_mcr", "params", "macs", "weight_bytes"):
        if key in loaded.metrics:
            print(f"{key}: {loaded.metrics[key]}")
    return 0
