"""Checks of a run folder's input beyond rebuilding its network: metrics.json and config.json are JSON objects
whose fields have the types the verbs read, masks.json (when present) is a valid mask of the network, and a
dataset fits the network (image shape and classes), so that bad input is refused in one line before work starts.

    run = load_checked_run(path)      # load_run + check_run
    check_data_fits(run, data)        # before evaluating or training on `data`
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch import nn

from structprune.arch import factory_of
from structprune.data import Dataset
from structprune.errors import StructpruneError
from structprune.runfolder import CONFIG_FILE, METRICS_FILE, Run, load_run
from structprune.sparsity.masks import MASKS_FILE, NetworkMask

# metrics.json fields a verb reads as numbers
NUMERIC_METRICS = ("val_mcr", "test_mcr", "val_loss", "test_loss", "params", "macs", "weight_bytes",
                   "nonzero_params", "compact_params", "compact_macs", "compact_weight_bytes", "test_images")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def check_metrics(metrics: Any, where: Path) -> None:
    if not isinstance(metrics, dict):
        raise StructpruneError(f"{where / METRICS_FILE}: must hold a JSON object, not {type(metrics).__name__}")
    for key in NUMERIC_METRICS:
        if key in metrics and not _is_number(metrics[key]):
            raise StructpruneError(f"{where / METRICS_FILE}: {key} must be a finite number (got {metrics[key]!r:.40})")
    source = metrics.get("source_metrics", {})
    if not isinstance(source, dict) or any(not _is_number(v) for k, v in source.items() if k in NUMERIC_METRICS):
        raise StructpruneError(f"{where / METRICS_FILE}: source_metrics must be an object of numbers")


def check_config(config: Any, where: Path) -> None:
    path = where / CONFIG_FILE
    if not isinstance(config, dict):
        raise StructpruneError(f"{path}: must hold a JSON object, not {type(config).__name__}")
    for key in ("dataset", "source_run", "source"):
        if key in config and not isinstance(config[key], str):
            raise StructpruneError(f"{path}: {key} must be a string (got {config[key]!r:.40})")
    if config.get("data_dir") is not None and not isinstance(config["data_dir"], str):
        raise StructpruneError(f"{path}: data_dir must be a string or null (got {config['data_dir']!r:.40})")
    if config.get("val_size") is not None and not _is_int(config["val_size"], 1):
        raise StructpruneError(f"{path}: val_size must be a positive integer (got {config['val_size']!r:.40})")
    if "seed" in config and not _is_int(config["seed"], 0):
        raise StructpruneError(f"{path}: seed must be an integer >= 0 (got {config['seed']!r:.40})")
    train = config.get("train", {})
    if not isinstance(train, dict):
        raise StructpruneError(f"{path}: train must be an object (got {type(train).__name__})")
    if "seed" in train and not _is_int(train["seed"], 0):
        raise StructpruneError(f"{path}: train.seed must be an integer >= 0 (got {train['seed']!r:.40})")


def check_masks_fit(mask: NetworkMask, model: nn.Module) -> None:
    """Every masked layer exists; a plain layer is the masked original (same shape) or its compact form
    (no dimension larger than the mask's)."""
    for name, lm in mask:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise StructpruneError(f"{MASKS_FILE}: names layer {name!r}, which the model does not have") from None
        if isinstance(module, nn.Conv2d | nn.Linear):
            shape = tuple(module.weight.shape)
            if len(shape) != len(lm.shape) or any(a > b for a, b in zip(shape, lm.shape, strict=True)):
                raise StructpruneError(f"{MASKS_FILE}: {name}: mask is for weight {list(lm.shape)}, "
                                       f"layer has {list(shape)}")


def check_run(run: Run) -> Run:
    """Refuse, in one line, a run whose metrics.json, config.json or masks.json is malformed."""
    check_metrics(run.metrics, run.path)
    check_config(run.config, run.path)
    masks = run.read_extra(MASKS_FILE)
    if masks is not None:
        check_masks_fit(NetworkMask.from_json(masks), run.model)
    return run


def load_checked_run(run_dir: str | Path) -> Run:
    """load_run, then check_run."""
    return check_run(load_run(run_dir))


def check_data_fits(model: nn.Module, data: Dataset, where: str = "") -> None:
    """The images of `data` have the network's input shape and its labels the network's classes."""
    try:
        info = factory_of(model)
    except StructpruneError:
        return  # not a registered network (e.g. a packed artifact): nothing recorded to compare with
    prefix = f"{where}: " if where else ""
    expected = tuple(info["input_shape"])
    found = tuple(data.test.x.shape[1:])
    if found != expected:
        raise StructpruneError(f"{prefix}dataset {data.name!r} has images {'×'.join(map(str, found))}, the network "
                               f"expects {'×'.join(map(str, expected))}")
    classes = info["kwargs"].get("num_classes")
    if classes is not None and classes != data.num_classes:
        raise StructpruneError(f"{prefix}dataset {data.name!r} has {data.num_classes} classes, the network "
                               f"outputs {classes}")
