"""`structprune eval DIR`: evaluate a saved run folder on its dataset's validation and test sets."""

from __future__ import annotations

import argparse
import json

from structprune.cli.common import name_in
from structprune.data import DATASETS, load_dataset
from structprune.errors import StructpruneError
from structprune.runcheck import check_data_fits, load_checked_run
from structprune.train import evaluate


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="evaluate a run folder (val and test MCR, loss)",
                              description="Rebuild the network of a run folder, load its weights and report "
                              "validation and test MCR on the dataset it was trained on.")
    p.add_argument("run_dir", metavar="DIR", help="run folder")
    p.add_argument("--data", default=None, type=name_in(DATASETS, "dataset"),
                   help="dataset (default: the one in DIR/config.json)")
    p.add_argument("--data-dir", default=None, help="folder with the dataset files (default: as recorded, "
                   "then $STRUCTPRUNE_DATA)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    loaded = load_checked_run(args.run_dir)
    name = args.data or loaded.config.get("dataset")
    if not name:
        raise StructpruneError(f"{args.run_dir}: config.json names no dataset; pass --data")
    data_dir = args.data_dir if args.data_dir is not None else loaded.config.get("data_dir")
    data = load_dataset(name, data_dir, val_size=loaded.config.get("val_size"),
                        seed=loaded.config.get("train", {}).get("seed", 0))
    check_data_fits(loaded.model, data, str(args.run_dir))
    val, test = evaluate(loaded.model, data.val), evaluate(loaded.model, data.test)
    result = {"run": str(args.run_dir), "dataset": name, "val_mcr": val.mcr, "val_loss": val.loss,
              "test_mcr": test.mcr, "test_loss": test.loss, "test_images": len(data.test)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.run_dir}: {name} val MCR {val.mcr:.4f} (loss {val.loss:.4f}), "
              f"test MCR {test.mcr:.4f} (loss {test.loss:.4f}) on {len(data.test)} test images")
    return 0
