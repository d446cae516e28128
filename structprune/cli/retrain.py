"""`structprune retrain`: retrain a pruned run with its masks held at zero, or a compact run directly."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from structprune.cli.common import add_output_arguments, non_negative_float, positive_float, positive_int, seed
from structprune.distill import DEFAULT_TEMPERATURE, DEFAULT_WEIGHT, SOURCE, Distillation, teacher_for
from structprune.errors import StructpruneError
from structprune.metrics import size_metrics
from structprune.output import claim_folder, fingerprint_files
from structprune.pruning import evaluation_metrics, load_masks, run_dataset
from structprune.retrain import retrain_compact, retrain_masked
from structprune.runcheck import load_checked_run
from structprune.runfolder import Run, save_run
from structprune.train import TrainConfig


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "retrain",
        help="retrain a pruned or compact run",
        description="Retrain the run in DIR on the dataset it was trained with. With masks.json the pruned weights "
        "stay exactly zero; a compact run trains as it is. With --teacher, the loss also follows a teacher network's "
        "softened predictions (knowledge distillation). A checkpoint is kept in the staging folder "
        ".OUT.structprune/ beside OUT after every epoch: run the same command again to resume.",
    )
    p.add_argument("run_dir", type=Path, metavar="DIR", help="pruned or compact run folder")
    p.add_argument("--epochs", type=positive_int, required=True)
    add_output_arguments(p, "retrained run folder", resumable=True)
    p.add_argument("--teacher", default=None, metavar="RUN",
                   help="distil from this run folder's network (same classes and input shape), or 'source': the trained "
                   "run DIR was made from (followed back through the source runs its config.json records)")
    p.add_argument("--distill-weight", type=float, default=None, metavar="A",
                   help=f"with --teacher: loss = (1-A)*CE + A*T^2*KL(teacher || student) (default A={DEFAULT_WEIGHT:g})")
    p.add_argument("--temperature", type=float, default=None, metavar="T",
                   help=f"with --teacher: softmax temperature of both networks' soft targets (default {DEFAULT_TEMPERATURE:g})")
    p.add_argument("--lr", type=positive_float, default=0.01, help="peak learning rate (default 0.01)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--weight-decay", type=non_negative_float, default=5e-4)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--data-dir", default=None, help="dataset folder (default: the one the run was trained with)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    output = claim_folder(args.out, "retrain", inputs=(args.run_dir,), overwrite=args.overwrite)
    run_ = load_checked_run(args.run_dir)
    data = run_dataset(run_, args.data_dir)
    if data is None:
        raise StructpruneError(f"{args.run_dir}: config.json records no dataset to retrain on")
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, weight_decay=args.weight_decay,
                      seed=args.seed)
    mask = load_masks(run_)
    distill = _distillation(args, run_, data.train.x[:8])
    identity = {"source": fingerprint_files(args.run_dir), "data": data.fingerprint(), "retrain": asdict(cfg),
                "distill": None if distill is None else distill.fingerprint()}
    options = {"checkpoint_dir": output.checkpoints, "progress": not args.no_progress, "distill": distill}
    with output.staged(identity, restart=args.restart):
        if mask is not None:
            history = retrain_masked(run_.model, mask, data, cfg, **options)
        else:
            history = retrain_compact(run_.model, data, cfg, **options)
    kept = {k: v for k, v in run_.metrics.items() if k.startswith("compact_") or k == "nonzero_params"}
    metrics = {**size_metrics(run_.model), **kept, **evaluation_metrics(run_.model, data),
               "before_retrain": {k: run_.metrics[k] for k in ("val_mcr", "test_mcr") if k in run_.metrics},
               "history": history}
    config = {**run_.config, "verb": "retrain", "source_run": str(args.run_dir),
              "retrain": {"command": shlex.join(["structprune", *sys.argv[1:]]), **asdict(cfg),
                          "source_run": str(args.run_dir), "masked": mask is not None,
                          "distill": None if distill is None else {**distill.fingerprint(), "teacher_arg": args.teacher}}}
    extra = {"masks.json": mask.to_json()} if mask is not None else None
    out = save_run(output, run_.model, run_.arch, metrics, config, extra_json=extra)
    print(f"{out}: test MCR {metrics['test_mcr']:.4f} after {args.epochs} epochs "
          f"(before {metrics['before_retrain'].get('test_mcr', float('nan')):.4f})"
          + (f", distilled from {distill.name} (A={distill.weight:g}, T={distill.temperature:g})" if distill else ""))


def _distillation(args: argparse.Namespace, run_: Run, example: torch.Tensor) -> Distillation | None:
    if args.teacher is None:
        if args.distill_weight is not None or args.temperature is not None:
            raise StructpruneError("--distill-weight and --temperature apply to --teacher only")
        return None
    weight = DEFAULT_WEIGHT if args.distill_weight is None else args.distill_weight
    temperature = DEFAULT_TEMPERATURE if args.temperature is None else args.temperature
    return teacher_for(SOURCE if args.teacher == SOURCE else Path(args.teacher), run_, example, weight, temperature)
    return 0
