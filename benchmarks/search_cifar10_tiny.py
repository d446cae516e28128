"""A CIFAR-10 comparison small enough for 25 minutes of a shared 2-core CPU (what docs/results.md reports).

The full protocol (benchmarks/search_cifar10.sh) needs a properly trained paper-cifar10 and hours of CPU.
This one keeps every method on the same footing at a tiny budget:
  dense   paper-cifar10 (batch norm) trained 1 epoch on the first 10,000 training images (lr 0.05, no augmentation)
  prune   channel scale, every conv keeps the same number of maps (ratio 0.43 -> 3.05x fewer conv MACs;
          0.30 -> 2.02x with --ratios 0.43,0.30); PF / EPF 4 particles x 2 generations per layer scored on
          100 validation images; random best-of-8 (the same budget); L1; Torch-Pruning group L2
  retrain 1 epoch on 2,000 training images, masks held (the same for every method)
  report  test MCR on the 1,000 test images of cifar10.npz (about ±1.5 points of standard error here)

  .venv/bin/python benchmarks/search_cifar10_tiny.py --out runs/cifar10-tiny [--ratios 0.43,0.30]
  .venv/bin/python benchmarks/search_table.py runs/cifar10-tiny/r0.43-*
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

import torch

from structprune.data import load_dataset
from structprune.metrics import size_metrics
from structprune.models import create
from structprune.runfolder import load_run, save_run
from structprune.search.driver import SearchConfig, search_run
from structprune.sparsity.granularity import Granularity
from structprune.sparsity.method import SEARCH_METHODS, Method
from structprune.train import TrainConfig, evaluate, train

DATA = Path(__file__).resolve().parents[1] / "../shared/data"
METHODS = SEARCH_METHODS


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/cifar10-tiny")
    ap.add_argument("--ratios", default="0.43")
    ap.add_argument("--methods", default=",".join(m.value for m in METHODS))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    data = load_dataset("cifar10", DATA, val_size=1000)
    small = replace(data, train=data.train.subset(10000), augment=False)
    dense_dir = out / "dense"
    if not (dense_dir / "model.safetensors").exists():
        torch.manual_seed(0)
        model = create("paper-cifar10", in_channels=3, input_size=32, bn=True)
        train(model, small, TrainConfig(epochs=1, lr=0.05), augment=False)
        model.eval()
        metrics = {"val_mcr": evaluate(model, data.val).mcr, "test_mcr": evaluate(model, data.test).mcr,
                   **size_metrics(model)}
        save_run(dense_dir, model, None, metrics, {"dataset": "cifar10", "train_images": 10000, "epochs": 1,
                                                   "lr": 0.05, "augment": False})
    for ratio in (float(r) for r in args.ratios.split(",")):
        for method in (Method.parse(m, METHODS) for m in args.methods.split(",")):
            target = out / f"r{ratio:.2f}-{method}"
            if (target / "metrics.json").exists():
                continue
            cfg = SearchConfig(method=method, granularities=(Granularity.CHANNEL,), ratio=ratio, particles=4, generations=2,
                               score_images=100, check_images=200, step_epochs=0, final_epochs=1, final_images=2000,
                               lr=0.01, seed=0)
            search_run(load_run(dense_dir), data, cfg, target, extra_config={"command": "benchmarks/search_cifar10_tiny.py"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
