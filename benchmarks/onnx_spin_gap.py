"""How long ONNX Runtime's threads keep spinning after a run, and what that does to the network timed next.

Two sessions (dense paper-cifar10 and one compact configuration, as in bench_network.py) are timed in turn
in one process with ONNX Runtime's default spinning, with an idle gap between turns. While the previous
session's threads still spin, they take cores from the next network timed; the gap at which the figures stop
moving is the idle time `structprune.bench.SETTLE_SECONDS` must cover.

    .venv/bin/python benchmarks/onnx_spin_gap.py --config channel-40+kernel-25+intra-6of9 --batch 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_network import compact_config, dense_network

from structprune.export_onnx import export_onnx, onnx_session
from structprune.metrics import count_macs


def per_call_ms(session, x: np.ndarray, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        session.run(None, {"input": x})
    return (time.perf_counter() - start) / calls * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="channel-40+kernel-25+intra-6of9")
    parser.add_argument("--round-to", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gaps", default="0,0.002,0.01,0.05,0.2", help="idle seconds between turns")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=100, help="calls per turn")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    dense, sample, groups = dense_network()
    compact = compact_config(dense, args.config, groups, sample, round_to=args.round_to)[1]
    mac_ratio = count_macs(dense) / count_macs(compact)
    with tempfile.TemporaryDirectory(prefix="structprune-spin-") as tmp:
        sessions = []
        for k, model in enumerate((dense, compact)):
            path = Path(tmp) / f"network{k}.onnx"
            export_onnx(model, path)
            sessions.append(onnx_session(path, threads=args.threads))  # default spinning
    x = np.random.default_rng(0).standard_normal((args.batch, 3, 32, 32), dtype=np.float32)
    for session in sessions:
        per_call_ms(session, x, 50)
    rows = []
    print(f"paper-cifar10 dense vs {args.config} ({mac_ratio:.2f}x fewer MACs), ONNX Runtime, batch {args.batch}, "
          f"{args.threads} threads, medians of {args.rounds} turns of {args.calls} calls")
    print("| idle gap between turns | dense ms | compact ms | latency ratio | latency / MAC ratio |")
    print("|---|---|---|---|---|")
    for gap in (float(g) for g in args.gaps.split(",")):
        times: list[list[float]] = [[], []]
        for _ in range(args.rounds):
            for k, session in enumerate(sessions):
                time.sleep(gap)
                times[k].append(per_call_ms(session, x, args.calls))
        d, c = (statistics.median(t) for t in times)
        rows.append({"gap_s": gap, "dense_ms": d, "compact_ms": c, "latency_ratio": d / c,
                     "latency_over_mac_ratio": d / c / mac_ratio})
        print(f"| {gap * 1e3:g} ms | {d:.3f} | {c:.3f} | {d / c:.2f} | {d / c / mac_ratio:.2f} |")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "config": args.config, "mac_ratio": mac_ratio,
                                         "batch": args.batch, "threads": args.threads, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
