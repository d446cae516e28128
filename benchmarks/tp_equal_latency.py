"""Tune Torch-Pruning's group-L2 channel pruning to a measured speed-up (the baseline at equal measured latency).

For a dense run, bisect the pruning ratio of `prune --method tp-l2 --scope SCOPE --round-to N` on [0, --max-ratio]
for the smallest ratio whose compact network, timed against dense by structprune.bench in the given runtime,
batch and threads (dense and compact in one run, median of rounds), reaches `--speedup`; then choose the probe
whose measured speed-up is nearest the requested one. Writes a JSON history of every probe and the chosen
ratio; the comparison script then prunes with that ratio through the CLI. Time it with nothing else running.
With `--mac-reduction R` instead of `--speedup`, the ratio is bisected on MACs (R× fewer, counted, no timing):
equal MACs, for when timing noise is larger than the differences the bisection must tell apart.

Usage: benchmarks/tp_equal_latency.py DENSE_RUN --speedup 2.19 --batch 1 --scope layer --json OUT.json
       benchmarks/tp_equal_latency.py DENSE_RUN --mac-reduction 3.8 --scope layer --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from structprune.compact.compaction import compact
from structprune.metrics import count_macs
from structprune.runcheck import load_checked_run
from structprune.sparsity.selection import channel_groups_of, select_masks
from structprune.stages.target import bench_speed


def probe(model: torch.nn.Module, groups, shape: tuple[int, ...], ratio: float, args: argparse.Namespace) -> dict:
    mask = select_masks(model, "channel", ratio, method="tp-l2", scope=args.scope, groups=groups, round_to=args.round_to)
    small = compact(model, mask, sample=torch.randn(1, *shape), groups=groups).eval()
    row = {"ratio": ratio, "mac_reduction": count_macs(model, shape) / count_macs(small, shape)}
    if args.mac_reduction is None:
        dense_ms, small_ms = bench_speed(model, small, shape, args.runtime, args.batch, args.threads, args.rounds)
        row.update(dense_ms=dense_ms, compact_ms=small_ms, speedup=dense_ms / small_ms)
        logging.info("ratio %.4f: %.2fx faster, %.2fx fewer MACs", ratio, row["speedup"], row["mac_reduction"])
    else:
        logging.info("ratio %.4f: %.2fx fewer MACs", ratio, row["mac_reduction"])
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dense")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--speedup", type=float, help="the measured speed-up to reach")
    goal.add_argument("--mac-reduction", type=float, help="the MAC reduction to reach (counted, no timing)")
    p.add_argument("--scope", choices=["layer", "global"], default="layer")
    p.add_argument("--runtime", choices=["onnxruntime", "eager"], default="onnxruntime")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=6, help="bisection steps (default 6)")
    p.add_argument("--max-ratio", type=float, default=0.6,
                   help="upper end of the search (default 0.6: with round_to, Torch-Pruning prunes *less* at higher "
                        "ratios once a group's kept count rounds back up, so the speed-up is not monotonic there)")
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if Path(args.json).exists():
        print(f"{args.json} exists; not replaced", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    run = load_checked_run(args.dense)
    model = run.model.eval()
    shape = tuple(run.arch["input_shape"])
    groups = channel_groups_of(model)
    key, goal = ("speedup", args.speedup) if args.mac_reduction is None else ("mac_reduction", args.mac_reduction)
    lo, hi, probes = 0.0, args.max_ratio, []
    for _ in range(args.steps):
        mid = (lo + hi) / 2
        row = probe(model, groups, shape, mid, args)
        probes.append(row)
        if row[key] >= goal:
            hi = mid
        else:
            lo = mid
    probes.append(probe(model, groups, shape, args.max_ratio, args))
    # the probe nearest the goal (timing noise and round_to's steps make exact equality rare)
    best = min(probes, key=lambda r: abs(r[key] / goal - 1))
    out = {"format": "structprune-tp-equal-latency/1", "dense": str(args.dense), "target_speedup": args.speedup,
           "target_mac_reduction": args.mac_reduction, "scope": args.scope, "runtime": args.runtime,
           "batch": args.batch, "threads": args.threads, "round_to": args.round_to, "rounds": args.rounds,
           "probes": probes, "chosen": best}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"{args.scope}: ratio {best['ratio']:.4f} gives {best.get('speedup', float('nan')):.2f}x "
          f"({best['mac_reduction']:.2f}x fewer MACs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
