"""Layer by layer: how much of each compact layer's MAC reduction becomes speed inside paper-cifar10.

For each configuration (the same masks and compact networks as bench_network.py, random weights), every layer
of the dense network is timed beside the same-named layer of the compact one (`structprune.layer_bench`, the
engine of `structprune bench --per-layer`): per layer the MAC ratio, the latency ratio, their quotient (the
efficiency) and which PyTorch kernel ran the compact convolution (oneDNN, or the reference `thnn` path
PyTorch picks for one image on small maps). Pooling and ReLU are listed too: they shrink with the maps kept,
not with kernels or taps.

    .venv/bin/python benchmarks/layer_efficiency.py --configs channel-25+kernel-25+intra-3of9 --batch 64,1 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_network import compact_config, dense_network, malloc_env, source_version

from structprune.layer_bench import compare_layers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="channel-50+kernel-50+intra-3of9")
    parser.add_argument("--batch", default="64,1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sample-seconds", type=float, default=0.05)
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    dense, sample, groups = dense_network()
    batches = [int(b) for b in args.batch.split(",")]
    results: dict[str, list[dict]] = {}
    for config in args.configs.split(","):
        small = compact_config(dense, config, groups, sample, args.round_to)[1]
        rows = compare_layers(dense, small, batches, threads=args.threads, rounds=args.rounds,
                              sample_seconds=args.sample_seconds)
        print(f"\n{config}: paper-cifar10 layers, random weights, {args.threads} threads, median of {args.rounds} "
              "interleaved rounds")
        print("| layer | type | dense input | compact input | batch | dense ms | compact ms | latency ratio | "
              "MAC ratio | efficiency | compact kernels |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            macs = f"{r['mac_ratio']:.2f} | {r['efficiency']:.2f}" if r["mac_ratio"] else "- | -"
            print(f"| {r['layer']} | {r['type']} | {'x'.join(map(str, r['reference_input']))} | "
                  f"{'x'.join(map(str, r['other_input']))} | {r['batch']} | {r['reference_ms']:.3f} | "
                  f"{r['other_ms']:.3f} | {r['latency_ratio']:.2f} | {macs} | {r['other_kernels'] or '-'} |")
        for b in batches:
            d = sum(r["reference_ms"] for r in rows if r["batch"] == b)
            c = sum(r["other_ms"] for r in rows if r["batch"] == b)
            print(f"sum of the layers, batch {b}: dense {d:.2f} ms, compact {c:.2f} ms, ratio {d / c:.2f}")
        results[config] = rows
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "malloc_env": malloc_env(), "source": source_version(),
                                         "threads": args.threads, "torch": torch.__version__, "results": results},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
