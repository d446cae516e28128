"""Dense versus compact networks in ONNX Runtime: the speed-up of structured sparsity outside PyTorch.

For each model, the dense network and compact versions (channel pruning, and channel + intra-kernel
pruning, masks chosen by L1 magnitude) are exported to ONNX, checked against PyTorch, and timed with
ONNX Runtime on the CPU. Timings are interleaved (every round times every variant), repeated, and
reported as medians with per-round ratios to dense, so load from other processes hits all variants alike.
Weights are untrained unless --run names a trained dense run: speed does not depend on their values.

    .venv/bin/python benchmarks/bench_onnx.py --models paper-mnist,paper-cifar10 --batches 1,32 \
        --threads 1,2 --rounds 7 --out runs/bench-onnx.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.benchmark import Timer

from structprune.arch import example_input
from structprune.compact.compaction import compact
from structprune.export_onnx import export_onnx, onnx_session
from structprune.metrics import count_macs, count_params
from structprune.models import create
from structprune.runfolder import load_run
from structprune.sparsity.channel_groups import find_channel_groups
from structprune.sparsity.granularity import Granularity
from structprune.sparsity.selection import SelectionConfig, select

# variant name -> (granularities, ratios); None = the dense network
VARIANTS: dict[str, tuple[list[Granularity], list[float]] | None] = {
    "dense": None,
    "channel-50%": ([Granularity.CHANNEL], [0.5]),
    "channel-50% + intra 3/9": ([Granularity.CHANNEL, Granularity.INTRA], [0.5, 0.67]),
}


def build_variants(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    model.eval()
    x = example_input(model, 2)
    groups = find_channel_groups(model, x)
    nets: dict[str, torch.nn.Module] = {}
    for name, spec in VARIANTS.items():
        if spec is None:
            nets[name] = model
        else:
            mask = select(model, spec[0], spec[1], SelectionConfig(), groups=groups)
            nets[name] = compact(model, mask, x, groups).eval()
    return nets


def time_sessions(sessions: dict[str, object], shape: tuple[int, ...], threads: int, rounds: int,
                  min_run_time: float) -> dict[str, list[float]]:
    """Seconds per batch, one median per round, every variant timed in every round."""
    feed = {"input": torch.randn(*shape).numpy()}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, sess in sessions.items():
            timer = Timer(stmt="sess.run(None, feed)", globals={"sess": sess, "feed": feed}, num_threads=threads)
            times[name].append(timer.blocked_autorange(min_run_time=min_run_time).median)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="paper-mnist,paper-cifar10")
    parser.add_argument("--run", action="append", default=[], help="trained dense run to use instead of fresh weights")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-run-time", type=float, default=0.2, help="seconds per measurement")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = parser.parse_args(argv)

    models: dict[str, torch.nn.Module] = {}
    for run_dir in args.run:
        run = load_run(run_dir)
        models[f"{run.arch['model']} ({run_dir})"] = run.model
    for name in filter(None, args.models.split(",")):
        if not any(key.startswith(name + " ") for key in models):
            torch.manual_seed(0)
            models[name] = create(name, **({"in_channels": 1, "input_size": 28} if "mnist" in name else {}))
    batches = [int(b) for b in args.batches.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for model_name, model in models.items():
            nets = build_variants(model)
            sessions_by_threads = {}
            info = {}
            for variant, net in nets.items():
                path = Path(tmp) / f"{len(info)}-{abs(hash((model_name, variant)))}.onnx"
                check = export_onnx(net, path)
                info[variant] = {"params": count_params(net), "macs": count_macs(net), "onnx_bytes": path.stat().st_size,
                                 "max_abs_diff": check.max_abs_diff, "path": path}
            for t in threads:
                sessions_by_threads[t] = {v: onnx_session(info[v]["path"], threads=t) for v in nets}
            shape_of = example_input(model, 1).shape[1:]
            for t in threads:
                for b in batches:
                    started = time.perf_counter()
                    times = time_sessions(sessions_by_threads[t], (b, *shape_of), t, args.rounds, args.min_run_time)
                    dense = times["dense"]
                    for variant in nets:
                        ratios = [d / v for d, v in zip(dense, times[variant], strict=True)]
                        row = {"model": model_name, "variant": variant, "batch": b, "threads": t,
                               "median_ms": 1e3 * statistics.median(times[variant]),
                               "speedup_vs_dense": statistics.median(ratios),
                               "speedup_min": min(ratios), "speedup_max": max(ratios),
                               "mac_ratio": info["dense"]["macs"] / info[variant]["macs"],
                               **{k: v for k, v in info[variant].items() if k != "path"}}
                        results.append(row)
                    print(f"[{model_name} threads={t} batch={b}: {time.perf_counter() - started:.0f}s]", file=sys.stderr)
    print("| model | variant | threads | batch | MACs | ideal (MAC ratio) | ONNX Runtime ms (median) | speed-up vs dense "
          "(median [min–max] of rounds) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['variant']} | {r['threads']} | {r['batch']} | {r['macs'] / 1e6:.1f} M | "
              f"{r['mac_ratio']:.2f}× | {r['median_ms']:.3f} | {r['speedup_vs_dense']:.2f}× "
              f"[{r['speedup_min']:.2f}–{r['speedup_max']:.2f}] |")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"command": " ".join(["benchmarks/bench_onnx.py", *(argv if argv is not None else sys.argv[1:])]),
                "rounds": args.rounds, "torch": torch.__version__}
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
