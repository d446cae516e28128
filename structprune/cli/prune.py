"""`structprune prune`: choose masks for a trained run and write the pruned (masked) run folder."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from structprune.cli.common import (
    MAX_THREADS,
    add_output_arguments,
    enum_choice,
    from_library,
    int_in,
    method_choice,
    method_metavar,
    positive_int,
    seed,
)
from structprune.cli.prune_search import add_search_arguments, run_search
from structprune.cli.prune_target import add_target_arguments, check_target_args, run_target, wants_target
from structprune.errors import StructpruneError
from structprune.output import claim_folder
from structprune.sparsity.fast_forms import EdgeOptions, describe, resolve
from structprune.sparsity.granularity import KERNEL_STRUCTURES, Granularity, IntraPattern, KernelForm, KernelStructure
from structprune.sparsity.method import Method
from structprune.sparsity.selection_base import SCOPES
from structprune.stages.prune import DEFAULT_BN_BATCHES, select_run

GRANULARITIES = from_library(Granularity.parse_list, "granularity list")
PATTERNS = from_library(IntraPattern.parse_list, "pattern list")


def ratio_list(text: str) -> list[float]:
    """'0.5' or '0.5,0.3,0.6' (one per granularity), each in [0, 1)."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or a comma-separated list of numbers") from None
    if not values or any(not 0.0 <= v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: each ratio must be in [0, 1)")
    return values


def single_ratio(text: str) -> float:
    """One ratio in [0, 1)."""
    values = ratio_list(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give one ratio")
    return values[0]


def kernel_form(structure: KernelStructure | None, groups: int | None) -> KernelForm:
    """The search's --kernel-structure and --kernel-groups as one KernelForm: free masks unless given (structured and
    blocks: 4 groups unless given; the search takes 2 blocks)."""
    if structure is None or structure is KernelStructure.UNSTRUCTURED:
        if groups is not None:
            raise StructpruneError("--kernel-groups applies to --kernel-structure structured or blocks")
        return KernelForm()
    return KernelForm(structure, 4 if groups is None else groups)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prune",
        help="choose pruning masks for a run and save the masked run",
        description="Choose masks at channel / kernel / intra-kernel scale for the run in DIR and write OUT: the same "
        "network with the pruned weights zero, masks.json, and metrics.json (MCR of the masked network, its size and "
        "the size of its compact form).",
    )
    p.add_argument("run_dir", type=Path, metavar="DIR", help="trained run folder")
    add_output_arguments(p, "pruned run folder", resumable=True)
    p.add_argument("--granularity", type=GRANULARITIES, default=[Granularity.CHANNEL],
                   help="channel, kernel, intra or a comma list (default channel)")
    p.add_argument("--method", type=method_choice(tuple(Method)), default=Method.L1, metavar=method_metavar(tuple(Method)),
                   help="l1 magnitude, random, the particle-filter search (pf, epf), or the search schedule's baselines "
                   "(random-best, tp-l2)")
    p.add_argument("--ratio", type=ratio_list, default=None,
                   help="fraction pruned, one for all granularities or one per granularity (e.g. 0.5,0.5,0.66)")
    p.add_argument("--scope", choices=SCOPES, default="layer", help="rank units per layer or across the network")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--round-to", type=positive_int, default=None, metavar="N",
                   help="round kept maps up to a multiple of N (default: this CPU's channel block, 16 with AVX-512, 8 "
                   "otherwise; 1: exact counts): at the channel scale, and at the kernel scale with --kernel-structure "
                   "structured, each group's kept input maps; with kernel blocks, each block's kept maps, so the G "
                   "blocks stay equal (the search: default 1; it rounds the kept maps of its channel rungs)")
    p.add_argument("--kernel-structure", type=enum_choice(KernelStructure, "kernel structure"),
                   default=None, metavar="{" + ",".join(KERNEL_STRUCTURES) + "}",
                   help="kernel scale: blocks (the default): each layer's maps fall into G blocks that follow the "
                   "producing layer's, each output map reads only its own block's input maps, and the layer "
                   "compacts into one grouped convolution; structured: output-map groups sharing their kept input "
                   "maps; unstructured: free masks (slow: one small convolution per output map). The search "
                   "defaults to unstructured and takes blocks with G = 2 (it chooses which output maps go to which "
                   "block, and prunes half the kernels whatever --ratio says)")
    p.add_argument("--kernel-groups", type=positive_int, default=None, metavar="G",
                   help="blocks: the number of blocks G, removing 1 - 1/G of the kernels (default: 2, 4 or 8, the "
                   "nearest the kernel ratio); structured kernels: output-map groups per layer (default 4)")
    p.add_argument("--intra-shared", action="store_true",
                   help="intra scale: one pattern for the whole layer (the default unless --intra-free)")
    p.add_argument("--intra-patterns", type=PATTERNS, default=None, metavar="S:T,...",
                   help="intra scale: choose only among these (start:stride) patterns, e.g. 1:3 (the centre column, "
                   "one pad-free 3×1 convolution); one per input map unless --intra-shared")
    p.add_argument("--intra-free", action="store_true",
                   help="intra scale: any pattern, one per input map (unless --intra-shared), the first layer "
                   "included; by default one shared pattern per layer among those that compact into one smaller "
                   "convolution (a column, a row, a block of rows), with the tap count nearest the ratio's")
    p.add_argument("--linear-ratio", type=single_ratio, default=0.0, metavar="R",
                   help="channel scale on fully connected layers: also prune this fraction of the hidden units of "
                   "every linear layer but the classifier, by L1 of their weights (l1 and random; default 0: kept)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: the one the run was trained with)")
    p.add_argument("--threads", type=int_in(1, MAX_THREADS), default=None,
                   help="CPU threads for PyTorch (default: its own choice; 1 is fastest for tiny models); with a speed "
                   "or latency target, also the threads it is predicted and timed with (default 1)")
    add_search_arguments(p)
    add_target_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if wants_target(args):
        target = check_target_args(args)
        output = claim_folder(args.out, "prune", inputs=(args.run_dir,), overwrite=args.overwrite)
        if args.restart:
            output.discard()
        return run_target(args, target, output)
    granularities = args.granularity
    search = args.method.needs_search or args.max or args.schedule
    if search:
        kernel = kernel_form(args.kernel_structure, args.kernel_groups)
    else:
        if args.ratio is None:
            raise StructpruneError(f"--method {args.method} needs --ratio (or --max for the search schedule)")
        if len(args.ratio) not in (1, len(granularities)):
            raise StructpruneError(f"--ratio lists {len(args.ratio)} values for {len(granularities)} granularities")
        options = EdgeOptions(kernel_structure=args.kernel_structure, kernel_groups=args.kernel_groups,
                              round_to=args.round_to, intra_shared=args.intra_shared,
                              intra_patterns=args.intra_patterns, intra_free=args.intra_free)
        ratios, cfg = resolve(granularities, args.ratio, args.method, options, scope=args.scope, seed=args.seed,
                              linear_ratio=args.linear_ratio)
    output = claim_folder(args.out, "prune", inputs=(args.run_dir,), overwrite=args.overwrite)
    if args.restart:
        output.discard()
    if search:
        return run_search(args, granularities, kernel, output)
    print(f"prune: {describe(granularities, cfg)}")
    command = {"command": shlex.join(["structprune", *sys.argv[1:]]), "verb": "prune"}
    bn_batches = DEFAULT_BN_BATCHES if args.bn_recalibrate is None else args.bn_recalibrate
    out, metrics = select_run(args.run_dir, output, granularities, ratios, cfg, command, data_dir=args.data_dir,
                              bn_batches=bn_batches)
    mcr = f", test MCR {metrics['test_mcr']:.4f}" if "test_mcr" in metrics else ""
    print(f"{out}: {metrics['nonzero_params']:,} of {metrics['params']:,} weights kept; compact network "
          f"{metrics['compact_params']:,} params, {metrics['compact_macs']:,} MACs (dense {metrics['macs']:,}){mcr}")
    return 0
