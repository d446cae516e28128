"""`structprune reproduce mnist|cifar10 [--quick]`: the whole pipeline, resumable, ending in a report."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "reproduce",
        help="the whole pipeline on MNIST or CIFAR-10: train, search, retrain, quantize, compact, export, bench, report",
        description="Run every stage of the method with the settings behind docs/results.md, each stage a folder "
        "under OUT. Stages already complete are skipped: run the same command again to resume an interrupted "
        "reproduction. --quick runs a reduced version in minutes. `digits` (embedded data) checks the pipeline.",
    )
    p.add_argument("dataset", choices=("mnist", "cifar10", "digits"))
    p.add_argument("--quick", action="store_true", help="fewer epochs and smaller search budgets")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: reproduce-DATASET[-quick])")
    p.add_argument("--data-dir", default=None, help="folder with mnist.npz / cifar10.npz (default: $STRUCTPRUNE_DATA or ./data)")
    p.add_argument("--from-run", type=Path, default=None, metavar="DIR",
                   help="start from this trained dense run (same model and dataset) instead of training one")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from structprune.output import claim_folder
    from structprune.reproduce import reproduce

    out = args.out or Path(f"reproduce-{args.dataset}{'-quick' if args.quick else ''}")
    started = time.perf_counter()

    def tell(stage: str, what: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {stage}: {'already done, skipped' if what == 'skip' else 'running'}",
              file=sys.stderr, flush=True)

    output = claim_folder(out, "reproduce", resume=True, inputs=() if args.from_run is None else (args.from_run,))
    seconds = reproduce(args.dataset, output, quick=args.quick, data_dir=args.data_dir, progress=not args.no_progress,
                        on_stage=tell, trained=args.from_run)
    total = time.perf_counter() - started
    print(f"{out}: {len(seconds)} stage(s) run in {total:.0f} s; report: {out / 'report.html'} and {out / 'report.md'}")
    return 0
