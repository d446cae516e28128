"""The search options of `structprune prune` (--method pf|epf, or --max): parsed here, run by structprune.search.

  structprune prune DIR --granularity channel,intra --method pf --tolerance 0.2 --max --out DIR2
  structprune prune DIR --granularity channel --method epf --ratio 0.3 --retrain-epochs 1 --out DIR2
  structprune prune DIR --granularity channel --method random-best --max --out DIR2   # baseline, same schedule

`--tolerance` is in percentage points of MCR (0.2 = 0.2 points). With `--max`, l1 and random-best run through
the same ladder, tolerance check and retraining as pf/epf (random-best scores particles × generations random
candidates per rung and keeps the best).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

import torch

from structprune.cli.common import (
    existing_file,
    float_below,
    layer_list,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from structprune.errors import StructpruneError
from structprune.output import Output
from structprune.search.config import SearchConfig
from structprune.sparsity.fast_forms import default_round_to
from structprune.sparsity.granularity import Granularity, IntraPattern, KernelForm, KernelStructure
from structprune.sparsity.method import SEARCH_METHODS

log = logging.getLogger(__name__)

DEFAULTS = SearchConfig()  # the library's search defaults are the command line's


def add_search_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("mask search (--method pf|epf, or any method with --max)")
    g.add_argument("--max", action="store_true",
                   help="per layer, the largest ratio on the ladder whose candidate stays within --tolerance")
    g.add_argument("--schedule", action="store_true",
                   help="run l1 through the search schedule too (layer by layer, retraining between steps and at "
                   "the end, search.json), for comparisons at equal retraining; the other search methods always do")
    g.add_argument("--tolerance", type=float_below(100), default=0.2, metavar="POINTS",
                   help="allowed rise of validation MCR over the unpruned network, in percentage points (default 0.2)")
    g.add_argument("--particles", type=positive_int, default=DEFAULTS.particles,
                   help=f"particles per generation (default {DEFAULTS.particles})")
    g.add_argument("--generations", type=positive_int, default=DEFAULTS.generations,
                   help=f"generations per ladder rung (default {DEFAULTS.generations})")
    g.add_argument("--temperature", type=positive_float, default=0.2, metavar="POINTS",
                   help="importance-weight temperature in MCR points (default 0.2)")
    g.add_argument("--retrain-epochs", type=non_negative_int, default=1,
                   help="retraining epochs between steps (with --max: when a step exceeds the tolerance)")
    g.add_argument("--retrain-images", type=positive_int, default=DEFAULTS.step_images,
                   help=f"training images per retraining between steps (default {DEFAULTS.step_images})")
    g.add_argument("--final-epochs", type=non_negative_int, default=1, help="retraining epochs at the end (default 1)")
    g.add_argument("--final-images", type=positive_int, default=None,
                   help="training images for the final retraining (default: all)")
    g.add_argument("--lr", type=positive_float, default=0.01, help="retraining learning rate (default 0.01)")
    g.add_argument("--score-images", type=positive_int, default=DEFAULTS.score_images,
                   help=f"validation images that score candidates (default {DEFAULTS.score_images})")
    g.add_argument("--check-images", type=positive_int, default=DEFAULTS.check_images,
                   help=f"other validation images that check the tolerance, disjoint from the scoring ones (default "
                   f"{DEFAULTS.check_images})")
    g.add_argument("--layers", type=layer_list, default=None, help="comma list of convolutions to prune (default: all)")
    g.add_argument("--bn-recalibrate", type=non_negative_int, default=None, metavar="BATCHES",
                   help="re-estimate batch-norm statistics under the masks on BATCHES training batches of 64: after "
                   "one-shot pruning (default 16) and for every candidate of the layer-by-layer search (default 0 "
                   "= off); 0 keeps the trained statistics")
    g.add_argument("--latency-weight", type=non_negative_float, default=0.0, metavar="LAMBDA",
                   help="global search: add LAMBDA x predicted conv latency (ms per batch of 16) to the MCR")
    g.add_argument("--latency-table", type=existing_file, default=None, metavar="FILE",
                   help="with --latency-weight: a latency-model.json to predict with (e.g. of a target run; default: "
                   "measured on this machine in eager PyTorch and saved in the output folder)")
    g.add_argument("--backend", choices=("inprocess", "ray"), default="inprocess", help="where candidates are scored")
    g.add_argument("--workers", type=positive_int, default=2, help="Ray tasks per particle batch (default 2)")


def check_latency_table(model: torch.nn.Module, path: Path, layers: tuple[str, ...] | None) -> None:
    """Before the search starts: the table is well formed and times every searched convolution."""
    from structprune.jsonio import read_json
    from structprune.search.latency import ConvLatency

    data = read_json(path)
    try:
        table = ConvLatency.from_json(data)
    except StructpruneError as exc:
        raise StructpruneError(f"{path}: {exc}") from None
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and (layers is None or n in layers)]
    missing = [n for n in convs if n not in table.layers]
    if missing:
        raise StructpruneError(f"{path}: the latency model has no entry for {', '.join(missing)}")


def check_intra_patterns(model: torch.nn.Module, patterns: tuple[IntraPattern, ...], layers: tuple[str, ...] | None) -> None:
    """Before the search starts: every searched convolution can prune its kernel with one of the patterns."""
    for name, conv in model.named_modules():
        if not isinstance(conv, torch.nn.Conv2d) or (layers is not None and name not in layers):
            continue
        positions = conv.kernel_size[0] * conv.kernel_size[1]
        if positions > 1 and not any(0 < len(p.taps(positions)) < positions for p in patterns):
            raise StructpruneError(f"--intra-patterns: none prunes the {positions}-position kernels of {name}")


def _log_search_defaults(args: argparse.Namespace, granularities: list[Granularity]) -> None:
    """Where the search keeps its own defaults (free kernels, exact counts), say so, once. Its intra scale takes the
    fast form by default, as one-shot prune does: one shared one-rectangle pattern, none on the first layer."""
    unset = []
    if Granularity.KERNEL in granularities and args.kernel_structure is None and args.kernel_groups is None:
        unset.append("free kernel masks (--kernel-structure blocks --kernel-groups 2 for one grouped convolution "
                     "per layer)")
    if args.round_to is None:
        unset.append(f"exact map counts (--round-to {default_round_to()} for this CPU's kernels)")
    if unset:
        log.info("the search keeps its own defaults, unlike one-shot prune: %s", "; ".join(unset))


def run_search(args: argparse.Namespace, granularities: list[Granularity], kernel: KernelForm, output: Output) -> int:
    from structprune.runcheck import load_checked_run
    from structprune.search.driver import search_run
    from structprune.stages.prune import run_dataset

    if args.method not in SEARCH_METHODS:
        raise StructpruneError(f"--method {args.method} cannot run the search schedule; use "
                               f"{', '.join(m.value for m in SEARCH_METHODS)}")
    if args.max == (args.ratio is not None):
        raise StructpruneError("give either --ratio R or --max")
    if args.ratio is not None and len(set(args.ratio)) != 1:
        raise StructpruneError("the search takes one --ratio for every granularity")
    if args.linear_ratio:
        raise StructpruneError("--linear-ratio is for one-shot selection (--method l1 or random without --max or "
                               "--schedule); the search prunes convolutions only")
    if args.intra_free and args.intra_patterns is not None:
        raise StructpruneError("--intra-free chooses among every pattern; drop it or --intra-patterns")
    if kernel.structure is KernelStructure.BLOCKS and kernel.groups != 2:
        raise StructpruneError(f"the search chooses 2 kernel blocks per layer: give --kernel-groups 2, not {kernel.groups}")
    run = load_checked_run(args.run_dir)
    if args.latency_table is not None:
        check_latency_table(run.model, args.latency_table, args.layers)
    if args.intra_patterns is not None and Granularity.INTRA in granularities:
        check_intra_patterns(run.model, args.intra_patterns, args.layers)
    data = run_dataset(run, args.data_dir)
    if data is None:
        raise StructpruneError(f"{args.run_dir}: its config.json records no dataset to score candidates on")
    fast_intra = args.intra_patterns is None and not args.intra_free
    cfg = SearchConfig(
        method=args.method, granularities=tuple(granularities),
        tolerance=args.tolerance / 100, ratio=None if args.max else args.ratio[0], particles=args.particles,
        generations=args.generations, temperature=args.temperature / 100, score_images=args.score_images,
        check_images=args.check_images, step_epochs=args.retrain_epochs, step_images=args.retrain_images,
        final_epochs=args.final_epochs, final_images=args.final_images, lr=args.lr, backend=args.backend,
        workers=args.workers, seed=args.seed, scope=args.scope, latency_weight=args.latency_weight,
        latency_table=None if args.latency_table is None else str(args.latency_table), bn_batches=args.bn_recalibrate or 0,
        kernel=kernel, intra_shared=args.intra_shared or fast_intra, intra_patterns=args.intra_patterns,
        intra_fast=fast_intra, layers=args.layers,
        round_to=args.round_to or 1)
    _log_search_defaults(args, granularities)  # after every check: bad input gets its one line alone
    command = {"command": shlex.join(["structprune", *sys.argv[1:]]), "verb": "prune"}
    out, m = search_run(run, data, cfg, output, extra_config=command)
    kept = ", ".join(f"{k} {v:.3f}" for k, v in m["kept_fraction"].items())
    print(f"{out}: {m['conv_macs_removed']:.1%} of conv MACs removed ({m['conv_macs']:,} of {m['conv_macs_dense']:,}); "
          f"test MCR {m['test_mcr']:.4f} (dense {m['source_metrics'].get('test_mcr', float('nan')):.4f}); kept {kept}")
    return 0
