"""`structprune train`: train a registered model on a dataset and save a run folder."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from typing import Any

import torch

from structprune.cli.common import (
    MAX_THREADS,
    add_output_arguments,
    fraction,
    int_in,
    name_in,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    seed,
)
from structprune.data import DATASETS, is_folder_dataset
from structprune.distributed import is_main_process
from structprune.models import available
from structprune.output import claim_folder
from structprune.stages.train import TrainRunConfig, train_run
from structprune.train import OPTIMIZERS, SCHEDULES, TrainConfig

log = logging.getLogger(__name__)


def model_arg(text: str) -> tuple[str, Any]:
    """'bn=true' -> ('bn', True); values are read as JSON when they parse, else kept as strings."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), parsed


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model and save a run folder",
        description="Train a registered model on a dataset; write OUT/{model.safetensors,arch.json,metrics.json,"
        "config.json}. A checkpoint is kept in the staging folder .OUT.structprune/ beside OUT after every epoch: "
        "run the same command again to resume.",
    )
    p.add_argument("--model", required=True, type=name_in(available(), "model"),
                   help=f"registered model ({', '.join(available())})")
    p.add_argument("--data", required=True, type=dataset_name, help=f"dataset ({', '.join(DATASETS)}; folder:PATH holds "
                   "one sub-folder of PNG or JPEG images per class)")
    p.add_argument("--image-size", type=positive_int, default=None, metavar="N",
                   help="folder: datasets: resize images to N×N (default: the larger side of the first image)")
    add_output_arguments(p, "run folder", resumable=True)
    p.add_argument("--data-dir", default=None, help="folder with the dataset files (default: $STRUCTPRUNE_DATA or ./data)")
    p.add_argument("--epochs", type=non_negative_int, default=3)
    p.add_argument("--lr", type=positive_float, default=0.02,
                   help="peak learning rate (default 0.02; networks with batch norm train well at 0.05-0.1)")
    p.add_argument("--momentum", type=fraction, default=0.9, help="SGD momentum, in [0, 1) (default 0.9)")
    p.add_argument("--weight-decay", type=non_negative_float, default=5e-4)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine", help="cosine, or step (x0.1 at 50%% and 75%%)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    p.add_argument("--warmup-epochs", type=non_negative_float, default=0.0,
                   help="linear learning-rate warm-up (epochs, may be fractional)")
    p.add_argument("--val-size", type=positive_int, default=None,
                   help="validation images carved from the training set (default 5,000, or a tenth of a set under 25,000)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--model-arg", action="append", type=model_arg, default=[], metavar="KEY=VALUE",
                   help="extra model argument, e.g. bn=true (repeatable)")
    p.add_argument("--no-augment", action="store_true", help="no crop/flip augmentation (CIFAR-10 has it by default)")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="NHWC layout for convolutions (auto: on for CPU)")
    p.add_argument("--threads", type=int_in(1, MAX_THREADS), default=None,
                   help="CPU threads for PyTorch (default: its own choice; 1 is fastest for tiny models)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def dataset_name(text: str) -> str:
    """A built-in dataset's name, or folder:PATH."""
    return text if is_folder_dataset(text) else name_in(DATASETS, "dataset")(text)


def run(args: argparse.Namespace) -> int:
    output = claim_folder(args.out, "train", overwrite=args.overwrite)
    cfg = TrainRunConfig(
        model=args.model, dataset=args.data, model_kwargs=dict(args.model_arg), data_dir=args.data_dir,
        val_size=args.val_size, image_size=args.image_size, device=args.device, channels_last=args.channels_last,
        augment=False if args.no_augment else None,
        train=TrainConfig(epochs=args.epochs, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                          batch_size=args.batch_size, seed=args.seed, schedule=args.schedule, optimizer=args.optimizer,
                          warmup_epochs=args.warmup_epochs))
    if args.threads:
        torch.set_num_threads(args.threads)
    out, m = train_run(output, cfg, progress=not args.no_progress, restart=args.restart,
                       extra_config={"command": shlex.join(["structprune", *sys.argv[1:]])})
    if not is_main_process():  # under torchrun the main process reports (and alone holds the output)
        return 0
    print(f"{out}: val MCR {m['val_mcr']:.4f}, test MCR {m['test_mcr']:.4f} ({m['test_images']} test images), "
          f"{m['params']:,} params, {m['macs']:,} MACs")
    return 0
