"""Layer by layer: how much of each compact layer's MAC reduction becomes speed inside paper-cifar10.

For each configuration (the same masks and compact networks as bench_network.py, random weights), every conv
and linear layer of the dense network is timed beside its compact counterpart, on inputs of the shapes they
see inside the network, all in one process, interleaved, medians of rounds, each in its faster layout
(structprune.bench). Per layer: MAC ratio, latency ratio and their quotient, the efficiency, and which
PyTorch kernel ran the compact layer's convolutions (oneDNN, or the reference `thnn`/`slow_dilated` paths
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
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_network import compact_config, dense_network, source_version

from structprune.bench import Candidate, bench
from structprune.compact.intra_conv import IntraKernelConv2d
from structprune.compact.kernel_conv import KernelSparseConv2d

LAYERS = (nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, KernelSparseConv2d, IntraKernelConv2d)
KERNELS = {"aten::mkldnn_convolution": "onednn", "aten::_slow_conv2d_forward": "thnn",
           "aten::slow_conv_dilated2d": "slow_dilated"}


def layer_inputs(model: nn.Module) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """(name, module, input shape without batch) of each layer that computes, in forward order."""
    seen: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    hooks = [module.register_forward_hook(lambda m, inp, out, name=name: seen.append((name, m, tuple(inp[0].shape[1:]))))
             for name, module in model.named_modules() if isinstance(module, LAYERS)]
    try:
        with torch.no_grad():
            model(torch.randn(1, 3, 32, 32))
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def macs_of(module: nn.Module, shape: tuple[int, ...]) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(torch.randn(1, *shape))
    return int(counter.get_total_flops() // 2)


def conv_kernels(module: nn.Module, shape: tuple[int, ...], batch: int) -> str:
    """The PyTorch convolution kernels one forward pass of `module` runs, e.g. 'onednn' or 'thnn+onednn'."""
    x = torch.randn(batch, *shape)
    if len(shape) == 3:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof, torch.no_grad():
        module(x)
    names = [KERNELS[e.name] for e in prof.events() if e.name in KERNELS]
    return "+".join(dict.fromkeys(names)) or "-"


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
    dense_layers = layer_inputs(dense)
    batches = [int(b) for b in args.batch.split(",")]
    results: dict[str, list[dict]] = {}
    for config in args.configs.split(","):
        compact_layers = layer_inputs(compact_config(dense, config, groups, sample, args.round_to)[1])
        if [n for n, _, _ in compact_layers] != [n for n, _, _ in dense_layers]:
            raise SystemExit(f"{config}: the compact network's layers do not line up with the dense ones")
        candidates = []
        for (name, d_mod, d_shape), (_, c_mod, c_shape) in zip(dense_layers, compact_layers, strict=True):
            layouts = None if len(d_shape) == 3 else ("nchw",)
            candidates.append(Candidate(f"{name} dense", d_mod, d_shape, {}, layouts=layouts))
            candidates.append(Candidate(f"{name} compact", c_mod, c_shape, {}, layouts=layouts))
        records = bench(candidates, batches, threads=args.threads, rounds=args.rounds,
                        sample_seconds=args.sample_seconds)
        ms = {(r["run"], r["batch"]): r["median_ms"] for r in records}
        rows = []
        print(f"\n{config}: paper-cifar10 layers, random weights, {args.threads} threads, median of {args.rounds} "
              "interleaved rounds")
        print("| layer | type | dense input | compact input | batch | dense ms | compact ms | latency ratio | "
              "MAC ratio | efficiency | compact kernels |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for (name, d_mod, d_shape), (_, c_mod, c_shape) in zip(dense_layers, compact_layers, strict=True):
            computes = isinstance(d_mod, nn.Conv2d | nn.Linear)
            mac_ratio = macs_of(d_mod, d_shape) / macs_of(c_mod, c_shape) if computes else None
            for b in batches:
                d, c = ms[(f"{name} dense", b)], ms[(f"{name} compact", b)]
                kernels = conv_kernels(c_mod, c_shape, b) if isinstance(d_mod, nn.Conv2d) else "-"
                row = {"layer": name, "type": type(d_mod).__name__, "dense_input": d_shape, "compact_input": c_shape,
                       "batch": b, "dense_ms": d, "compact_ms": c, "latency_ratio": d / c, "mac_ratio": mac_ratio,
                       "efficiency": (d / c) / mac_ratio if mac_ratio else None, "compact_kernels": kernels}
                rows.append(row)
                print(f"| {name} | {row['type']} | {'x'.join(map(str, d_shape))} | {'x'.join(map(str, c_shape))} | {b} "
                      f"| {d:.3f} | {c:.3f} | {d / c:.2f} | "
                      + (f"{mac_ratio:.2f} | {(d / c) / mac_ratio:.2f}" if mac_ratio else "- | -") + f" | {kernels} |")
        for b in batches:
            d = sum(r["dense_ms"] for r in rows if r["batch"] == b)
            c = sum(r["compact_ms"] for r in rows if r["batch"] == b)
            print(f"sum of the layers, batch {b}: dense {d:.2f} ms, compact {c:.2f} ms, ratio {d / c:.2f}")
        results[config] = rows
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "source": source_version(),
                                         "threads": args.threads, "torch": torch.__version__, "results": results},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
