"""Training and evaluation: SGD with momentum (or Adam), cosine or step schedule, per-epoch checkpoints.

Every epoch's randomness (shuffling, augmentation, dropout) is drawn from generators seeded by
`epoch_seed(seed, epoch)`, and the learning rate is a pure function of the step number, so a run
resumed from a checkpoint ends with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from structprune.augment import crop_and_flip
from structprune.checkpoint import checkpoint_bytes, has_checkpoint, load_checkpoint, save_checkpoint
from structprune.data import Dataset, Split, batches
from structprune.distill import Distillation
from structprune.distributed import Group, local_batch_size
from structprune.errors import StructpruneError
from structprune.layout import FastLayout, fast_layout

log = logging.getLogger(__name__)

SCHEDULES = ("cosine", "step", "constant")
OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters. `schedule="step"` multiplies the rate by `lr_gamma` at 50% and 75% of the epochs."""

    epochs: int = 3
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    seed: int = 0
    schedule: str = "cosine"
    optimizer: str = "sgd"
    lr_gamma: float = 0.1
    warmup_epochs: float = 0.0  # linear ramp from lr/steps to lr before the schedule starts

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1:
            raise StructpruneError(f"epochs must be >= 0 and batch size >= 1 (got {self.epochs}, {self.batch_size})")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise StructpruneError(f"warm-up ({self.warmup_epochs} epochs) must be between 0 and the {self.epochs} epochs")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise StructpruneError(f"learning rate must be a finite number > 0 (got {self.lr})")
        if not 0 <= self.momentum < 1:
            raise StructpruneError(f"momentum must be in [0, 1) (got {self.momentum})")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise StructpruneError(f"weight decay must be a finite number >= 0 (got {self.weight_decay})")
        if not (0 < self.lr_gamma <= 1):
            raise StructpruneError(f"lr_gamma must be in (0, 1] (got {self.lr_gamma})")
        if self.schedule not in SCHEDULES:
            raise StructpruneError(f"unknown schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}")
        if self.optimizer not in OPTIMIZERS:
            raise StructpruneError(f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")


@dataclass(frozen=True)
class EvalResult:
    mcr: float  # misclassification rate, a fraction in [0, 1]
    loss: float  # mean cross-entropy


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StructpruneError("--device cuda: no CUDA GPU is available to PyTorch here")
    if name not in ("cpu", "cuda"):
        raise StructpruneError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)


def _model_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@torch.no_grad()
def _error_sums(model: nn.Module, split: Split, batch_size: int) -> tuple[int, float]:
    """Misclassified images and summed cross-entropy of `model` on `split` (eval mode; the mode is restored after)."""
    was_training = model.training
    model.eval()
    device = _model_device(model)
    wrong, loss_sum = 0, 0.0
    layout = FastLayout()
    for x, y in batches(split, batch_size):
        x, y = x.to(device), y.to(device)
        logits = layout(model, x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        wrong += int((logits.argmax(1) != y).sum())
    model.train(was_training)
    return wrong, loss_sum


def evaluate(model: nn.Module, split: Split, batch_size: int = 500, group: Group | None = None) -> EvalResult:
    """MCR and mean cross-entropy of `model` on `split`; with `group`, every process measures its share of the
    images and the sums are all-reduced (all processes get the same result)."""
    if group is None:
        wrong, loss_sum = _error_sums(model, split, batch_size)
    else:
        share = Split(group.share(split.x), group.share(split.y))
        wrong, loss_sum = group.all_sum(list(_error_sums(model, share, batch_size)))
    n = max(len(split), 1)
    return EvalResult(wrong / n, loss_sum / n)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of all randomness in epoch `epoch` (0-based) of a run seeded with `seed`."""
    return (seed * 1_000_003 + epoch) % (2**63)


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate for optimizer step `step` (0-based) of the whole run: a linear warm-up over
    `warmup_epochs`, then the schedule over the remaining steps."""
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    step, total = step - warmup, max(cfg.epochs * steps_per_epoch - warmup, 1)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total))
    if cfg.schedule == "step":
        drops = sum(step >= int(total * f) for f in (0.5, 0.75))
        return cfg.lr * cfg.lr_gamma**drops
    return cfg.lr


def _diverged(what: str, checkpoint_dir: str | Path | None, epoch: int) -> StructpruneError:
    kept = (f"; the checkpoint after epoch {epoch} is kept in {checkpoint_dir}"
            if has_checkpoint(checkpoint_dir) else "")
    return StructpruneError(f"training diverged: {what}{kept}; try a lower learning rate (--lr) or weight decay")


