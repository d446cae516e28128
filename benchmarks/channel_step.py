"""Does a network get faster with every 8 maps it drops, or only with every 16? The width step of this CPU.

Times plain CIFAR-10-sized networks (the `paper-cifar10` layout with batch norm, every convolution WIDTH maps
wide, random weights) for a range of widths in steps of --step, all together in one `structprune bench` run
(interleaved rounds, medians). Where the CPU's convolution kernels work in blocks of 16 channels (AVX-512), a
network WIDTH = 16k + 8 wide costs about what the 16k + 16 one costs; where they work in blocks of 8 (AVX2), the
time rises with every step. The JSON holds each width's median and the ratio of each odd step (16k + 8) to the
next width, the number `--round-to` is chosen by.

    .venv/bin/python benchmarks/channel_step.py --runtime onnxruntime --batch 64 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch

from structprune.bench import Candidate, bench, runtime_candidate
from structprune.errors import StructpruneError
from structprune.jsonio import write_json_atomic
from structprune.models import create
from structprune.output import claim_file


def network(width: int) -> torch.nn.Module:
    """The paper's CIFAR-10 layout, every convolution `width` maps wide (3 stages of 2 convolutions)."""
    torch.manual_seed(0)
    spec = f"2x{width}C3-MP2-2x{width}C3-MP2-2x{width}C3-MP2-256FC-10FC"
    return create("plain", spec=spec, bn=True).eval()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    widths = list(range(args.smallest, args.largest + 1, args.step))
    candidates = [runtime_candidate(Candidate(f"width-{w}", network(w), (3, 32, 32), {"width": w}), args.runtime,
                                    args.threads) for w in widths]
    records = bench(candidates, [args.batch], threads=args.threads, rounds=args.rounds,
                    sample_seconds=args.sample_seconds, progress=False)
    ms = {int(r["width"]): float(r["median_ms"]) for r in records}
    odd_steps = {f"{w}/{w + args.step}": ms[w] / ms[w + args.step]
                 for w in widths if w % 16 and w + args.step in ms}
    return {"format": "structprune-channel-step/1", "runtime": args.runtime, "batch": args.batch,
            "threads": args.threads, "rounds": args.rounds, "sample_seconds": args.sample_seconds,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "median_ms": ms,
            "odd_step_ratio": odd_steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", choices=("onnxruntime", "eager"), default="onnxruntime")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smallest", type=int, default=32)
    parser.add_argument("--largest", type=int, default=96)
    parser.add_argument("--step", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--sample-seconds", type=float, default=0.3)
    parser.add_argument("--json", required=True)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        if not 0 < args.smallest < args.largest or args.step < 1:
            raise StructpruneError("need 0 < --smallest < --largest and --step >= 1")
        out = claim_file(args.json, overwrite=args.overwrite)
        result = measure(args)
    except StructpruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_json_atomic(out, result)
    print(json.dumps({"cpu": result["cpu_capability"], "median_ms": result["median_ms"],
                      "odd_step_ratio": {k: round(v, 3) for k, v in result["odd_step_ratio"].items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
