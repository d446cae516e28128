"""`structprune bench`: median latency of run folders' networks, measured together in one process."""

from __future__ import annotations

import argparse
from pathlib import Path

from structprune.arch import input_shape_of
from structprune.bench import Candidate, bench
from structprune.cli.common import int_list, positive_int
from structprune.jsonio import write_json_atomic
from structprune.runfolder import check_writable_destination, load_run


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="time the networks of run folders side by side",
        description="Time each run's network after warm-up, all in one process, interleaved over rounds; report the "
        "median of the faster memory layout (NCHW or channels_last). Random inputs; weights as saved.",
    )
    p.add_argument("runs", type=Path, nargs="+", metavar="DIR", help="run folders")
    p.add_argument("--batch", type=int_list, default=[1, 64], help="batch sizes, e.g. 1,64 (default)")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--rounds", type=positive_int, default=7, help="timing rounds per network (median taken)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: elapsed time; cpu: this process's CPU time (robust on a busy machine with --threads 1)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the records here")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.json is not None:
        check_writable_destination(args.json)
    candidates = []
    for path in args.runs:
        r = load_run(path)
        info = {"macs": r.metrics.get("macs"), "params": r.metrics.get("params"), "test_mcr": r.metrics.get("test_mcr")}
        candidates.append(Candidate(str(path), r.model, input_shape_of(r.model), info))
    records = bench(candidates, args.batch, threads=args.threads, rounds=args.rounds, progress=not args.no_progress,
                    clock=args.clock)
    if args.json is not None:
        write_json_atomic(args.json, records)
    width = max(len(c.name) for c in candidates)
    print(f"{'run':<{width}}  batch  median ms  layout          MACs")
    for rec in records:
        macs = f"{rec['macs']:,}" if rec["macs"] is not None else "?"
        print(f"{rec['run']:<{width}}  {rec['batch']:>5}  {rec['median_ms']:>9.3f}  {rec['memory_format']:<13}  {macs}")
    return 0
