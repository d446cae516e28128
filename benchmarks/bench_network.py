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
import os
import re
import sys
from pathlib import Path

import torch
from torch import nn

from structprune import models
from structprune.bench import RUNTIMES, Candidate, bench, runtime_candidate
from structprune.compact.compaction import compact, unread_channels
from structprune.errors import StructpruneError
from structprune.metrics import count_macs, count_params
from structprune.sparsity.channel_groups import ChannelGroups, find_channel_groups
from structprune.sparsity.granularity import Granularity, IntraPattern, KernelForm
from structprune.sparsity.masking import MaskApplier
from structprune.sparsity.masks import NetworkMask
from structprune.sparsity.selection import select_masks

HAS_KERNEL = importlib.util.find_spec("structprune.compact.kernel_conv") is not None
HAS_CSR = importlib.util.find_spec("structprune.compact.csr_conv") is not None

# intra-kernel patterns by kept taps of a 3×3 kernel: each one (start, stride) pattern shared by the whole layer
INTRA_PATTERNS = {
    3: IntraPattern(1, 3),  # taps 1, 4, 7: the centre column, one pad-free 3×1 convolution per layer
    4: IntraPattern(1, 2),  # taps 1, 3, 5, 7: the four edge centres, a dilated 1×2 row plus a dilated 2×1 column
    5: IntraPattern(0, 2),  # taps 0, 2, 4, 6, 8: a dilated 2×2 plus a 1×1 convolution
    6: IntraPattern(3, 1),  # taps 3..8: the bottom two rows, one 2×3 convolution on a shifted input
}
CONFIG_HELP = ("'+'-joined scales: channel-P (P percent of the maps removed), kernel-P[gG] (P percent of each layer's "
               "kernels removed, structured: G output groups, default 1, each keeping the same input maps), kernel-PbG "
               "(G blocks, each output map reading only its block's input maps; P = 100 (1 - 1/G)), intra-Kof9 "
               f"(K of 9 taps kept, K in {sorted(INTRA_PATTERNS)}), linear-P (P percent of the hidden units of the "
               "fully connected layers removed: the channel scale on the classifier's hidden layer)")
CONFIGS = ["channel-50", "channel-75", "intra-3of9", "kernel-50", "channel-50+intra-3of9", "channel-50+kernel-50",
           "channel-50+kernel-50+intra-3of9", "channel-50+kernel-50g2+intra-3of9", "channel-50+kernel-50+intra-5of9"]
_SCALE = re.compile(r"^(channel|kernel|intra|linear)-(\d+)(?:g(\d+)|b(\d+)|of9)?$")


def parse_config(name: str, round_to: int = 8) -> tuple[str, list[float], dict]:
    """'channel-50+kernel-25g2+intra-5of9' -> (granularities, ratios, select_masks options); kept maps and kept
    input maps per kernel group rounded up to multiples of `round_to`."""
    grans: list[str] = []
    ratios: list[float] = []
    options: dict = {}
    for part in name.split("+"):
        m = _SCALE.match(part)
        if m is None or m.group(1) in grans or (m.group(1) == "linear" and "linear_ratio" in options):
            raise SystemExit(f"bad configuration {name!r} at {part!r}: " + CONFIG_HELP)
        scale, number = m.group(1), int(m.group(2))
        if scale == "linear":
            if m.group(3) or m.group(4) or part.endswith("of9") or not 0 < number < 100:
                raise SystemExit(f"bad configuration {name!r} at {part!r}: " + CONFIG_HELP)
            options["linear_ratio"] = number / 100
            continue
        if scale == "intra":
            if not part.endswith("of9") or number not in INTRA_PATTERNS:
                raise SystemExit(f"bad configuration {name!r} at {part!r}: " + CONFIG_HELP)
            ratios.append(1 - number / 9)
            options["intra_patterns"] = (INTRA_PATTERNS[number],)
        else:
            if part.endswith("of9") or not 0 < number < 100:
                raise SystemExit(f"bad configuration {name!r} at {part!r}: " + CONFIG_HELP)
            ratios.append(number / 100)
            options["round_to"] = round_to
            try:
                if scale == "kernel" and m.group(4):  # blocks: each output map reads only its block's input maps
                    options["kernel"] = KernelForm("blocks", int(m.group(4)))
                elif scale == "kernel":
                    options["kernel"] = KernelForm("structured", int(m.group(3) or 1))
            except StructpruneError as exc:
                raise SystemExit(f"bad configuration {name!r} at {part!r}: {exc}") from None
        grans.append(scale)
    order = sorted(range(len(grans)), key=lambda i: ("channel", "kernel", "intra").index(grans[i]))
    return ",".join(grans[i] for i in order), [ratios[i] for i in order], options


