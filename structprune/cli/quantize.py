"""`structprune quantize DIR --bits B [--per-layer auto] [--epochs N] --out DIR2`."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from structprune.arch import describe
from structprune.cli.common import (
    add_output_arguments,
    existing_file,
    fraction,
    name_in,
    non_negative_int,
    positive_float,
    positive_int,
    seed,
)
from structprune.compact.compaction import compact
from structprune.data import DATASETS, load_dataset
from structprune.errors import StructpruneError
from structprune.jsonio import read_json
from structprune.masks import MASKS_FILE, NetworkMask
from structprune.metrics import count_macs, count_params
from structprune.output import claim_folder, fingerprint_files
from structprune.quant.apply import QuantPlan, plan_formats, plan_to_json, quantize_model_
from structprune.quant.fixed_point import MAX_BITS, MIN_BITS, check_bits
from structprune.quant.packing import load_packed, save_packed
from structprune.quant.qat import retrain_quantized
from structprune.quant.sensitivity import choose_bits, sweep
from structprune.quant.storage import storage_report
from structprune.quant.targets import quantized_weights
from structprune.runcheck import check_config, check_data_fits, load_checked_run
from structprune.runfolder import write_run_files
from structprune.train import TrainConfig, evaluate

log = logging.getLogger(__name__)

PACKED_FILE = "model.packed.safetensors"
QUANT_FILE = "quant.json"
STORAGE_FILE = "storage.json"
SENSITIVITY_FILE = "sensitivity.json"


def word_length(text: str) -> int:
    """--bits: an integer word length in MIN_BITS..MAX_BITS."""
    try:
        return check_bits(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    except StructpruneError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "quantize",
        help="fixed-point weights, storage accounting and a packed artifact",
        description="Quantize the weights of run DIR to B-bit fixed point (L2-optimal step per layer), optionally "
        "retrain with quantized forward passes, and write run DIR2 with model.safetensors (dequantized), "
        f"{PACKED_FILE} (the compact network, its weights packed at their word lengths; a masked run is compacted "
        f"for it), {QUANT_FILE}, {STORAGE_FILE}; metrics.json weight_bytes is the storage total (kept weights at "
        "their word lengths + sparsity indices + float biases). A retraining checkpoint is kept in the staging "
        "folder .DIR2.structprune/ beside DIR2: run the same command again to resume.",
    )
    p.add_argument("run_dir", type=Path, metavar="DIR", help="run folder to quantize")
    p.add_argument("--bits", type=word_length, required=True,
                   help=f"word length, {MIN_BITS}–{MAX_BITS} bits (the longest allowed with --per-layer auto)")
    p.add_argument("--per-layer", choices=("auto",), default=None,
                   help="auto: per-layer word lengths from a sensitivity sweep on the validation set")
    p.add_argument("--tolerance", type=fraction, default=0.002,
                   help="--per-layer auto: allowed validation MCR increase per layer, a fraction in [0, 1) (default 0.002)")
    p.add_argument("--epochs", type=non_negative_int, default=0, help="quantization-aware retraining epochs (default 0)")
    p.add_argument("--lr", type=positive_float, default=0.005, help="retraining learning rate (default 0.005)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--data", default=None, type=name_in(DATASETS, "dataset"),
                   help="dataset (default: the one in DIR/config.json)")
    p.add_argument("--data-dir", default=None, help="folder with the dataset files (default: as in DIR/config.json)")
    add_output_arguments(p, "quantized run folder", resumable=True)
    p.add_argument("--masks", type=existing_file, default=None,
                   help=f"masks.json for the index cost (default: DIR/{MASKS_FILE}, else that of the run DIR was compacted from)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_bits(args.bits, where="--bits")
    if args.epochs < 0:
        raise StructpruneError(f"--epochs must be >= 0 (got {args.epochs})")
    output = claim_folder(args.out, "quantize", inputs=(args.run_dir,), overwrite=args.overwrite)
    source = load_checked_run(args.run_dir)
    cfg_src = source.config
    dataset = args.data or cfg_src.get("dataset")
    if not dataset:
        raise StructpruneError(f"{args.run_dir}: config.json names no dataset; pass --data")
    data = load_dataset(dataset, args.data_dir or cfg_src.get("data_dir"), val_size=cfg_src.get("val_size"),
                        seed=int(cfg_src.get("train", {}).get("seed", 0)))
    check_data_fits(source.model, data, str(args.run_dir))
    masks_path = find_masks(args.masks, args.run_dir, cfg_src)
    masks_json = read_json(masks_path) if masks_path is not None else None
    masks = NetworkMask.from_json(masks_json) if masks_json is not None else None
    net = source.model
    if not quantized_weights(net):
        raise StructpruneError(f"{args.run_dir}: the network has no Conv2d, Linear or compact layer to quantize")
    float_val, float_test = evaluate(net, data.val), evaluate(net, data.test)

    bits: int | dict[str, int] = args.bits
    sensitivity = None
    if args.per_layer == "auto":
        sensitivity = sweep(net, data.val, bits=range(MIN_BITS, args.bits + 1), progress=not args.no_progress)
        bits = choose_bits(sensitivity, args.bits, args.tolerance)
        print("per-layer word lengths: " + ", ".join(f"{k} {v}" for k, v in bits.items()), file=sys.stderr)
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed, weight_decay=0.0)
    identity = {"source": fingerprint_files(args.run_dir), "data": data.fingerprint(), "bits": bits, "retrain": asdict(cfg),
                "masks": masks_json}
    with output.staged(identity, restart=args.restart):
        if args.epochs > 0:
            plan, history = retrain_quantized(net, data, bits, cfg, checkpoint_dir=output.checkpoints,
                                              progress=not args.no_progress)
        else:
            plan, history = plan_formats(net, bits), []
            quantize_model_(net, plan)
    net.eval()
    val, test = evaluate(net, data.val), evaluate(net, data.test)
    pack_net, pack_plan = compact_form(net, plan, masks)
    storage = storage_report(pack_net, {name: fmt.bits for name, fmt in pack_plan.items()}, masks)

    metrics = {"val_mcr": val.mcr, "test_mcr": test.mcr, "val_loss": val.loss, "test_loss": test.loss,
               "float_val_mcr": float_val.mcr, "float_test_mcr": float_test.mcr,
               "params": count_params(net), "macs": count_macs(net), "weight_bytes": storage.total_bytes,
               "compact_params": count_params(pack_net), "compact_macs": count_macs(pack_net),
               "dense_weight_bytes": storage.to_json()["dense_bytes"], "compression": storage.compression,
               "test_images": len(data.test), "history": history}
    config = {"command": shlex.join(["structprune", *sys.argv[1:]]), "verb": "quantize", "source": str(args.run_dir),
              "dataset": dataset, "data_dir": args.data_dir or cfg_src.get("data_dir"), "val_size": len(data.val),
              "bits": args.bits, "per_layer": args.per_layer, "tolerance": args.tolerance, "retrain": asdict(cfg),
              "train": cfg_src.get("train", {}), "torch": torch.__version__}
    extra = {QUANT_FILE: plan_to_json(plan, quantized_weights(net)), STORAGE_FILE: storage.to_json()}
    if masks_json is not None:
        extra[MASKS_FILE] = masks_json
    if sensitivity is not None:
        extra[SENSITIVITY_FILE] = {**sensitivity.to_json(), "chosen_bits": bits, "tolerance": args.tolerance}
    with output.publish() as tmp:
        packed_bytes = save_packed(tmp / PACKED_FILE, pack_net, pack_plan)
        reloaded, _ = load_packed(tmp / PACKED_FILE)
        x = data.val.x[:256]
        with torch.no_grad():
            diff = float((reloaded(x) - pack_net(x)).abs().max())
        if diff != 0.0:
            raise StructpruneError(f"packed artifact does not reproduce the quantized network (max diff {diff:.3g})")
        metrics["packed_file_bytes"] = packed_bytes
        write_run_files(tmp, net, describe(net), metrics, config, extra)
    print(f"{output.path}: {_describe_bits(bits)}, val MCR {float_val.mcr:.4f} -> {val.mcr:.4f}, "
          f"test MCR {float_test.mcr:.4f} -> {test.mcr:.4f}; weight_bytes {storage.total_bytes:,} "
          f"({storage.compression:.1f}x smaller than dense 32-bit), "
          f"packed file {packed_bytes:,} bytes")
    return 0


def find_masks(explicit: Path | None, run_dir: Path, config: dict) -> Path | None:
    """The masks.json that describes the run's sparsity: given, in the run, or in its source run."""
    if explicit is not None:
        if not explicit.is_file():
            raise StructpruneError(f"{explicit}: file not found")
        return explicit
    if (run_dir / MASKS_FILE).is_file():
        return run_dir / MASKS_FILE
    seen: set[Path] = set()
    for _ in range(8):  # follow source_run links: retrained <- compact <- pruned (which has masks.json)
        source = config.get("source_run")
        if not source:
            return None
        folder = next((b / source for b in (Path.cwd(), run_dir.parent) if (b / source).is_dir()), None)
        if folder is None or folder.resolve() in seen:
            return None
        seen.add(folder.resolve())
        if (folder / MASKS_FILE).is_file():
            log.info("index cost from %s (a source of %s)", folder / MASKS_FILE, run_dir)
            return folder / MASKS_FILE
        config = read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
        check_config(config, folder)
    return None


def compact_form(net: torch.nn.Module, plan: QuantPlan, masks: NetworkMask | None) -> tuple[torch.nn.Module, QuantPlan]:
    """The compact network of a masked (not yet compacted) quantized net, with each compact weight in its
    layer's format; the net itself when it has no masks or is compact already."""
    if masks is None:
        return net, plan
    try:
        masks.validate(net)  # passes only while the layers still have their original, masked shapes
    except StructpruneError:
        return net, plan
    small = compact(net, masks).eval()
    layer_format = {quantized_weights(net)[name]: fmt for name, fmt in plan.items()}
    small_plan = {name: layer_format[layer] for name, layer in quantized_weights(small).items()}
    params = dict(small.named_parameters())
    for name, fmt in small_plan.items():  # compaction copies values, so they stay on the fixed-point grid
        if not torch.equal(fmt.round_trip(params[name]), params[name].detach()):
            raise StructpruneError(f"{name}: compaction moved weights off the fixed-point grid")
    return small, small_plan


def _describe_bits(bits: int | dict[str, int]) -> str:
    if isinstance(bits, int):
        return f"{bits}-bit weights"
    return "per-layer " + "/".join(str(b) for b in bits.values()) + " bits"
