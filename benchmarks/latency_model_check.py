"""How well a measured latency model (structprune.latency_model) predicts real pruned networks.

For a run folder (or a zoo model name, random weights), the latency model is measured (its per-convolution grids
and its calibration on the dense network, uniformly pruned copies and copies with kernel blocks and intra shapes,
timed whole), then N random candidate networks are drawn: each channel group keeps a random multiple of --round-to
maps (random ones), optionally with kernel blocks of a random G among 1 and --kernel-blocks (the fast form: one
grouped convolution per layer) and a random shared rectangular intra pattern per layer (--intra, the fast form);
or, with --search-space FORMS, random particles of the target search's own space (the networks `prune
--target-speedup` can choose). Each candidate is compacted, its predicted time read from the model
(`LatencyModel.network_ms` of its layers' forms) and its real time measured with structprune.bench (same runtime,
batch and threads; the dense network and all candidates timed together, interleaved rounds, medians; with
--repeats N, in N separate bench runs, each network's median ms and its median speed-up over the dense network of
the same run taken over them; --calibration-repeats and --grid-repeats time the model's calibration networks in
several bench runs and its layer grids in several passes, see measure_latency_model). The JSON holds, per
candidate, predicted vs measured ms, the sum of its convolutions' standalone times and predicted vs measured
speed-up over the dense network; overall, the median and max |relative error| and the count within 10 % (the
target: all), the same per candidate kind (kernel blocks, intra ratio), and the best line α·Σ + β +
γ_blocks·n_blocks + γ_taps·n_taps fitted on the candidates themselves (how far the calibration's form can go); per
candidate also its counts of convolutions with kernel blocks and intra shapes (layers_blocked, layers_tapped).

    flock /tmp/structprune-heavy.lock .venv/bin/python benchmarks/latency_model_check.py /work/runs-cifar/resnet20-dense \\
        --runtime onnxruntime --batch 1 --threads 2 --kernel-blocks 2 --intra --json out.json
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

import numpy as np
import torch
from torch import nn

from structprune.arch import input_shape_of
from structprune.compact.compaction import compact
from structprune.errors import StructpruneError
from structprune.jsonio import write_json_atomic
from structprune.latency_model import CalibrationPoint, LatencyModel, fit_calibration, measure_latency_model, network_forms
from structprune.latency_model.measure import DEFAULT_GRID_POINTS
from structprune.latency_model.network import CALIBRATION_KEEPS, network_times
from structprune.models import create
from structprune.output import claim_file
from structprune.sparsity.channel_groups import ChannelGroups, find_channel_groups
from structprune.sparsity.fast_forms import round_to_or_default
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


def draw_candidates(model: nn.Module, names: list[str], count: int, seed: int, round_to: int,
                    kernel_blocks: tuple[int, ...], intra: bool) -> list[tuple[str, nn.Module, dict[str, Any]]]:
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
        blocks = rng.choice((1, *kernel_blocks))
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


def draw_search_candidates(model: nn.Module, names: list[str], count: int, seed: int, round_to: int,
                           forms: str) -> list[tuple[str, nn.Module, dict[str, Any]]]:
    """(name, compact network, description) of `count` random particles of the target search's own space
    (structprune.search.target_space with `forms`): the networks a target search can choose."""
    from structprune.search.target_forms import parse_forms
    from structprune.search.target_space import DEFAULT_MIN_KEEP, TargetSpace

    sample = torch.randn(2, *input_shape_of(model))
    groups = find_channel_groups(model, sample)
    space = TargetSpace(model, groups, round_to, DEFAULT_MIN_KEEP, parse_forms(forms))
    rng = np.random.default_rng(seed)
    out: list[tuple[str, nn.Module, dict[str, Any]]] = []
    for _ in range(count):
        particle = rng.integers(0, space.k, size=space.n).astype(np.int16)
        chosen = space.layer_forms(particle)
        net = compact(model, space.mask(particle), sample, groups).eval()
        forms_now = network_forms(net, names)
        blocked = max((f.groups for f in chosen.values()), default=1)
        shaped = sum(f.shape is not None for f in chosen.values())
        out.append((f"candidate-{len(out)}", net, {
            "kernel_blocks": blocked, "intra_ratio": shaped / max(1, len(space.tap_layers)) if shaped else None,
            "particle": particle.tolist(),
            "forms": {n: [f.kept_in, f.kept_out, f.groups, list(f.taps) if f.taps else None] for n, f in forms_now.items()}}))
    return out


def _errors(rows: list[dict[str, Any]], key: str = "error") -> dict[str, Any]:
    errors = [abs(r[key]) for r in rows]
    return {"count": len(rows), "median_abs_error": statistics.median(errors), "max_abs_error": max(errors),
            "within_10_percent": sum(e <= 0.10 for e in errors)}


def _best_line(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """α, β and the γ's fitted on the candidates themselves (as the calibration fits them), and their errors."""
    c = fit_calibration([CalibrationPoint(r["name"], 1.0, r["conv_ms"], r["measured_ms"], r["layers_blocked"],
                                          r["layers_tapped"]) for r in rows])
    errors = [{"error": c.predict(r["conv_ms"], r["layers_blocked"], r["layers_tapped"]) / r["measured_ms"] - 1}
              for r in rows]
    return {"alpha": c.alpha, "beta_ms": c.beta, "gamma_blocks_ms": c.gamma_blocks, "gamma_taps_ms": c.gamma_taps,
            **_errors(errors)}


