"""Where the time of a compact paper-cifar10 goes: PyTorch's profiler, self CPU time per operator.

Builds the same dense and compact networks as bench_network.py (random weights, checked equal to the masked
dense network there), runs each a few times under torch.profiler and prints, per network, the share of
convolutions, pooling, ReLU, the linear head and everything else. This answers why the latency ratio falls
short of the MAC ratio: the operators that pruning does not shrink (pooling and ReLU scale with the number of
maps, not with the kernels or taps kept) take a growing share as the convolutions shrink.

    .venv/bin/python benchmarks/profile_network.py --configs channel-50,channel-50+kernel-50+intra-3of9 --batch 64 --threads 2

`--runtime onnxruntime` does the same for the networks exported to ONNX Runtime, from its own profiler (kernel
time per graph node, after its graph optimizations): a Conv node there may carry a fused ReLU, and the
node list shows which operators the optimizer removed (e.g. Pad folded into Conv). With `--per-layer` it also
prints, for each convolution, pooling and linear node, its time against the dense network's same node and, for
layers with weights, against the layer's own MAC ratio (the k-th Conv or Gemm node is the k-th layer of
`features` and `classifier` with MACs).
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
    per_node: dict[tuple[str, str], list[float]] = {}  # in the order the nodes ran
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_node.setdefault((event["name"], event["args"].get("op_name", "?")), []).append(event["dur"])
    totals: dict[str, float] = {"conv": 0.0, "pool": 0.0, "relu": 0.0, "linear": 0.0, "other": 0.0}
    nodes = []
    for (name, op), durations in per_node.items():  # the first 3 runs were the warm-up
        ms = sum(durations[3:]) / 1000.0 / repeats
        totals[ORT_BUCKETS.get(op, "other")] += ms
        nodes.append({"node": name.removesuffix("_kernel_time"), "op": op, "ms": ms})
    ops = {op for _, op in per_node}
    return totals, sorted(ops), nodes


def layer_macs(model: nn.Module) -> list[tuple[str, int]]:
    """(layer, MACs of one image) for each layer of `features` and `classifier` with MACs, in forward order."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, 3, 32, 32))
    counts = {name.split(".", 1)[1]: sum(c.values()) // 2 for name, c in counter.get_flop_counts().items() if "." in name}
    return [(name, counts[name]) for name, _ in model.named_modules()
            if name.count(".") == 1 and name.split(".")[0] in ("features", "classifier") and counts.get(name)]


def per_layer_rows(dense: dict, compact: dict) -> list[dict]:
    """Node by node against dense: time ratio and, for Conv/Gemm nodes, MAC ratio and efficiency."""
    rows = []
    weighted = {"conv", "linear"}
    d_nodes = [n for n in dense["nodes"] if ORT_BUCKETS.get(n["op"]) in weighted | {"pool"}]
    c_nodes = [n for n in compact["nodes"] if ORT_BUCKETS.get(n["op"]) in weighted | {"pool"}]
    if [n["op"] for n in d_nodes] != [n["op"] for n in c_nodes]:
        return rows
    d_layers, c_layers = iter(dense["layers"]), iter(compact["layers"])
    for d, c in zip(d_nodes, c_nodes, strict=True):
        row = {"op": d["op"], "dense_ms": d["ms"], "ms": c["ms"], "speedup": d["ms"] / c["ms"] if c["ms"] else None}
        if ORT_BUCKETS.get(d["op"]) in weighted:
            (name, d_macs), (_, c_macs) = next(d_layers), next(c_layers)
            row.update(layer=name, mac_ratio=d_macs / c_macs, efficiency=row["speedup"] / (d_macs / c_macs))
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="channel-50,channel-50+intra-3of9,channel-50+kernel-50+intra-3of9")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--round-to", type=int, default=8, help="kept maps rounded up to a multiple of this")
    parser.add_argument("--runtime", choices=("eager", "onnxruntime"), default="eager")
    parser.add_argument("--per-layer", action="store_true", help="onnxruntime: each node against the dense network's")
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
        ops = nodes = None
        if args.runtime == "onnxruntime":
            ms, ops, nodes = ort_op_shares(model, args.batch, args.threads, args.repeats)
        else:
            ms = op_shares(model.to(memory_format=torch.channels_last), x, args.repeats)
        total = sum(ms.values())
        rows[name] = {"mac_ratio": dense_macs / count_macs(model), "ms": ms, "total_ms": total, "onnx_ops": ops}
        if args.per_layer and nodes is not None:
            rows[name].update(nodes=nodes, layers=layer_macs(model))
        cells = " | ".join(f"{ms[k]:.2f} ({ms[k] / total:.0%})" for k in ("conv", "pool", "relu", "linear", "other"))
        print(f"| {name} | {rows[name]['mac_ratio']:.2f} | {cells} | {total:.2f} |")
    if args.runtime == "onnxruntime":
        for name, row in rows.items():
            print(f"{name}: ONNX Runtime ran {', '.join(row['onnx_ops'])}")
    if args.per_layer and args.runtime == "onnxruntime":
        for name, row in list(rows.items())[1:]:
            row["per_layer"] = per_layer_rows(rows["dense"], row)
            if not row["per_layer"]:
                print(f"{name}: its graph's nodes do not pair with dense's; no per-layer table")
                continue
            print(f"\n{name}, node by node against dense (ms per run)")
            print("| node | layer | dense ms | ms | speedup | MAC ratio | efficiency |")
            print("|---|---|---|---|---|---|---|")
            for r in row["per_layer"]:
                mac = f"{r['mac_ratio']:.2f} | {r['efficiency']:.2f}" if "mac_ratio" in r else " | "
                print(f"| {r['op']} | {r.get('layer', '')} | {r['dense_ms']:.3f} | {r['ms']:.3f} | {r['speedup']:.2f} | {mac} |")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "batch": args.batch, "threads": args.threads,
                                         "runtime": args.runtime, "torch": torch.__version__, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
