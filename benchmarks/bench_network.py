"""Whole-network speed of compaction: paper-cifar10 compacted at channel / kernel / intra-kernel scale.

For each pruning configuration the dense network, the compact network and the same sparsity run as
unstructured sparse (every conv a CsrConv2d holding exactly the compact network's nonzeros) are timed in
one process, interleaved, medians of rounds (structprune.bench: each network in its faster layout, NCHW or
channels_last, so the dense reference is the best dense configuration). Before timing, every compact
network is checked against the masked dense network (relative gap <= 1e-4).

Weights are random (He-initialised): timing does not depend on them; accuracy comes from trained runs.

    flock /tmp/structprune-heavy.lock .venv/bin/python benchmarks/bench_network.py --json benchmarks/results/network.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch
from torch import nn

from structprune import models
from structprune.bench import Candidate, bench
from structprune.channel_groups import find_channel_groups
from structprune.compact.compaction import compact, unread_channels
from structprune.granularity import IntraPattern
from structprune.masking import MaskApplier
from structprune.masks import NetworkMask
from structprune.metrics import count_macs, count_params
from structprune.pruning import select_masks

HAS_KERNEL = importlib.util.find_spec("structprune.compact.kernel_conv") is not None
HAS_CSR = importlib.util.find_spec("structprune.compact.csr_conv") is not None

CENTRE_COLUMN = (IntraPattern(1, 3),)  # taps 1, 4, 7: one pad-free 3×1 convolution per layer
CHECKERBOARD = (IntraPattern(0, 2),)  # taps 0, 2, 4, 6, 8: a dilated 2×2 plus a 1×1 convolution
STRUCTURED = {"kernel_structure": "structured", "kernel_groups": 1}  # every output map keeps the same inputs
STRUCTURED_2 = {"kernel_structure": "structured", "kernel_groups": 2}  # two output groups, own inputs each

# name -> (granularities, ratios, selection options). Channel scale keeps multiples of 8 maps (PERF-NOTES).
CONFIGS: dict[str, tuple[str, list[float], dict]] = {
    "channel-50": ("channel", [0.5], {"round_to": 8}),
    "channel-75": ("channel", [0.75], {"round_to": 8}),
    "intra-3of9": ("intra", [6 / 9], {"intra_candidates": CENTRE_COLUMN}),
    "kernel-50": ("kernel", [0.5], STRUCTURED),
    "channel-50+intra-3of9": ("channel,intra", [0.5, 6 / 9], {"round_to": 8, "intra_candidates": CENTRE_COLUMN}),
    "channel-50+kernel-50": ("channel,kernel", [0.5, 0.5], {"round_to": 8, **STRUCTURED}),
    "channel-50+kernel-50+intra-3of9": ("channel,kernel,intra", [0.5, 0.5, 6 / 9],
                                        {"round_to": 8, "intra_candidates": CENTRE_COLUMN, **STRUCTURED}),
    "channel-50+kernel-50g2+intra-3of9": ("channel,kernel,intra", [0.5, 0.5, 6 / 9],
                                          {"round_to": 8, "intra_candidates": CENTRE_COLUMN, **STRUCTURED_2}),
    "channel-50+kernel-50+intra-5of9": ("channel,kernel,intra", [0.5, 0.5, 4 / 9],
                                        {"round_to": 8, "intra_candidates": CHECKERBOARD, **STRUCTURED}),
}
CSR_DEFAULT = "channel-50,channel-50+kernel-50+intra-3of9,channel-50+kernel-50+intra-5of9"


def compact_config(dense: nn.Module, name: str, groups, sample: torch.Tensor) -> tuple[NetworkMask, nn.Module]:
    """The masks of configuration `name` (CONFIGS) on `dense`, with the maps no kept kernel reads dropped as
    compact() drops them (so a CSR twin drops them too), and the compact network."""
    grans, ratios, options = CONFIGS[name]
    mask = unread_channels(dense, select_masks(dense, grans, ratios, groups=groups, **options), groups)
    return mask, compact(dense, mask, sample=sample, groups=groups).eval()


def csr_network(model: nn.Module, mask: NetworkMask, groups) -> nn.Module:
    """The masked network with every conv run as unstructured sparse (B1's CsrConv2d) on its nonzeros."""
    import copy

    from structprune.compact.csr_conv import CsrConv2d

    net = copy.deepcopy(model)
    MaskApplier(net, groups).apply_(mask)
    for name, module in list(net.named_modules()):
        if isinstance(module, nn.Conv2d):
            net.set_submodule(name, CsrConv2d.from_conv(module, module.weight.detach() != 0))
    return net


def source_version() -> str:
    """The git commit the benchmark ran on ('+dirty' when the tracked package files differ from it)."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "structprune"], capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.strip() + ("+dirty" if any(line[:2].strip() == "M" for line in dirty.splitlines()) else "")


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-12)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma list of " + ", ".join(CONFIGS))
    parser.add_argument("--batch", default="64,1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--csr-configs", default=CSR_DEFAULT,
                        help=f"configurations also run as unstructured sparse (default: {CSR_DEFAULT}; '' for none)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this process's CPU time, robust on a shared machine with --threads 1")
    parser.add_argument("--sample-seconds", type=float, default=0.1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    dense = models.create("paper-cifar10").eval()
    sample = torch.randn(1, 3, 32, 32)
    groups = find_channel_groups(dense, sample)
    dense_macs = count_macs(dense)
    candidates = [Candidate("dense", dense, (3, 32, 32), {"macs": dense_macs, "params": count_params(dense)})]
    summary: dict[str, dict] = {}
    for name in args.configs.split(","):
        if "kernel" in CONFIGS[name][0] and not HAS_KERNEL:
            print(f"skip {name}: structprune.compact.kernel_conv is not available", file=sys.stderr)
            continue
        mask, small = compact_config(dense, name, groups, sample)
        x = torch.randn(8, 3, 32, 32)
        with torch.no_grad(), MaskApplier(dense, groups).applied(mask):
            reference = dense(x)
        with torch.no_grad():
            gap = relative_gap(small(x), reference)
        if gap > 1e-4:
            raise SystemExit(f"{name}: compact network differs from the masked one (relative gap {gap:.2e})")
        macs = count_macs(small)
        candidates.append(Candidate(name, small, (3, 32, 32), {"macs": macs, "params": count_params(small)}))
        summary[name] = {"macs": macs, "mac_ratio": dense_macs / macs, "equivalence_gap": gap,
                         "params": count_params(small)}
        csr_wanted = name in args.csr_configs.split(",")
        if HAS_CSR and csr_wanted:
            sparse = csr_network(dense, mask, groups).eval()
            with torch.no_grad():
                summary[name]["csr_gap"] = relative_gap(sparse(x), reference)
            candidates.append(Candidate(f"{name} [csr]", sparse, (3, 32, 32), {"macs": macs, "params": None},
                                        layouts=("nchw",)))
        print(f"{name}: MACs {dense_macs:,} -> {macs:,} ({dense_macs / macs:.2f}x fewer), gap {gap:.1e}", file=sys.stderr)

    batches = [int(b) for b in args.batch.split(",")]
    records = bench(candidates, batches, threads=args.threads, rounds=args.rounds, clock=args.clock,
                    sample_seconds=args.sample_seconds)
    ms = {(r["run"], r["batch"]): r["median_ms"] for r in records}
    print(f"\npaper-cifar10, random weights, {args.threads} threads, {args.clock} clock, median of {args.rounds} "
          "interleaved rounds")
    print("| configuration | MAC ratio | batch | dense ms | compact ms | latency ratio | latency / MAC ratio "
          "| CSR ms | compact vs CSR |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, info in summary.items():
        for b in batches:
            d, c = ms[("dense", b)], ms[(name, b)]
            s = ms.get((f"{name} [csr]", b))
            info[f"batch{b}"] = {"dense_ms": d, "compact_ms": c, "latency_ratio": d / c,
                                 "latency_over_mac_ratio": (d / c) / info["mac_ratio"],
                                 "csr_ms": s, "compact_speedup_over_csr": s / c if s else None}
            csr_cols = f"{s:.2f} | {s / c:.1f}x" if s else "n/a | n/a"
            print(f"| {name} | {info['mac_ratio']:.2f} | {b} | {d:.2f} | {c:.2f} | {d / c:.2f} | "
                  f"{(d / c) / info['mac_ratio']:.2f} | {csr_cols} |")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "source": source_version(),
                                         "records": records, "summary": summary,
                                         "torch": torch.__version__, "threads": args.threads, "clock": args.clock},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