def _loss(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor, distill: Distillation | None) -> torch.Tensor:
    """The mean loss of a batch; an empty share (a last global batch smaller than the process count) gives a zero
    that still reaches every parameter, so that DistributedDataParallel's reduction runs on every process."""
    if len(y) == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits, y) if distill is None else distill.loss(logits, x, y)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def train(
    model: nn.Module,
    data: Dataset,
    cfg: TrainConfig,
    after_step: Callable[[], None] | None = None,
    *,
    checkpoint_dir: str | Path | None = None,
    progress: bool = False,
    device: str | torch.device | None = None,
    channels_last: bool = False,
    augment: bool | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    distill: Distillation | None = None,
    group: Group | None = None,
) -> list[dict[str, float]]:
    """Train `model` in place on `data.train`; return one record per epoch (train loss, val MCR/loss).

    after_step     runs after each optimizer step (retraining uses it to hold pruned weights at zero)
    checkpoint_dir when given, a checkpoint is written after every epoch and an existing one is resumed
                   (its config must equal `cfg`)
    progress       show a tqdm bar per epoch on stderr
    device         torch device or 'auto'/'cpu'/'cuda'; None keeps the model where it is
    channels_last  run convolutions in NHWC layout (faster with oneDNN on CPU)
    augment        crop+flip the training images; None follows `data.augment`
    distill        a teacher: the loss (and the recorded train loss) becomes structprune.distill's
                   (1 − A)·CE + A·T²·KL(teacher ‖ student); a checkpoint records the teacher, A and T
    group          data-parallel over torchrun's processes (structprune.distributed): `cfg.batch_size` is the global
                   batch, each process trains on its share in DistributedDataParallel; only the main process writes
                   checkpoints and shows progress, and it sends the checkpoint it resumes from to the others
    """
    if device is not None:
        model.to(resolve_device(device) if isinstance(device, str) else device)
    dev = _model_device(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    augment = data.augment if augment is None else augment
    opt = make_optimizer(model, cfg)
    if group is not None:
        local_batch_size(cfg.batch_size, group.world)
        progress = progress and group.is_main
    steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
    config = asdict(cfg) if distill is None else {**asdict(cfg), "distill": distill.fingerprint()}
    if distill is not None:
        distill.teacher.to(dev)
    history: list[dict[str, float]] = []
    start = 0
    saved_bytes = checkpoint_bytes(checkpoint_dir) if group is None or group.is_main else None
    if group is not None:  # the main process's checkpoint (only its machine holds the staging folder) goes to all
        saved_bytes = group.broadcast_bytes(saved_bytes) or None
    if saved_bytes is not None and checkpoint_dir is not None:
        record = load_checkpoint(checkpoint_dir, model, opt, saved_bytes)
        saved = {**asdict(TrainConfig()), **record.get("config", {})}  # fields added later keep their defaults
        if saved != config:
            raise StructpruneError(
                f"{checkpoint_dir}: checkpoint was made with other settings ({record.get('config')}); "
                "delete it (structprune train: --restart) or pass the same settings"
            )
        start, history = int(record["epoch"]), list(record["history"])
        log.info("resuming from %s after epoch %d", checkpoint_dir, start)
    net = model if group is None else group.wrap(model)  # wrapped after loading: every process starts alike
    writes = checkpoint_dir is not None and (group is None or group.is_main)
    for epoch in range(start, cfg.epochs):
        seed = epoch_seed(cfg.seed, epoch)
        torch.manual_seed(seed)  # dropout and any other global-RNG use
        gen = torch.Generator().manual_seed(seed)  # shuffle order, then augmentation, in that order
        model.train()
        total, seen = 0.0, 0
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", file=sys.stderr,
                   disable=not progress, leave=False, unit="batch")
        for i, (x, y) in enumerate(batches(data.train, cfg.batch_size, shuffle=True, seed=seed)):
            if augment:
                x = crop_and_flip(x, gen)  # the whole global batch: the generator draws what one process would
            batch = len(y)
            if group is not None:
                x, y = group.share(x), group.share(y)
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            if channels_last:
                x = fast_layout(x)
            for param_group in opt.param_groups:
                param_group["lr"] = lr_at(cfg, epoch * steps_per_epoch + i, steps_per_epoch)
            opt.zero_grad(set_to_none=True)
            logits = net(x)
            loss = _loss(logits, x, y, distill)
            value = float(loss.detach())
            if group is not None:  # DDP averages over processes: weight each share by its size in the global batch
                value = group.all_sum([value * len(y)])[0] / batch
                loss = loss * (len(y) * group.world / batch)
            if not math.isfinite(value):
                raise _diverged(f"the loss became {value} at epoch {epoch + 1}, batch {i + 1}", checkpoint_dir, epoch)
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step()
            total += value * batch
            seen += batch
            bar.update(1)
            if i % 20 == 0:
                bar.set_postfix(mean_loss=f"{total / seen:.4f}")  # mean over the epoch so far
        bar.close()
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise _diverged(f"a weight became NaN or infinite in epoch {epoch + 1}", checkpoint_dir, epoch)
        val = evaluate(model, data.val, group=group)
        history.append({"epoch": epoch + 1, "train_loss": total / max(seen, 1), "val_mcr": val.mcr, "val_loss": val.loss})
        log.info("epoch %d/%d: train loss %.4f, val MCR %.4f", epoch + 1, cfg.epochs, history[-1]["train_loss"], val.mcr)
        if writes:
            save_checkpoint(checkpoint_dir, model, opt, {"epoch": epoch + 1, "history": history, "config": config})
        if on_epoch is not None:
            on_epoch(history[-1])
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    return history
