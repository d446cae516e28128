"""Cost of scoring one particle with cached activations of the traced graph versus a full forward pass.

For each model (default resnet20 and mobilenetv2, random weights) and each granularity (default channel), the
early, middle and late unit of the search (first, middle and last channel group, or conv), in one process,
interleaved round by round, with torch.utils.benchmark:
  forward    one plain forward pass of the unpruned network over the score images
  full       one particle scored by FullForwardScorer: its mask written into the weights, full forward, restored
  cached     one particle scored by FxCachedScorer: its mask written into the tail's weights, only the tail run
             on the kept frontier values (scoring_fx.py)
  build      building the cache once per rung (tracing split, head pass over the images); not per particle
  decode     turning one particle into its whole-network mask (both scorings pay it)
  chain      (only where the search uses the chain's cache) one particle scored by scoring.LayerScorer
Each row also says how the search scores that rung (Rung.scorer: `search_scoring`, `scoring_reason`, the tail's
share of the conv MACs) and what one particle costs that way (`chosen_s`: full, cached or chain). Reports the
medians over rounds, full / cached (the speed-up of cached scoring per particle) and chosen / forward.

  PYTHONPATH=$PWD python benchmarks/particle_cost.py --images 100 --threads 2 --rounds 5 \
      --json benchmarks/results/particle-cost/cifar-random-100-2t.json --overwrite

Images: CIFAR-sized random images (default), or the first N validation images of a dataset (--data cifar10).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

import numpy as np
import torch
from torch.utils.benchmark import Timer

from structprune.data import load_dataset
from structprune.errors import StructpruneError
from structprune.jsonio import write_json_atomic
from structprune.models import create
from structprune.output import claim_file
from structprune.search.config import SearchConfig
from structprune.search.network import SearchNet, conv_names
from structprune.search.scoring import ScoreSet
from structprune.search.scoring_full import SCORING_CACHED, SCORING_FULL, SCORING_FX, FullForwardScorer
from structprune.search.scoring_fx import FxCachedScorer, tail_conv_share
from structprune.search.steps import make_steps
from structprune.sparsity.granularity import Granularity
from structprune.sparsity.masks import NetworkMask

POSITIONS = ("early", "middle", "late")


def score_images(data: str, count: int, seed: int) -> ScoreSet:
    if data == "random":
        g = torch.Generator().manual_seed(seed)
        return ScoreSet(torch.randn(count, 3, 32, 32, generator=g), torch.randint(0, 10, (count,), generator=g))
    val = load_dataset(data).val
    return ScoreSet(val.x[:count], val.y[:count])


def cases(name: str, grans: list[Granularity], data: ScoreSet, seed: int) -> list[dict[str, Any]]:
    """One case per (granularity, position): the rung, one particle's mask and both scorers."""
    torch.manual_seed(seed)
    model = create(name, num_classes=10, in_channels=data.x.shape[1], input_size=data.x.shape[-1]).eval()
    net = SearchNet(model)
    out = []
    for step in make_steps(net, SearchConfig(ratio=0.5, granularities=tuple(grans))):
        units = step.units(conv_names(model))
        for position, unit in zip(POSITIONS, (units[0], units[len(units) // 2], units[-1]), strict=True):
            rung = step.rungs(NetworkMask(), unit)[0]
            particle = rung.space.sample(np.random.default_rng(seed), 1)
            mask = rung.network_masks(particle)
            traced = net.traced()

            def build(rung=rung, traced=traced):
                return FxCachedScorer(model, net.applier, traced, rung.touched_modules(), rung.base, data,
                                      varying=rung.varying_layers())

            cached = build()
            full = FullForwardScorer(model, net.applier, data)
            chosen = rung.scorer(data, 1e-3, None)  # what the search would score this rung with, and why
            fns = {"forward": lambda model=model: model(data.x),
                   "full": lambda full=full, mask=mask: full.mcr_and_ce(mask),
                   "cached": lambda cached=cached, mask=mask: cached.mcr_and_ce(mask),
                   "build": build,
                   "decode": lambda rung=rung, particle=particle: rung.network_masks(particle)}
            if chosen.how == SCORING_CACHED:
                fns["chain"] = lambda chosen=chosen, particle=particle: chosen.scorer.mcr_and_ce(chosen.decode(particle))
            out.append({"model": name, "granularity": step.granularity.value, "position": position, "unit": unit,
                        "search_scoring": chosen.how, "scoring_reason": chosen.why,
                        "tail_conv_share": tail_conv_share(cached.split, net.layer_macs(tuple(data.x.shape[1:]))),
                        "tail_nodes": cached.split.tail_nodes, "graph_nodes": cached.split.nodes,
                        "frontier_values": len(cached.split.frontier), "fns": fns})
            same = cached.mcr_and_ce(mask), full.mcr_and_ce(mask)
            if not np.array_equal(same[0][0], same[1][0]):
                raise StructpruneError(f"{name} {unit}: cached and full scores differ")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20,mobilenetv2")
    p.add_argument("--granularities", default="channel", help="comma-separated: channel, kernel, intra")
    p.add_argument("--images", type=int, default=100, help="score images per particle")
    p.add_argument("--data", default="random", help="'random' (CIFAR-sized) or a dataset name, e.g. cifar10")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min-run-time", type=float, default=0.5, help="seconds per measurement and round")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    try:
        out = claim_file(args.json, overwrite=args.overwrite) if args.json else None
        grans = [Granularity(g) for g in args.granularities.split(",") if g]
        torch.set_num_threads(args.threads)
        data = score_images(args.data, args.images, args.seed)
        rows = [case for name in args.models.split(",") if name for case in cases(name, grans, data, args.seed)]
    except (StructpruneError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    times: list[dict[str, list[float]]] = [{k: [] for k in row["fns"]} for row in rows]
    with torch.no_grad():
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
            for row, per in zip(rows, times, strict=True):
                for kind, fn in row["fns"].items():
                    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=args.threads)
                    per[kind].append(timer.blocked_autorange(min_run_time=args.min_run_time).median)
    for row, per in zip(rows, times, strict=True):
        del row["fns"]
        for kind, values in per.items():
            row[f"{kind}_s"] = statistics.median(values)
            row[f"{kind}_s_min"], row[f"{kind}_s_max"] = min(values), max(values)
        row["full_over_cached"] = row["full_s"] / row["cached_s"]
        row["forward_over_cached"] = row["forward_s"] / row["cached_s"]
        row["chosen_s"] = row[{SCORING_FULL: "full_s", SCORING_FX: "cached_s", SCORING_CACHED: "chain_s"}[row["search_scoring"]]]
        row["chosen_over_forward"] = row["chosen_s"] / row["forward_s"]
    result = {"command": " ".join(["python", "benchmarks/particle_cost.py", *sys.argv[1:]]), "images": args.images,
              "data": args.data, "threads": args.threads, "rounds": args.rounds, "min_run_time": args.min_run_time,
              "torch": torch.__version__, "rows": rows}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, result)
    print(f"{args.images} images, {args.threads} threads, median of {args.rounds} rounds")
    print("| model | scale | unit | tail nodes | tail conv MACs | search scores with | forward ms | full ms | cached ms "
          "| full / cached | chosen ms | chosen / forward |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['granularity']} | {r['position']} {r['unit']} | {r['tail_nodes']}/{r['graph_nodes']} | "
              f"{r['tail_conv_share']:.0%} | {r['search_scoring']} | {r['forward_s'] * 1e3:.2f} | {r['full_s'] * 1e3:.2f} | "
              f"{r['cached_s'] * 1e3:.2f} | {r['full_over_cached']:.2f} | {r['chosen_s'] * 1e3:.2f} | "
              f"{r['chosen_over_forward']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
