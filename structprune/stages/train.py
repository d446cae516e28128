"""The train stage: a registered model trained on a dataset, saved as a run folder."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from structprune import __version__
from structprune.data import Dataset, dataset_shape, is_folder_dataset, load_dataset
from structprune.distributed import on_main, setup, staged
from structprune.errors import StructpruneError
from structprune.jsonio import read_json, write_json_atomic
from structprune.metrics import run_metrics
from structprune.models import create
from structprune.output import Output
from structprune.runcheck import load_checked_run
from structprune.runfiles import CONFIG_FILE, MASKS_FILE, SENSITIVITY_FILE
from structprune.runfolder import as_output, save_run
from structprune.train import TrainConfig, resolve_device, train

log = logging.getLogger(__name__)

SHAPE_ARGUMENTS = ("num_classes", "in_channels", "input_size")  # set by the dataset, never by hand


@dataclass(frozen=True)
class TrainRunConfig:
    """What a training run is: the model, the data and how it is trained.

    channels_last: "auto" (NHWC on CPU, oneDNN's fast layout), "on" or "off"; augment: None follows the dataset
    (CIFAR-10 crops and flips), False turns it off."""

    model: str
    dataset: str
    train: TrainConfig = field(default_factory=TrainConfig)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    val_size: int | None = None
    image_size: int | None = None
    device: str = "auto"
    channels_last: str = "auto"
    augment: bool | None = None

    def __post_init__(self) -> None:
        fixed = sorted(set(SHAPE_ARGUMENTS) & self.model_kwargs.keys())
        if fixed:
            raise StructpruneError(f"--model-arg {', '.join(fixed)}: set by the dataset {self.dataset!r}, not by hand")
        if self.channels_last not in ("auto", "on", "off"):
            raise StructpruneError(f"channels_last must be auto, on or off (got {self.channels_last!r})")


def build_model(cfg: TrainRunConfig, data: Dataset | None = None) -> tuple[torch.nn.Module, Dataset]:
    """The untrained model (seeded) and its data. A built-in dataset's shape is known without reading it, so a bad
    model argument is refused before any loading; a folder dataset is read first."""
    if data is None and is_folder_dataset(cfg.dataset):
        data = _load(cfg)
    classes, channels, size = ((data.num_classes, data.in_channels, data.input_size) if data is not None
                               else dataset_shape(cfg.dataset)[:3])
    torch.manual_seed(cfg.train.seed)
    try:
        model = create(cfg.model, num_classes=classes, in_channels=channels, input_size=size, **cfg.model_kwargs)
    except TypeError as exc:
        raise StructpruneError(f"model {cfg.model!r}: bad --model-arg ({exc})") from None
    return model, data if data is not None else _load(cfg)


def _load(cfg: TrainRunConfig) -> Dataset:
    return load_dataset(cfg.dataset, cfg.data_dir, val_size=cfg.val_size, seed=cfg.train.seed, image_size=cfg.image_size)


def train_run(out: Output | str | Path, cfg: TrainRunConfig, data: Dataset | None = None, *, progress: bool = False,
              restart: bool = False, extra_config: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """Train `cfg.model` on `cfg.dataset` (or the already loaded `data`) into the run folder `out`, checkpointing every
    epoch in its staging folder: the same call resumes an interrupted run, other settings are refused (`restart`
    discards them). Under torchrun the training is data-parallel over its processes (structprune.distributed) and only
    the main process writes. Returns the run folder and its metrics."""
    output = as_output(out, "train")
    group, device = setup(resolve_device(cfg.device), cfg.train.batch_size)
    model, data = build_model(cfg, data)
    channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and device.type == "cpu")
    augment = bool(data.augment and cfg.augment is not False)
    identity = {"model": cfg.model, "model_kwargs": cfg.model_kwargs, "dataset": cfg.dataset, "data": data.fingerprint(),
                "val_size": len(data.val), "augment": augment, "channels_last": channels_last, "train": asdict(cfg.train)}
    started = time.perf_counter()
    with staged(group, output, identity, restart=restart):
        history = train(model, data, cfg.train, checkpoint_dir=output.checkpoints, progress=progress, device=device,
                        channels_last=channels_last, augment=augment, group=group)
    seconds = time.perf_counter() - started
    model.cpu()
    processes = {} if group is None else {"processes": group.world}
    config = {**(extra_config or {}), "verb": "train", "model": cfg.model, "model_kwargs": cfg.model_kwargs,
              "dataset": data.name, "data_dir": cfg.data_dir, "val_size": len(data.val), "augment": augment,
              "device": str(device), "channels_last": channels_last, "threads": torch.get_num_threads(),
              **processes, "train": asdict(cfg.train), "structprune": __version__, "torch": torch.__version__}

    def publish() -> dict[str, Any]:
        metrics = run_metrics(model, data, train_seconds_this_session=round(seconds, 1), history=history)
        save_run(output, model, None, metrics, config)
        return metrics

    return output.path, on_main(group, publish)


def check_adoptable(src: str | Path, cfg: TrainRunConfig) -> None:
    """A trained run that can stand for `cfg`'s training: the same model on the same dataset with the same
    validation split, without masks (else the search would score images the network was trained on)."""
    run = load_checked_run(src)
    model, dataset, val_size = (run.config.get(k) for k in ("model", "dataset", "val_size"))
    if model != cfg.model or dataset != cfg.dataset:
        raise StructpruneError(f"{src}: holds {model!r} trained on {dataset!r}; this needs {cfg.model!r} on "
                               f"{cfg.dataset!r}")
    if (run.path / MASKS_FILE).is_file():
        raise StructpruneError(f"{src}: is a pruned run ({MASKS_FILE}); start from the dense one")
    if val_size is not None and cfg.val_size is not None and val_size != cfg.val_size:
        raise StructpruneError(f"{src}: trained with {val_size} validation images held out, this needs "
                               f"{cfg.val_size}: the search would score images the network was trained on")


def adopt_run(src: str | Path, out: Output | str | Path, cfg: TrainRunConfig) -> Path:
    """An already trained run copied into `out` as the train stage (checked by check_adoptable); its config
    names where it came from."""
    check_adoptable(src, cfg)
    output = as_output(out, "train", inputs=(src,))
    with output.publish() as tmp:
        for item in Path(src).iterdir():
            if item.is_file() and item.name != SENSITIVITY_FILE:
                shutil.copy2(item, tmp / item.name)
        config = {**read_json(Path(src) / CONFIG_FILE), "verb": "train", "adopted_from": str(src)}
        write_json_atomic(tmp / CONFIG_FILE, config)
    return output.path
