"""The target options of `structprune prune`: parsed here, run by structprune.stages.target.

  structprune prune DIR --target-macs 3 --out DIR2                 # 3x fewer MACs
  structprune prune DIR --target-speedup 2 --runtime onnxruntime --batch 1 --threads 1 --out DIR2
  structprune prune DIR --target-latency 0.8 --out DIR2            # milliseconds per batch
  structprune prune DIR --target-macs 3 --target-forms channel,blocks,intra --out DIR2   # also kernel blocks, intra

The structure (kept maps of every channel group) is searched by the particle filter (--method epf for its
evolutionary variant) with --particles, --generations, --score-images and --seed of the search options.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from structprune.cli.common import finite_float, non_negative_int, positive_int
from structprune.errors import StructpruneError
from structprune.output import Output
from structprune.search.target_space import DEFAULT_MAP_IMPORTANCE, DEFAULT_MIN_KEEP, MAP_IMPORTANCE
from structprune.sparsity.fast_forms import round_to_or_default
from structprune.sparsity.method import Method

TARGET_FLAGS = ("target_macs", "target_speedup", "target_latency")
# options of other pruning modes that a target run would silently ignore
NOT_WITH_TARGET = {"ratio": "--ratio", "max": "--max", "schedule": "--schedule", "linear_ratio": "--linear-ratio",
                   "latency_table": "--latency-table", "layers": "--layers"}


def keep_fraction(text: str) -> float:
    """A number in (0, 1]."""
    value = finite_float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be in (0, 1]")
    return value


def add_target_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prune to a target (a structure search over the kept maps of every channel group)")
    g.add_argument("--target-macs", type=finite_float, default=None, metavar="R", help="R times fewer MACs (R > 1)")
    g.add_argument("--target-speedup", type=finite_float, default=None, metavar="S",
                   help="S times faster (S > 1), predicted by a per-layer latency model measured on this machine, then "
                   "verified by timing the compact network (the budget tightens and the search reruns, at most twice, "
                   "if the measured speed-up falls short by more than 5%%)")
    g.add_argument("--target-latency", type=finite_float, default=None, metavar="MS",
                   help="milliseconds per batch, predicted and verified as --target-speedup")
    g.add_argument("--runtime", choices=("onnxruntime", "eager"), default="onnxruntime",
                   help="speed and latency targets: the runtime timed (default onnxruntime)")
    g.add_argument("--batch", type=positive_int, default=1, help="speed and latency targets: images per call (default 1)")
    g.add_argument("--min-keep", type=keep_fraction, default=DEFAULT_MIN_KEEP, metavar="F",
                   help="the ladder's floor: every channel group keeps at least this fraction of its maps (default "
                   f"{DEFAULT_MIN_KEEP:g})")
    g.add_argument("--target-forms", default="channel", metavar="FORMS",
                   help="what the search chooses: channel (kept maps per channel group; the default) or "
                   "channel,blocks,intra (also, per conv, kernel blocks G=1/2/4 and an intra-kernel shape 2x3/3x1/1x3 "
                   "where they apply; the result compacts into grouped and smaller dense convolutions)")
    g.add_argument("--importance", choices=MAP_IMPORTANCE, default=DEFAULT_MAP_IMPORTANCE,
                   help="which maps of a channel group go: tp-l2 (Torch-Pruning's group L2 over every layer of the "
                   "coupled group, batch norms and the next layers' input weights included; the default) or l1 (the "
                   "filters' L1)")
    g.add_argument("--latency-model", default=None, metavar="FILE",
                   help="speed and latency targets: reuse the latency model an earlier target run of the same network "
                        "saved (its latency-model.json; same --runtime, --batch, --threads) instead of measuring one")
    g.add_argument("--finalists", type=non_negative_int, default=0, metavar="K",
                   help="choose among the search's K best structures (and its uniform and global-importance "
                   "starts) by a short fine-tune of each, scored on validation images the search did not use "
                   "(default 0: take the search's best)")
    g.add_argument("--finalist-images", type=positive_int, default=5000, metavar="N",
                   help="with --finalists: training images of each finalist's fine-tune (one pass; default 5000)")
    g.add_argument("--no-verify", action="store_true",
                   help="speed and latency targets: trust the latency model, do not time the compact network")


def wants_target(args: argparse.Namespace) -> bool:
    return any(getattr(args, name) is not None for name in TARGET_FLAGS)


def check_target_args(args: argparse.Namespace):
    """The Target asked for, refused in one line if it conflicts with another target or pruning mode."""
    from structprune.search.target_search import Target

    target = Target.of(args.target_macs, args.target_speedup, args.target_latency)
    clashing = [flag for name, flag in NOT_WITH_TARGET.items() if getattr(args, name)]
    if clashing:
        raise StructpruneError(f"{target.flag} chooses the pruning itself; drop {', '.join(clashing)}")
    if args.method not in (Method.L1, Method.PF, Method.EPF):
        raise StructpruneError(f"{target.flag} searches with the particle filter (--method pf or epf), not {args.method}")
    return target


def run_target(args: argparse.Namespace, target, output: Output) -> int:
    from structprune.search.finalists import FinalistConfig
    from structprune.search.target_cost import load_latency_model
    from structprune.search.target_forms import parse_forms
    from structprune.search.target_search import TargetSearchConfig
    from structprune.stages.prune import DEFAULT_BN_BATCHES
    from structprune.stages.target import TargetConfig, target_run

    search = TargetSearchConfig(
        method=Method.EPF if args.method is Method.EPF else Method.PF, particles=args.particles,
        generations=args.generations, temperature=args.temperature / 100,
        round_to=round_to_or_default(args.round_to), min_keep=args.min_keep,
        score_images=args.score_images, bn_batches=2 if args.bn_recalibrate is None else args.bn_recalibrate,
        seed=args.seed, forms=parse_forms(args.target_forms), importance=args.importance)
    cfg = TargetConfig(search=search, runtime=args.runtime, batch=args.batch, threads=args.threads or 1,
                       verify=not args.no_verify, finalists=FinalistConfig(args.finalists, args.finalist_images),
                       bn_batches=DEFAULT_BN_BATCHES if args.bn_recalibrate is None else args.bn_recalibrate)
    command = {"command": shlex.join(["structprune", *sys.argv[1:]]), "verb": "prune"}
    latency_model = None
    if args.latency_model is not None:
        if target.kind == "macs":
            raise StructpruneError(f"{target.flag} counts MACs; --latency-model serves --target-speedup and --target-latency")
        latency_model = load_latency_model(args.latency_model, cfg.runtime, cfg.batch, cfg.threads)
    out, m = target_run(args.run_dir, output, target, cfg, data_dir=args.data_dir, latency_model=latency_model,
                        extra_config=command)
    t = m["target"]
    cost = f"predicted {t['predicted_cost']:.3f} of the dense {'MACs' if target.kind == 'macs' else 'latency'}"
    measured = f", measured speed-up {t['measured_speedup']:.2f}x" if "measured_speedup" in t else ""
    mcr = f"; test MCR {m['test_mcr']:.4f} before retraining" if "test_mcr" in m else ""
    print(f"{out}: {target.flag}: {cost}{measured}; compact network {m['compact_macs']:,} MACs "
          f"({t['mac_reduction']:.2f}x fewer){mcr}")
    return 0