def check(args: argparse.Namespace) -> dict[str, Any]:
    model = load_model(args.source)
    shape = input_shape_of(model)
    blocks = tuple(dict.fromkeys(g for g in args.kernel_blocks or () if g > 1))
    latency = measure_latency_model(model, shape, args.runtime, args.batch, args.threads, round_to=args.round_to,
                                    groups=tuple(dict.fromkeys((1, 2, 4, *blocks))), min_run_time=args.min_run_time,
                                    network_rounds=args.rounds, network_seconds=args.sample_seconds,
                                    calibration_keeps=tuple(args.calibration_keeps), points=args.points,
                                    calibration_repeats=args.calibration_repeats, grid_repeats=args.grid_repeats)
    names = list(latency.layers)
    if args.search_space:
        candidates = draw_search_candidates(model, names, args.candidates, args.seed, args.round_to, args.search_space)
    else:
        candidates = draw_candidates(model, names, args.candidates, args.seed, args.round_to, blocks, args.intra)
    runs = [network_times({"dense": model, **{name: net for name, net, _ in candidates}}, shape, args.runtime,
                          args.batch, args.threads, args.rounds, args.sample_seconds) for _ in range(args.repeats)]
    measured = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
    dense_predicted, dense_measured = latency.dense_ms(), measured["dense"]
    rows = []
    for name, net, info in candidates:
        forms = network_forms(net, names)
        predicted = latency.network_ms(forms)
        blocked, tapped = latency.form_counts(forms)
        # each run's speed-up against the dense network timed beside it, then the median over runs
        speedup = (dense_predicted / predicted, statistics.median(run["dense"] / run[name] for run in runs))
        rows.append({"name": name, "predicted_ms": predicted, "measured_ms": measured[name],
                     "error": predicted / measured[name] - 1, "conv_ms": latency.conv_ms(forms),
                     "layers_blocked": blocked, "layers_tapped": tapped,
                     "predicted_speedup": speedup[0], "measured_speedup": speedup[1],
                     "speedup_error": speedup[0] / speedup[1] - 1, **info})
    kinds: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        ratio = row["intra_ratio"]
        kinds.setdefault(f"G={row['kernel_blocks']}, intra {'none' if ratio is None else f'{ratio:.2f}'}",
                         []).append(row)
    c = latency.coefficients()
    return {
        "format": "structprune-latency-check/3", "source": args.source, "runtime": args.runtime, "batch": args.batch,
        "threads": args.threads, "round_to": args.round_to, "seed": args.seed, "kernel_blocks": list(blocks),
        "intra": args.intra, "search_space": args.search_space, "min_run_time": args.min_run_time, "points": args.points,
        "rounds": args.rounds, "sample_seconds": args.sample_seconds, "repeats": args.repeats,
        "calibration_repeats": args.calibration_repeats, "grid_repeats": args.grid_repeats, "measured_runs": runs,
        "layer_timing": "profiled kernels" if args.runtime == "onnxruntime" else "module call",
        "dense": {"predicted_ms": dense_predicted, "measured_ms": dense_measured,
                  "calibration_ms": latency.network_dense_ms, "conv_ms": latency.conv_ms({}),
                  "fixed_ms": latency.fixed_ms, "alpha": c.alpha, "beta_ms": c.beta,
                  "gamma_blocks_ms": c.gamma_blocks, "gamma_taps_ms": c.gamma_taps,
                  "error": dense_predicted / dense_measured - 1},
        "calibration": [p.to_json() for p in latency.calibration],
        "candidates": rows, **{k: v for k, v in _errors(rows).items() if k != "count"},
        "speedup": _errors(rows, "speedup_error"), "by_kind": {k: _errors(v) for k, v in sorted(kinds.items())},
        "best_line_on_candidates": _best_line(rows), "latency_model": latency.to_json(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="run folder, or zoo model name (random weights)")
    parser.add_argument("--runtime", choices=("onnxruntime", "eager"), default="onnxruntime")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=20, help="random candidate networks (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--round-to", type=int, default=None,
                        help="kept maps in multiples of N (default: this CPU's channel block, as the target search)")
    parser.add_argument("--search-space", default=None, metavar="FORMS",
                        help="draw the candidates from the target search's own space with these forms (e.g. "
                             "channel,blocks,intra) instead of uniform blocks and patterns")
    parser.add_argument("--kernel-blocks", type=int, nargs="*", metavar="G",
                        help="random kernel blocks: each candidate takes G among 1 and these (2 4 when none given)")
    parser.add_argument("--intra", action="store_true", help="random shared rectangular intra pattern per layer")
    parser.add_argument("--calibration-keeps", type=float, nargs="+", default=list(CALIBRATION_KEEPS), metavar="F",
                        help="shares of the maps kept by the calibration networks (default %(default)s; 1: the dense "
                             "network alone)")
    parser.add_argument("--min-run-time", type=float, default=0.02, help="seconds per timed layer shape")
    parser.add_argument("--points", type=int, default=DEFAULT_GRID_POINTS,
                        help=f"kept-map counts per axis of each plain convolution's grid (default {DEFAULT_GRID_POINTS})")
    parser.add_argument("--rounds", type=int, default=7, help="structprune.bench rounds for whole networks")
    parser.add_argument("--sample-seconds", type=float, default=0.3,
                        help="structprune.bench seconds per round of one whole network (default 0.3)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="time the candidates beside the dense network in this many separate bench runs (fresh "
                             "sessions each) and take each network's median ms and median speed-up over them")
    parser.add_argument("--calibration-repeats", type=int, default=1,
                        help="time the latency model's calibration networks in this many separate bench runs and fit "
                             "on each network's median ms (default 1)")
    parser.add_argument("--grid-repeats", type=int, default=1,
                        help="passes over every layer's grid shapes, each shape's fastest time kept (default 1)")
    parser.add_argument("--json", required=True, help="output file")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if min(args.candidates, args.repeats, args.calibration_repeats, args.grid_repeats) < 1:
            raise StructpruneError("--candidates, --repeats, --calibration-repeats and --grid-repeats must be at least 1")
        if args.kernel_blocks is not None and not args.kernel_blocks:
            args.kernel_blocks = [2, 4]
        if any(g < 1 for g in args.kernel_blocks or ()):
            raise StructpruneError("--kernel-blocks takes positive block counts G")
        args.round_to = round_to_or_default(args.round_to)
        out = claim_file(args.json, overwrite=args.overwrite)
        result = check(args)
    except StructpruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_json_atomic(out, result)
    LatencyModel.from_json(result["latency_model"])  # the written model reads back
    print(json.dumps({k: result[k] for k in ("median_abs_error", "max_abs_error", "within_10_percent")}))
    dense, best = result["dense"], result["best_line_on_candidates"]
    print(f"dense: predicted {dense['predicted_ms']:.3f} ms, measured {dense['measured_ms']:.3f} ms; alpha "
          f"{dense['alpha']:.3f}, beta {dense['beta_ms']:+.3f} ms, gamma blocks {dense['gamma_blocks_ms']:+.4f} ms, "
          f"gamma taps {dense['gamma_taps_ms']:+.4f} ms")
    print(f"best line on the candidates: alpha {best['alpha']:.3f}, beta {best['beta_ms']:+.3f} ms, gamma blocks "
          f"{best['gamma_blocks_ms']:+.4f} ms, gamma taps {best['gamma_taps_ms']:+.4f} ms; median error "
          f"{100 * best['median_abs_error']:.1f} %")
    for row in result["candidates"]:
        print(f"{row['name']}: predicted {row['predicted_ms']:.3f} ms, measured {row['measured_ms']:.3f} ms "
              f"({100 * row['error']:+.1f} %), speed-up {row['predicted_speedup']:.2f}x predicted, "
              f"{row['measured_speedup']:.2f}x measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
