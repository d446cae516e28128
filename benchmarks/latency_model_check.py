"""How well a measured latency model (structprune.latency_model) predicts real pruned networks.

For a run folder (or a zoo model name, random weights), the latency model is measured, then N random candidate
networks are drawn: each channel group keeps a random multiple of --round-to maps (random ones), optionally with
kernel blocks of a random G (--kernel-blocks, the fast form: one grouped convolution per layer) and a random shared
rectangular intra pattern per layer (--intra, the fast form). Each candidate is compacted, its predicted time read
from the model (`LatencyModel.network_ms` of its layers' forms) and its real time measured with structprune.bench
(same runtime, batch and threads; all candidates timed together, interleaved rounds, medians). The JSON holds
predicted vs measured ms per candidate and the median and max |relative error|; the target is every candidate
within 10 %.

    flock /tmp/structprune-heavy.lock .venv/bin/python benchmarks/latency_model_check.py paper-cifar10 \\
        --runtime onnxruntime --batch 1 --threads 2 --json benchmarks/results/latency_model_check.json
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from structprune.arch import input_shape_of
from structprune.compact.compaction import compact
from structprune.errors import StructpruneError
from structprune.jsonio import write_json_atomic
from structprune.latency_model import LatencyModel, measure_latency_model, network_forms
from structprune.latency_model.network import network_times
from structprune.models import create
from structprune.output import claim_file
from structprune.sparsity.channel_groups import ChannelGroups, find_channel_groups
from structprune.sparsity.granularity import Granularity, KernelForm, KernelStructure
from structprune.sparsity.masks import NetworkMask
from structprune.sparsity.selection import SelectionConfig, select

INTRA_RATIOS = (1 / 3, 2 / 3)  # 6 taps (a 2×3 block) or 3 taps (a 3×1 column or 1×3 row) of a 3×3 kernel


def load_model(source: str) -> nn.Module:
    """A run folder's network, or a zoo model with random weights."""
    if Path(source).is_dir():
        from structprune.runfolder import load_run

        return load_run(source).model.eval()
    torch.manual_seed(0)
    return create(source).eval()


def random_mask(model: nn.Module, groups: ChannelGroups, rng: random.Random, round_to: int, blocks: int,
                intra: float | None) -> NetworkMask:
    """Random kept maps per channel group (multiples of round_to · blocks), then kernel blocks and intra patterns."""
    mask = NetworkMask()
    multiple = round_to * blocks
    for group in groups:
        if group.linear:
            continue
        choices = list(range(multiple, group.size + 1, multiple)) or [group.size]
        kept = rng.choice(choices)
        keep = torch.zeros(group.size, dtype=torch.bool)
        keep[rng.sample(range(group.size), kept)] = True
        mask.layer(group.root, model.get_submodule(group.root)).keep_out = keep
    if blocks > 1:
        cfg = SelectionConfig(kernel=KernelForm(KernelStructure.BLOCKS, blocks), round_to=round_to)
        mask = select(model, [Granularity.KERNEL], [1 - 1 / blocks], cfg, groups=groups, base=mask)
    if intra is not None:
        cfg = SelectionConfig(intra_fast=True, intra_shared=True)
        mask = select(model, [Granularity.INTRA], [intra], cfg, groups=groups, base=mask)
    return mask


def draw_candidates(model: nn.Module, names: list[str], count: int, seed: int, round_to: int, kernel_blocks: bool,
                    intra: bool) -> list[tuple[str, nn.Module, dict[str, Any]]]:
    """(name, compact network, description) of `count` random candidates whose layers all have a LayerForm."""
    rng = random.Random(seed)
    sample = torch.randn(2, *input_shape_of(model))
    groups = find_channel_groups(model, sample)
    out: list[tuple[str, nn.Module, dict[str, Any]]] = []
    tries = 0
    while len(out) < count:
        tries += 1
        if tries > 5 * count:
            raise StructpruneError(f"only {len(out)} of {count} random candidates compact into predictable forms")
        blocks = rng.choice((1, 2, 4)) if kernel_blocks else 1
        ratio = rng.choice((None, *INTRA_RATIOS)) if intra else None
        try:
            net = compact(model, random_mask(model, groups, rng, round_to, blocks, ratio), sample, groups).eval()
            forms = network_forms(net, names)
        except StructpruneError as exc:
            logging.getLogger(__name__).warning("candidate skipped: %s", exc)
            continue
        out.append((f"candidate-{len(out)}", net, {"kernel_blocks": blocks, "intra_ratio": ratio, "forms": {
            n: [f.kept_in, f.kept_out, f.groups, list(f.taps) if f.taps else None] for n, f in forms.items()}}))
    return out


def check(args: argparse.Namespace) -> dict[str, Any]:
    model = load_model(args.source)
    shape = input_shape_of(model)
    latency = measure_latency_model(model, shape, args.runtime, args.batch, args.threads, round_to=args.round_to,
                                    min_run_time=args.min_run_time, network_rounds=args.rounds,
                                    network_seconds=args.sample_seconds)
    names = list(latency.layers)
    candidates = draw_candidates(model, names, args.candidates, args.seed, args.round_to, args.kernel_blocks,
                                 args.intra)
    measured = network_times({"dense": model, **{name: net for name, net, _ in candidates}}, shape, args.runtime,
                             args.batch, args.threads, args.rounds, args.sample_seconds)
    rows = []
    for name, net, info in candidates:
        forms = network_forms(net, names)
        predicted = latency.network_ms(forms)
        rows.append({"name": name, "predicted_ms": predicted, "measured_ms": measured[name],
                     "error": predicted / measured[name] - 1, "fixed_part_ms": latency.fixed_part(forms),
                     "activation_fraction": latency.volume_fraction(forms), **info})
    errors = [abs(r["error"]) for r in rows]
    return {
        "format": "structprune-latency-check/1", "source": args.source, "runtime": args.runtime, "batch": args.batch,
        "threads": args.threads, "round_to": args.round_to, "seed": args.seed,
        "dense": {"predicted_ms": latency.dense_ms(), "measured_ms": measured["dense"],
                  "fixed_ms": latency.fixed_ms, "fixed_share": latency.fixed_share},
        "candidates": rows, "median_abs_error": statistics.median(errors), "max_abs_error": max(errors),
        "within_10_percent": sum(e <= 0.10 for e in errors), "latency_model": latency.to_json(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="run folder, or zoo model name (random weights)")
    parser.add_argument("--runtime", choices=("onnxruntime", "eager"), default="onnxruntime")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=20, help="random candidate networks (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--kernel-blocks", action="store_true", help="random kernel blocks G in 1, 2, 4")
    parser.add_argument("--intra", action="store_true", help="random shared rectangular intra pattern per layer")
    parser.add_argument("--min-run-time", type=float, default=0.02, help="seconds per timed layer shape")
    parser.add_argument("--rounds", type=int, default=7, help="structprune.bench rounds for whole networks")
    parser.add_argument("--sample-seconds", type=float, default=0.1)
    parser.add_argument("--json", required=True, help="output file")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.candidates < 1:
            raise StructpruneError("--candidates must be at least 1")
        out = claim_file(args.json, overwrite=args.overwrite)
        result = check(args)
    except StructpruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_json_atomic(out, result)
    LatencyModel.from_json(result["latency_model"])  # the written model reads back
    print(json.dumps({k: result[k] for k in ("median_abs_error", "max_abs_error", "within_10_percent")}))
    for row in result["candidates"]:
        print(f"{row['name']}: predicted {row['predicted_ms']:.3f} ms, measured {row['measured_ms']:.3f} ms "
              f"({100 * row['error']:+.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
