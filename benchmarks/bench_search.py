"""Cost of scoring a candidate mask versus one plain forward pass, and search throughput, on paper-mnist.

For every conv layer and granularity, in one process and interleaved round by round:
  plain     one forward pass of the unpruned network over the validation subset (the reference cost)
  masked    one candidate scored the naive way: weights masked in place, full forward, weights restored
  cached    P candidates scored by LayerScorer (cached activations, particles batched), cost per candidate
Reports medians over rounds of cost / plain and candidates per second.

  .venv/bin/python benchmarks/bench_search.py --images 1000 --particles 12 --rounds 5 [--run runs/mnist-dense]

Weights do not change the cost, so without --run a freshly initialised paper-mnist is timed. Images: the
first N of the MNIST validation split (../shared/data/mnist.npz), or random images if it is absent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from structprune.data import load_dataset
from structprune.models import create
from structprune.runfolder import load_run
from structprune.search.scoring import (
    LayerScorer,
    ScoreSet,
    channel_masks_from_bits,
    conv_layers,
    intra_masks_from_choices,
    kernel_masks_from_bits,
)
from structprune.sparsity.granularity import Granularity, IntraPattern
from structprune.sparsity.masking import MaskApplier
from structprune.sparsity.masks import NetworkMask
from structprune.train import evaluate

DATA = Path(__file__).resolve().parents[1] / "../shared/data"


def seconds(fn, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def candidates(model, layer: str, g: Granularity, count: int, rng: np.random.Generator):
    """`count` random half-ratio candidates: scorer masks, and the NetworkMask of the first (for 'masked')."""
    conv = model.get_submodule(layer)
    shape = tuple(conv.weight.shape)
    if g is Granularity.CHANNEL:
        bits = np.zeros((count, shape[0]), dtype=np.int16)
        for row in bits:
            row[rng.choice(shape[0], shape[0] // 2, replace=False)] = 1
        masks = channel_masks_from_bits(bits, torch.ones(shape[0], dtype=torch.bool))
        net = NetworkMask({layer: _layer(shape, keep_out=masks[0])})
    elif g is Granularity.KERNEL:
        n = shape[0] * shape[1]
        bits = np.zeros((count, n), dtype=np.int16)
        for row in bits:
            row[rng.choice(n, n // 2, replace=False)] = 1
        masks = kernel_masks_from_bits(bits, torch.ones(shape[0], shape[1], dtype=torch.bool), shape)
        net = NetworkMask({layer: _layer(shape, keep_kernel=torch.from_numpy(bits[0]).bool().view(shape[0], shape[1]))})
    else:
        patterns = IntraPattern.with_taps(shape[2] * shape[3], (shape[2] * shape[3] + 1) // 2)
        choices = rng.integers(0, len(patterns), (count, shape[1])).astype(np.int16)
        masks = intra_masks_from_choices(choices, patterns, shape)
        net = NetworkMask({layer: _layer(shape, intra=[patterns[c] for c in choices[0]])})
    return masks, net


def _layer(shape, **fields):
    from structprune.sparsity.masks import LayerMask

    return LayerMask(shape=shape, **fields)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None, help="trained run folder (default: freshly initialised paper-mnist)")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--particles", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_run(args.run).model if args.run else create("paper-mnist", in_channels=1, input_size=28)
    model.eval()
    if (DATA / "mnist.npz").exists():
        val = load_dataset("mnist", DATA).val.subset(args.images)
        source = "MNIST validation images"
    else:
        from structprune.data import Split

        val = Split(torch.randn(args.images, 1, 28, 28), torch.randint(0, 10, (args.images,)))
        source = "random images (mnist.npz not found)"
    data = ScoreSet(val.x, val.y)
    applier = MaskApplier(model)
    rng = np.random.default_rng(0)
    cases = [(layer, g) for layer in conv_layers(model) for g in Granularity]
    setups = {}
    for layer, g in cases:
        masks, net = candidates(model, layer, g, args.particles, rng)
        setups[(layer, g)] = (LayerScorer(model, layer, g, data), masks, net)
    plain_t, masked_t, cached_t = [], {c: [] for c in cases}, {c: [] for c in cases}
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
        plain_t.append(seconds(lambda: evaluate(model, val)))
        for case in cases:
            scorer, masks, net = setups[case]

            def masked_once(net=net):
                with applier.applied(net):
                    evaluate(model, val)

            masked_t[case].append(seconds(masked_once))
            cached_t[case].append(seconds(lambda scorer=scorer, masks=masks: scorer.score_masks(masks)) / args.particles)
    plain = statistics.median(plain_t)
    rows = []
    for layer, g in cases:
        masked = statistics.median(masked_t[(layer, g)])
        cached = statistics.median(cached_t[(layer, g)])
        rows.append({"layer": layer, "granularity": g.value, "masked_ratio": masked / plain, "cached_ratio": cached / plain,
                     "cached_particles_per_s": 1.0 / cached, "masked_particles_per_s": 1.0 / masked})
    print(f"paper-mnist, {args.images} {source}, {args.particles} particles per batch, {args.threads} threads, "
          f"median of {args.rounds} interleaved rounds; plain forward {plain * 1000:.0f} ms")
    print("| layer | scale | masked full forward / plain | cached, batched / plain | particles/s (cached) "
          "| particles/s (masked) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['layer']} | {row['granularity']} | {row['masked_ratio']:.2f} | {row['cached_ratio']:.2f} | "
              f"{row['cached_particles_per_s']:.1f} | {row['masked_particles_per_s']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"plain_s": plain, "rows": rows, "args": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
