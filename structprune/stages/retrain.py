"""The retrain stage: a pruned run retrained with its masks held at zero, or a compact run retrained as it is,
optionally distilled from a teacher run."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from structprune.data import Dataset
from structprune.distill import DEFAULT_TEMPERATURE, DEFAULT_WEIGHT, teacher_for
from structprune.distributed import on_main, setup, staged
from structprune.errors import StructpruneError
from structprune.layout import accepts_channels_last
from structprune.metrics import run_metrics
from structprune.output import Output
from structprune.retrain import retrain_compact, retrain_masked
from structprune.runcheck import load_checked_run
from structprune.runfiles import MASKS_FILE
from structprune.runfolder import as_output, run_fingerprint, save_run
from structprune.sparsity.selection import channel_groups_of
from structprune.stages.prune import load_masks, mask_summary, run_dataset
from structprune.train import TrainConfig, resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Teacher:
    """Distillation: the teacher run folder, or "source" (the trained run the student came from), A and T."""

    run: str | Path
    weight: float = DEFAULT_WEIGHT
    temperature: float = DEFAULT_TEMPERATURE


def retrain_run(src: str | Path, out: Output | str | Path, cfg: TrainConfig, data: Dataset | None = None, *,
                data_dir: str | None = None, teacher: Teacher | None = None, train_images: int | None = None,
                progress: bool = False, device: str = "auto",
                restart: bool = False, extra_config: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """Retrain the run in `src` on its dataset (or `data`) into `out`; with masks.json the pruned weights stay exactly
    zero. Checkpoints every epoch in the staging folder: the same call resumes. Under torchrun the retraining is
    data-parallel over its processes (structprune.distributed) and only the main process writes. Returns the run
    and its metrics. `train_images` retrains on a random subset of that many training images (seeded by cfg.seed).
    `device`: 'auto' (a CUDA GPU when PyTorch sees one), 'cpu' or 'cuda'; under torchrun each process takes the GPU
    of its LOCAL_RANK."""
    output = as_output(out, "retrain", inputs=(src,))
    group, dev = setup(resolve_device(device), cfg.batch_size)
    run = load_checked_run(src)
    data = data if data is not None else run_dataset(run, data_dir)
    if data is None:
        raise StructpruneError(f"{src}: config.json records no dataset to retrain on")
    data = replace(data, train=data.train.sample(train_images, cfg.seed))
    mask = load_masks(run)
    distill = None if teacher is None else teacher_for(teacher.run, run, data.train.x[:8], teacher.weight,
                                                         teacher.temperature)
    identity = {"source": run_fingerprint(Path(src)), "data": data.fingerprint(), "retrain": asdict(cfg),
                "distill": None if distill is None else distill.fingerprint()}
    teachers = () if distill is None else (distill.teacher,)
    fast = dev.type == "cpu" and accepts_channels_last(run.model, *teachers, sample=data.train.x[:2])
    options = {"checkpoint_dir": output.checkpoints, "progress": progress, "distill": distill, "group": group,
               "channels_last": fast}  # oneDNN's fast layout on the CPU where the networks accept it
    groups = channel_groups_of(run.model) if mask is not None else None  # traced on the CPU, before the move
    run.model.to(dev)
    with staged(group, output, identity, restart=restart):
        if mask is not None:
            history = retrain_masked(run.model, mask, data, cfg, groups=groups, **options)
        else:
            history = retrain_compact(run.model, data, cfg, **options)
    kept = mask_summary(run.model, mask, groups) if mask is not None else {}
    before = {k: run.metrics[k] for k in ("val_mcr", "test_mcr") if k in run.metrics}
    distilled = None if distill is None else {**distill.fingerprint(), "teacher_arg": str(teacher.run)}  # type: ignore[union-attr]
    config = {**run.config, **(extra_config or {}), "verb": "retrain", "source_run": str(src),
              "retrain": {**asdict(cfg), "source_run": str(src), "masked": mask is not None,
                          "train_images": len(data.train), "distill": distilled, "device": str(dev),
                          **({} if group is None else {"processes": group.world})}}
    extra = {MASKS_FILE: mask.to_json()} if mask is not None else None

    def publish() -> dict[str, Any]:
        metrics = run_metrics(run.model, data, **kept, before_retrain=before, history=history)
        run.model.cpu()
        save_run(output, run.model, run.arch, metrics, config, extra_json=extra)
        return metrics

    return output.path, on_main(group, publish)
