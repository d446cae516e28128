"""`structprune retrain`: retrain a pruned run with its masks held at zero, or a compact run directly."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from structprune.cli.common import add_output_arguments, non_negative_float, positive_float, positive_int, seed
from structprune.distill import DEFAULT_TEMPERATURE, DEFAULT_WEIGHT, SOURCE
from structprune.distributed import is_main_process
from structprune.errors import StructpruneError
from structprune.output import claim_folder
from structprune.runfiles import CONFIG_FILE
from structprune.stages.retrain import Teacher, retrain_run
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
    p.add_argument("--train-images", type=positive_int, default=None, metavar="N",
                   help="retrain on a random N of the training images (chosen with --seed; default: all of them)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: the one the run was trained with)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where to retrain (default auto: a CUDA GPU when PyTorch sees one)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    output = claim_folder(args.out, "retrain", inputs=(args.run_dir,), overwrite=args.overwrite)
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, weight_decay=args.weight_decay,
                      seed=args.seed)
    out, m = retrain_run(args.run_dir, output, cfg, data_dir=args.data_dir, teacher=_teacher(args),
                         train_images=args.train_images, progress=not args.no_progress, device=args.device, restart=args.restart,
                         extra_config={"command": shlex.join(["structprune", *sys.argv[1:]])})
    if not is_main_process():  # under torchrun the main process reports (and alone holds the output)
        return 0
    distill = json.loads((out / CONFIG_FILE).read_text())["retrain"]["distill"]
    print(f"{out}: test MCR {m['test_mcr']:.4f} after {args.epochs} epochs "
          f"(before {m['before_retrain'].get('test_mcr', float('nan')):.4f})"
          + (f", distilled from {distill['teacher']} (A={distill['weight']:g}, T={distill['temperature']:g})"
             if distill else ""))
    return 0


def _teacher(args: argparse.Namespace) -> Teacher | None:
    if args.teacher is None:
        if args.distill_weight is not None or args.temperature is not None:
            raise StructpruneError("--distill-weight and --temperature apply to --teacher only")
        return None
    weight = DEFAULT_WEIGHT if args.distill_weight is None else args.distill_weight
    temperature = DEFAULT_TEMPERATURE if args.temperature is None else args.temperature
    return Teacher(SOURCE if args.teacher == SOURCE else Path(args.teacher), weight, temperature)
