"""What needs a CUDA GPU (the project's machines have none): training, masked retraining and compact layers
on the GPU, and an indicative dense-vs-compact timing there.

    python scripts/check_cuda.py --out DIR [--device cuda]     (--device cpu runs the same checks here)

Each check prints one line; the script exits non-zero at the first one that fails. Writes DIR/cuda-check.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from structprune import models
from structprune.cli import main as cli
from structprune.compact.compaction import compact, unread_channels
from structprune.data import load_dataset
from structprune.retrain import retrain_masked
from structprune.runfolder import load_run
from structprune.sparsity.channel_groups import find_channel_groups
from structprune.sparsity.granularity import IntraPattern, KernelForm
from structprune.sparsity.masking import MaskApplier
from structprune.sparsity.selection import select_masks
from structprune.train import TrainConfig, evaluate

RTOL = 1e-4
CKI = ("channel,kernel,intra", [0.5, 0.5, 6 / 9])
# the fast variant (benchmarks/bench_network.py): whole maps in multiples of 8, every output map keeping the same
# input maps, the centre column of each 3×3 kernel
FAST = {"round_to": 8, "kernel": KernelForm("structured", 1), "intra_patterns": (IntraPattern(1, 3),)}


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-12)


def check(results: dict, name: str, ok: bool, detail: str) -> None:
    results[name] = {"ok": ok, "detail": detail}
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        raise SystemExit(1)


def train_on_device(out: Path, device: str, results: dict) -> Path:
    run_dir = out / "tiny-dense"
    code = cli(["train", "--model", "tiny-paper", "--data", "digits", "--epochs", "8", "--lr", "0.05",
                "--device", device, "--no-progress", "--out", str(run_dir)])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    check(results, "train", code == 0 and config["device"] == device and metrics["test_mcr"] < 0.5,
          f"exit {code}, device {config['device']}, test MCR {metrics['test_mcr']:.2%}")
    return run_dir


def retrain_masked_on_device(run_dir: Path, device: str, results: dict) -> None:
    run = load_run(run_dir)  # weights come back on the CPU: the run folder does not remember the device
    model = run.model.to(device)
    data = load_dataset("digits", None, val_size=200, seed=0)
    groups = find_channel_groups(model, torch.randn(1, 1, 8, 8, device=device))
    mask = select_masks(model, "channel,intra", [0.5, 0.5], groups=groups)
    retrain_masked(model, mask, data, TrainConfig(epochs=4, lr=0.05), groups=groups, progress=False)
    again = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        MaskApplier(model, groups).apply_(mask)  # zeros already in place: applying the mask again changes nothing
    changed = max(float((p.detach() - again[n]).abs().max()) for n, p in model.named_parameters())
    mcr = evaluate(model, data.test).mcr
    check(results, "retrain_masked", changed == 0.0 and next(model.parameters()).device.type == device,
          f"pruned weights held at zero (max change when re-masked {changed:.1e}), test MCR {mcr:.2%}")


def compact_gap(net: torch.nn.Module, mask, groups, sample: torch.Tensor, x: torch.Tensor) -> tuple[torch.nn.Module, float]:
    """Compact `net` (on the CPU) under `mask`, move both to x's device, and return the compact network with its
    relative gap to the masked one there. `net` is left on x's device."""
    net.cpu()
    small = compact(net, mask, sample=sample, groups=groups).eval().to(x.device)
    net.to(x.device)
    with torch.no_grad(), MaskApplier(net, groups).applied(mask):
        want = net(x)
    with torch.no_grad():
        return small, relative_gap(small(x), want)


def compact_on_device(device: str, results: dict) -> dict:
    torch.manual_seed(0)
    dense = models.create("paper-cifar10", bn=True).eval()
    for m in dense.modules():  # non-trivial batch-norm statistics, so folding is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    sample = torch.randn(1, 3, 32, 32)
    groups = find_channel_groups(dense, sample)
    x = torch.randn(16, 3, 32, 32, device=device)
    small = None
    for label, options in (("free masks", {}), ("fast masks", FAST)):
        mask = unread_channels(dense, select_masks(dense, CKI[0], CKI[1], groups=groups, **options), groups)
        small, gap = compact_gap(dense, mask, groups, sample, x)
        check(results, f"compact_paper_cifar10 ({label})", gap <= RTOL,
              f"channel+kernel+intra, relative gap {gap:.1e} on {device}")
    for family in ("resnet20", "mobilenetv2", "densenet"):
        net = models.create(family).eval()
        g = find_channel_groups(net, sample)
        _, gap = compact_gap(net, select_masks(net, "channel", 0.5, groups=g), g, sample, x)
        check(results, f"compact_{family}", gap <= RTOL, f"channel 50%, relative gap {gap:.1e}")
    return {"dense": dense, "compact": small}


def time_on_device(networks: dict, device: str, results: dict) -> None:
    """Median latency of dense and compact paper-cifar10, batch 1 and 256 (indicative: one process, no spread)."""
    timings = {}
    for batch in (1, 256):
        x = torch.randn(batch, 3, 32, 32, device=device)
        for name, net in networks.items():
            with torch.no_grad():
                for _ in range(10):
                    net(x)
                samples = []
                for _ in range(50):
                    if device == "cuda":
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    net(x)
                    if device == "cuda":
                        torch.cuda.synchronize()
                    samples.append(time.perf_counter() - start)
            timings[f"{name}_b{batch}_ms"] = 1000 * sorted(samples)[len(samples) // 2]
        ratio = timings[f"dense_b{batch}_ms"] / timings[f"compact_b{batch}_ms"]
        print(f"     batch {batch}: dense {timings[f'dense_b{batch}_ms']:.3f} ms, compact "
              f"{timings[f'compact_b{batch}_ms']:.3f} ms, {ratio:.2f}x", flush=True)
    results["timing"] = timings


def main_() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("check_cuda: no CUDA GPU is available to PyTorch here", file=sys.stderr)
        return 2
    if args.device == "cuda":  # full fp32: the equivalence tolerance is not a TF32 tolerance
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"torch": torch.__version__, "device": args.device,
                     "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None}
    try:
        run_dir = train_on_device(args.out, args.device, results)
        retrain_masked_on_device(run_dir, args.device, results)
        networks = compact_on_device(args.device, results)
        time_on_device(networks, args.device, results)
    finally:
        (args.out / "cuda-check.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_())