CSR_DEFAULT = "channel-50,channel-50+kernel-50+intra-3of9,channel-50+kernel-50+intra-5of9"


def dense_network() -> tuple[nn.Module, torch.Tensor, ChannelGroups]:
    """The seeded paper-cifar10 every benchmark of this folder compacts, one sample input, its channel groups."""
    torch.manual_seed(0)
    dense = models.create("paper-cifar10").eval()
    sample = torch.randn(1, 3, 32, 32)
    return dense, sample, find_channel_groups(dense, sample)


def compact_config(dense: nn.Module, name: str, groups, sample: torch.Tensor,
                   round_to: int = 8) -> tuple[NetworkMask, nn.Module]:
    """The masks of configuration `name` (CONFIGS) on `dense`, with the maps no kept kernel reads dropped as
    compact() drops them (so a CSR twin drops them too), and the compact network."""
    grans, ratios, options = parse_config(name, round_to)
    scales = Granularity.parse_list(grans) if grans else []  # empty: linear-P alone
    mask = unread_channels(dense, select_masks(dense, scales, ratios, groups=groups, **options), groups)
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


def malloc_env() -> dict[str, str]:
    """glibc allocator settings of this process (MALLOC_* variables): they change how often the large
    activations of a batch are page-faulted in afresh, which shifts timings (docs/benchmarks.md)."""
    return {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-12)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma list of configurations: " + CONFIG_HELP)
    parser.add_argument("--batch", default="64,1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--csr-configs", default=CSR_DEFAULT,
                        help=f"configurations also run as unstructured sparse (default: {CSR_DEFAULT}; '' for none)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this process's CPU time, robust on a shared machine with --threads 1")
    parser.add_argument("--sample-seconds", type=float, default=0.1)
    parser.add_argument("--round-to", type=int, default=8,
                        help="kept maps (per block with kernel blocks; and kept input maps per kernel group) rounded up to a "
                        "multiple of this")
    parser.add_argument("--runtime", choices=RUNTIMES, default="eager",
                        help="run the dense and compact networks alike in eager PyTorch, through torch.compile "
                        "(Inductor, frozen weights) or exported to ONNX Runtime; the CSR twins stay eager PyTorch")
    parser.add_argument("--onnx-stop-spinning", action="store_true",
                        help="ONNX Runtime's threads stop busy-waiting after every run (session 3's setting); "
                        "default: its own spinning")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    dense, sample, groups = dense_network()
    dense_macs = count_macs(dense)
    candidates = [Candidate("dense", dense, (3, 32, 32), {"macs": dense_macs, "params": count_params(dense)})]
    summary: dict[str, dict] = {}
    for name in args.configs.split(","):
        if "kernel" in parse_config(name)[0] and not HAS_KERNEL:
            print(f"skip {name}: structprune.compact.kernel_conv is not available", file=sys.stderr)
            continue
        mask, small = compact_config(dense, name, groups, sample, args.round_to)
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

    candidates = [c if c.name.endswith("[csr]") else runtime_candidate(c, args.runtime, args.threads, args.onnx_stop_spinning)
                  for c in candidates]
    batches = [int(b) for b in args.batch.split(",")]
    records = bench(candidates, batches, threads=args.threads, rounds=args.rounds, clock=args.clock,
                    sample_seconds=args.sample_seconds)
    ms = {(r["run"], r["batch"]): r["median_ms"] for r in records}
    print(f"\npaper-cifar10, random weights, {args.runtime}, {args.threads} threads, {args.clock} clock, median of "
          f"{args.rounds} interleaved rounds")
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
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "malloc_env": malloc_env(), "source": source_version(),
                                         "records": records, "summary": summary,
                                         "torch": torch.__version__, "threads": args.threads, "clock": args.clock,
                                         "runtime": args.runtime, "onnx_stop_spinning": args.onnx_stop_spinning,
                                         "round_to": args.round_to},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
