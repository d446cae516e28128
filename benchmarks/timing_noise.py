"""How far apart the same network measures: the floor under any latency prediction on this machine.

Times COPIES identical copies of one network (a run folder's, or a zoo model's with random weights) together in
one `structprune bench` run (interleaved rounds, medians; each copy its own ONNX Runtime session or eager
module), and repeats that RUNS times. Within a run, copies differ only by where their memory and threads landed;
across runs, also by what the machine did in between. The JSON holds every median and, per run and over all,
the spread max / min - 1.

    .venv/bin/python benchmarks/timing_noise.py resnet20 --runtime onnxruntime --batch 64 --threads 2 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import torch

from structprune.arch import input_shape_of
from structprune.bench import Candidate, bench, runtime_candidate
from structprune.errors import StructpruneError
from structprune.jsonio import write_json_atomic
from structprune.models import create
from structprune.output import claim_file


def load(source: str) -> torch.nn.Module:
    if Path(source).is_dir():
        from structprune.runfolder import load_run

        return load_run(source).model.eval()
    torch.manual_seed(0)
    return create(source).eval()


def spread(values: list[float]) -> float:
    return max(values) / min(values) - 1.0


def measure(args: argparse.Namespace) -> dict[str, Any]:
    model = load(args.source)
    shape = tuple(input_shape_of(model))
    runs = []
    for _ in range(args.runs):
        copies = [runtime_candidate(Candidate(f"copy-{i}", copy.deepcopy(model), shape, {}), args.runtime, args.threads)
                  for i in range(args.copies)]
        records = bench(copies, [args.batch], threads=args.threads, rounds=args.rounds,
                        sample_seconds=args.sample_seconds, progress=False)
        medians = [float(r["median_ms"]) for r in records]
        runs.append({"median_ms": medians, "spread": spread(medians)})
    every = [m for r in runs for m in r["median_ms"]]
    return {"format": "structprune-timing-noise/1", "source": args.source, "runtime": args.runtime,
            "batch": args.batch, "threads": args.threads, "copies": args.copies, "rounds": args.rounds,
            "sample_seconds": args.sample_seconds, "runs": runs,
            "within_run_spread_max": max(r["spread"] for r in runs), "overall_spread": spread(every)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a run folder or a zoo model name")
    parser.add_argument("--runtime", choices=("onnxruntime", "eager"), default="onnxruntime")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--sample-seconds", type=float, default=0.3)
    parser.add_argument("--json", required=True)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.copies < 2 or args.runs < 1:
            raise StructpruneError("--copies must be at least 2 and --runs at least 1")
        out = claim_file(args.json, overwrite=args.overwrite)
        result = measure(args)
    except StructpruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_json_atomic(out, result)
    print(json.dumps({k: result[k] for k in ("within_run_spread_max", "overall_spread")}))
    for i, run in enumerate(result["runs"]):
        print(f"run {i + 1}: " + ", ".join(f"{m:.3f}" for m in run["median_ms"]) + f" ms (spread {100 * run['spread']:.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
