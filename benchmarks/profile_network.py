"""Where the time of a compact paper-cifar10 goes: PyTorch's profiler, self CPU time per operator.

Builds the same dense and compact networks as bench_network.py (random weights, checked equal to the masked
dense network there), runs each a few times under torch.profiler and prints, per network, the share of
convolutions, pooling, ReLU, the linear head and everything else. This answers why the latency ratio falls
short of the MAC ratio: the operators that pruning does not shrink (pooling and ReLU scale with the number of
maps, not with the kernels or taps kept) take a growing share as the convolutions shrink.

    .venv/bin/python benchmarks/profile_network.py --configs channel-50,channel-50+kernel-50+intra-3of9 --batch 64 --threads 2

`--runtime onnxruntime` does the same for the networks exported to ONNX Runtime, from its own profiler (kernel
time per graph node, after its graph optimizations): a Conv node there may carry a fused ReLU, and the
node list shows which operators the optimizer removed (e.g. Pad folded into Conv).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_network import compact_config, dense_network

from structprune.metrics import count_macs

# operator name -> bucket; anything else is "other" (gathers, copies, adds of intra-kernel blocks, views)
BUCKETS = {"aten::mkldnn_convolution": "conv", "aten::thnn_conv2d": "conv", "aten::_slow_conv2d_forward": "conv",
           "aten::max_pool2d_with_indices": "pool", "aten::clamp_min_": "relu", "aten::clamp_min": "relu",
           "aten::relu_": "relu", "aten::addmm": "linear"}
NESTED = {"aten::relu_"}  # wraps clamp_min_: counted through it
# ONNX Runtime node op types -> bucket (Conv nodes may have a ReLU fused in; FusedGemm is Gemm + ReLU)
ORT_BUCKETS = {"Conv": "conv", "FusedConv": "conv", "NchwcConv": "conv", "MaxPool": "pool", "Relu": "relu",
               "Gemm": "linear", "FusedGemm": "linear", "MatMul": "linear"}


def op_shares(model: nn.Module, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Self CPU milliseconds per forward pass, by bucket."""
    with torch.no_grad():
        for _ in range(3):
            model(x)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                model(x)
    totals: dict[str, float] = {"conv": 0.0, "pool": 0.0, "relu": 0.0, "linear": 0.0, "other": 0.0}
    for event in prof.key_averages():
        if event.key in NESTED:
            continue
        totals[BUCKETS.get(event.key, "other")] += event.self_cpu_time_total / 1000.0 / repeats
    return totals


def ort_op_shares(model: nn.Module, batch: int, threads: int, repeats: int) -> tuple[dict[str, float], list[str]]:
    """Kernel milliseconds per run by bucket in ONNX Runtime (its profiler), and the op types of the nodes run."""
    import tempfile

    import numpy as np

    from structprune.export_onnx import export_onnx, onnx_session

    with tempfile.TemporaryDirectory(prefix="structprune-profile-") as tmp:
        path = Path(tmp) / "network.onnx"
        export_onnx(model, path)
        session = onnx_session(path, threads=threads, profile_prefix=str(Path(tmp) / "ort-profile"))
        x = np.random.default_rng(0).standard_normal((batch, 3, 32, 32), dtype=np.float32)
        for _ in range(3 + repeats):
            session.run(None, {"input": x})
        events = json.loads(Path(session.end_profiling()).read_text())
    per_node: dict[tuple[str, str], list[float]] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_node.setdefault((event["name"], event["args"].get("op_name", "?")), []).append(event["dur"])
    totals: dict[str, float] = {"conv": 0.0, "pool": 0.0, "relu": 0.0, "linear": 0.0, "other": 0.0}
    for (_, op), durations in per_node.items():  # the first 3 runs were the warm-up
        totals[ORT_BUCKETS.get(op, "other")] += sum(durations[3:]) / 1000.0 / repeats
    ops = {op for _, op in per_node}
    return totals, sorted(ops)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="channel-50,channel-50+intra-3of9,channel-50+kernel-50+intra-3of9")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--round-to", type=int, default=8, help="kept maps rounded up to a multiple of this")
    parser.add_argument("--runtime", choices=("eager", "onnxruntime"), default="eager")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dense, sample, groups = dense_network()
    networks = {"dense": dense}
    for name in args.configs.split(","):
        networks[name] = compact_config(dense, name, groups, sample, round_to=args.round_to)[1]
    x = torch.randn(args.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    dense_macs = count_macs(dense)
    rows = {}
    what = ("ONNX Runtime, kernel ms per graph node and run" if args.runtime == "onnxruntime"
            else "channels_last, self CPU ms per forward")
    print(f"paper-cifar10, batch {args.batch}, {args.threads} threads, {what} (mean of {args.repeats}), share of the "
          "total in brackets")
    print("| network | MAC ratio | conv | pool | ReLU | linear | other | total |")
    print("|---|---|---|---|---|---|---|---|")
    for name, model in networks.items():
        ops = None
        if args.runtime == "onnxruntime":
            ms, ops = ort_op_shares(model, args.batch, args.threads, args.repeats)
        else:
            ms = op_shares(model.to(memory_format=torch.channels_last), x, args.repeats)
        total = sum(ms.values())
        rows[name] = {"mac_ratio": dense_macs / count_macs(model), "ms": ms, "total_ms": total, "onnx_ops": ops}
        cells = " | ".join(f"{ms[k]:.2f} ({ms[k] / total:.0%})" for k in ("conv", "pool", "relu", "linear", "other"))
        print(f"| {name} | {rows[name]['mac_ratio']:.2f} | {cells} | {total:.2f} |")
    if args.runtime == "onnxruntime":
        for name, row in rows.items():
            print(f"{name}: ONNX Runtime ran {', '.join(row['onnx_ops'])}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "batch": args.batch, "threads": args.threads,
                                         "runtime": args.runtime, "torch": torch.__version__, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
