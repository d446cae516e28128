"""Layer-level speed of the compact layers against dense and unstructured-sparse convolutions.

One conv layer (default 128→128 maps, 3×3, padding 1, 16×16 maps, batch 64).  For each sparsity case
the compact layer is timed beside, in one process and interleaved (rounds in rotating order, medians):
  dense-cl     F.conv2d on a channels_last input (the best dense configuration on this CPU)
  dense-nchw   F.conv2d on an NCHW input
  im2col       F.unfold + torch.mm, dense (the lowering the paper compares with)
  csr          the same nonzeros as unstructured sparse (CsrConv2d: im2col + CSR matmul)
Every compact layer and CSR layer is first checked against the masked dense conv (relative gap ≤ 1e-4).
MACs are counted by torch.utils.flop_counter on the layer that runs.

    flock /tmp/structprune-heavy.lock .venv/bin/python benchmarks/bench_layers.py --json benchmarks/results/layers.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.benchmark import Timer
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from structprune.compact import CsrConv2d, IntraKernelConv2d, KernelSparseConv2d, structured_kernel_mask
from structprune.sparsity.granularity import IntraPattern
from structprune.sparsity.masks import LayerMask


def cases(conv: nn.Conv2d, quick: bool) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """name -> (compact layer, weight mask [O, I, kh, kw])."""
    rng = random.Random(0)
    out_ch, in_ch, kh, kw = conv.weight.shape
    taps = kh * kw
    out: dict[str, tuple[nn.Module, torch.Tensor]] = {}

    def intra(name: str, patterns: list[IntraPattern | None]) -> None:
        mask = LayerMask(shape=(out_ch, in_ch, kh, kw), intra=patterns).weight_mask()
        out[name] = (IntraKernelConv2d.from_conv(conv, patterns), mask)

    def kernel(name: str, keep: torch.Tensor, patterns: list[IntraPattern | None] | None = None) -> None:
        mask = LayerMask(shape=(out_ch, in_ch, kh, kw), keep_kernel=keep, intra=patterns).weight_mask()
        out[name] = (KernelSparseConv2d.from_conv(conv, keep, patterns), mask)

    shared3 = [(0, 3), (1, 3), (6, 1), (0, 4), (3, 2)] if not quick else [(0, 3), (1, 3), (0, 4)]
    for start, stride in shared3:
        p = IntraPattern(start, stride)
        intra(f"intra 3/{taps} {p.taps(taps)} all maps", [p] * in_ch)
    intra(f"intra 3/{taps} mixed per map", [rng.choice(IntraPattern.with_taps(taps, 3)) for _ in range(in_ch)])
    for start, stride in [(0, 2), (4, 1)] if not quick else [(0, 2)]:
        p = IntraPattern(start, stride)
        intra(f"intra 5/{taps} {p.taps(taps)} all maps", [p] * in_ch)
    intra(f"intra 5/{taps} mixed per map", [rng.choice(IntraPattern.with_taps(taps, 5)) for _ in range(in_ch)])
    for groups in [2, 4] if quick else [2, 4, 8]:
        kernel(f"kernel 50% structured, {groups} groups", structured_kernel_mask(conv.weight, groups, 0.5))
    if not quick:
        keep = torch.zeros(out_ch, in_ch, dtype=torch.bool)
        for o in range(out_ch):  # every output map keeps its own random half of the input maps
            keep[o, rng.sample(range(in_ch), in_ch // 2)] = True
        kernel("kernel 50% unstructured (random per map)", keep)
        kernel(f"kernel 50% structured 4 groups + intra 3/{taps} (0, 3, 6)",
               structured_kernel_mask(conv.weight, 4, 0.5), [IntraPattern(0, 3)] * in_ch)
    return out


def im2col_conv(conv: nn.Conv2d) -> Callable[[torch.Tensor], torch.Tensor]:
    """Dense conv as F.unfold + one GEMM, NCHW."""
    w = conv.weight.detach().reshape(conv.out_channels, -1)  # [O, I*kh*kw]

    def run(x: torch.Tensor) -> torch.Tensor:
        n, _, h, wd = x.shape
        cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # [N, I*kh*kw, L]
        y = torch.matmul(w, cols)  # [N, O, L]
        return y.view(n, conv.out_channels, h, wd)

    return run


def macs_of(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        fn(x)
    return counter.get_total_flops() // 2


def check(name: str, got: torch.Tensor, ref: torch.Tensor) -> None:
    gap = float((got - ref).abs().max() / ref.abs().max())
    if gap > 1e-4:
        raise SystemExit(f"{name}: relative gap {gap:.2e} to the masked dense conv")


def time_variants(variants: dict[str, tuple[Callable, torch.Tensor]], threads: int, rounds: int,
                  sample_s: float, clock: Callable[[], float]) -> dict[str, list[float]]:
    """Milliseconds per call of each variant, one sample per round, rounds in rotating order."""
    numbers = {}
    for name, (fn, x) in variants.items():  # warm-up, then calls per sample
        for _ in range(2):
            fn(x)
        once = Timer("fn(x)", globals={"fn": fn, "x": x}, num_threads=threads, timer=clock).timeit(2).mean
        numbers[name] = max(1, int(sample_s / max(once, 1e-6)))
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    with tqdm(total=rounds * len(names), desc="timing", file=sys.stderr) as bar:
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                fn, x = variants[name]
                t = Timer("fn(x)", globals={"fn": fn, "x": x}, num_threads=threads, timer=clock).timeit(numbers[name])
                samples[name].append(1e3 * t.mean)
                bar.update(1)
    return samples


def print_table(results: list[dict]) -> None:
    """Markdown table of the compact layers of one or more runs, each against its own run's references.
    × = reference median / compact median; "range" = min..max of the per-round ratios to dense CL."""
    for res in results:
        st, med = res["setup"], {r["variant"]: r["median_ms"] for r in res["records"]}
        print(f"{st['channels']}→{st['channels']} maps, 3×3, {st['size']}×{st['size']}, batch {st['batch']}, "
              f"{st['threads']} threads, {st['clock']} clock, medians of {st['rounds']} interleaved rounds: dense "
              f"channels_last {med['dense-cl']:.2f} ms, NCHW {med['dense-nchw']:.2f} ms, im2col+GEMM {med['im2col']:.2f} ms")
    print("\n| case | MAC ratio | compact ms | × vs dense CL (range) | × vs dense NCHW | × vs im2col | CSR ms | × vs CSR |")
    print("|---|---|---|---|---|---|---|---|")
    for res in results:
        recs = {r["variant"]: r for r in res["records"]}
        med = {name: r["median_ms"] for name, r in recs.items()}
        dense = recs["dense-cl"]
        for r in recs.values():
            if r["kind"] != "compact":
                continue
            case, ms = r["case"], r["median_ms"]
            per_round = [d / c for d, c in zip(dense["samples_ms"], r["samples_ms"], strict=True)]
            csr_ms = med.get(f"{case} | csr")
            print(f"| {case} | {dense['macs'] / r['macs']:.2f} | {ms:.2f} | {med['dense-cl'] / ms:.2f} "
                  f"({min(per_round):.2f}–{max(per_round):.2f}) | {med['dense-nchw'] / ms:.2f} | {med['im2col'] / ms:.2f} | "
                  f"{'' if csr_ms is None else f'{csr_ms:.1f}'} | {'' if csr_ms is None else f'{csr_ms / ms:.1f}'} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=128, help="input and output maps")
    parser.add_argument("--size", type=int, default=16, help="height and width of the maps")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--sample-seconds", type=float, default=0.15)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: elapsed time; cpu: CPU time of this process (robust to other processes on a shared "
                             "machine when --threads 1; with more threads it also counts the threads' spin-waiting)")
    parser.add_argument("--quick", action="store_true", help="fewer cases and rounds (a smoke run)")
    parser.add_argument("--only", default="", help="comma-separated substrings: run only the cases whose name has one")
    parser.add_argument("--no-csr", action="store_true", help="skip the (slow) unstructured CSR references")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--report", type=Path, nargs="+", metavar="JSON",
                        help="measure nothing: print the table of earlier runs' JSON files")
    args = parser.parse_args(argv)
    if args.report:
        print_table([json.loads(path.read_text()) for path in args.report])
        return 0
    if args.quick:
        args.rounds, args.sample_seconds = min(args.rounds, 3), min(args.sample_seconds, 0.05)

    torch.manual_seed(0)
    c = args.channels
    conv = nn.Conv2d(c, c, 3, padding=1).eval()
    x_nchw = torch.randn(args.batch, c, args.size, args.size)
    x_cl = x_nchw.contiguous(memory_format=torch.channels_last)
    dense = lambda x: F.conv2d(x, conv.weight, conv.bias, 1, 1)  # noqa: E731
    variants: dict[str, tuple[Callable, torch.Tensor]] = {
        "dense-cl": (dense, x_cl), "dense-nchw": (dense, x_nchw), "im2col": (im2col_conv(conv), x_nchw),
    }
    info: dict[str, dict] = {name: {"kind": name, "case": "dense"} for name in variants}
    with torch.no_grad():  # (FlopCounterMode's module hooks fail under inference_mode)
        dense_macs = macs_of(dense, x_cl)
        for name in variants:
            info[name]["macs"] = dense_macs
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        for case, (layer, mask) in cases(conv, args.quick).items():
            if wanted and not any(w in case for w in wanted):
                continue
            layer.eval()
            ref = F.conv2d(x_cl, conv.weight * mask, conv.bias, 1, 1)
            check(case, layer(x_cl), ref)
            variants[f"{case} | compact"] = (layer, x_cl)
            info[f"{case} | compact"] = {"kind": "compact", "case": case, "macs": macs_of(layer, x_cl),
                                         "nonzeros": int(mask.sum()), "layer": repr(layer)}
            if not args.no_csr:
                csr = CsrConv2d.from_conv(conv, mask).eval()
                check(f"{case} (CSR)", csr(x_cl), ref)
                variants[f"{case} | csr"] = (csr, x_nchw)
                info[f"{case} | csr"] = {"kind": "csr", "case": case, "nonzeros": int(mask.sum())}
        clock = time.perf_counter if args.clock == "wall" else time.process_time
        samples = time_variants(variants, args.threads, args.rounds, args.sample_seconds, clock)

    med = {name: statistics.median(s) for name, s in samples.items()}
    records = [{"variant": name, **info[name], "median_ms": med[name], "min_ms": min(s), "max_ms": max(s),
                "samples_ms": s} for name, s in samples.items()]
    setup = {"clock": args.clock,
             "channels": c, "size": args.size, "batch": args.batch, "threads": args.threads, "rounds": args.rounds,
             "kernel": 3, "torch": torch.__version__, "cpu": platform.processor() or platform.machine()}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"setup": setup, "records": records}, indent=1))

    print_table([{"setup": setup, "records": records}])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
