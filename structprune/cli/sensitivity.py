"""`structprune sensitivity DIR`: MCR as each layer alone is pruned harder; writes DIR/sensitivity.json."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from structprune.cli.common import enum_choice, method_choice, method_metavar, positive_int, seed
from structprune.errors import StructpruneError
from structprune.sparsity.granularity import Granularity
from structprune.sparsity.method import ONE_SHOT_METHODS, Method


def ratio_list(text: str) -> tuple[float, ...]:
    """'0.25,0.5,0.75' -> (0.25, 0.5, 0.75), each strictly between 0 and 1."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values or any(not 0.0 < v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: ratios must lie strictly between 0 and 1")
    return values


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sensitivity",
        help="per-layer sweep: MCR as each layer alone is pruned harder",
        description="Prune each conv layer alone at increasing ratios (L1 or random selection) and record the "
        "validation MCR in DIR/sensitivity.json. An interrupted sweep resumes at the next layer.",
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="a run folder with a trained model")
    p.add_argument("--granularity", type=enum_choice(Granularity, "granularity"), default=Granularity.CHANNEL,
                   metavar="{channel,kernel,intra}")
    p.add_argument("--method", type=method_choice(ONE_SHOT_METHODS, "selection method"), default=Method.L1,
                   metavar=method_metavar(ONE_SHOT_METHODS), help="l1 magnitude or random (default l1)")
    p.add_argument("--ratios", type=ratio_list, default=None, help="default 0.1,0.2,...,0.9")
    p.add_argument("--images", type=positive_int, default=2000, help="images of the split to score on (default 2000)")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--data-dir", default=None, help="folder with the dataset files (default: as the run was trained)")
    p.add_argument("--seed", type=seed, default=0, help="seed of random selection")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from structprune.sensitivity import DEFAULT_RATIOS, SENSITIVITY_FILE, SensitivityConfig, run_sensitivity

    if not args.dir.is_dir():
        raise StructpruneError(f"{args.dir}: no such run folder")
    cfg = SensitivityConfig(granularity=args.granularity, method=args.method,
                            ratios=args.ratios or DEFAULT_RATIOS, split=args.split, images=args.images, seed=args.seed)
    bars: list[tqdm] = []  # opened at the first finished layer: bad input is refused before any bar is drawn

    def advance(_name: str) -> None:
        if not bars:
            bars.append(tqdm(desc="layers", unit="layer", file=sys.stderr, leave=False))
        bars[0].update(1)

    try:
        result = run_sensitivity(args.dir, cfg, data_dir=args.data_dir, progress=advance)
    finally:
        for bar in bars:
            bar.close()
    print(f"{args.dir / SENSITIVITY_FILE}: {len(result['layers'])} layers, baseline {args.split} MCR "
          f"{100 * result['baseline_mcr']:.2f}%")
    for name, mcrs in result["layers"].items():
        print(f"  {name:<20} " + " ".join(f"{100 * m:6.2f}" for m in mcrs))
    return 0
