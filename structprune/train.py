"""Training and evaluation. (Minimal first version; issue-2 work adds checkpoints, resume, schedules.)"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from structprune.data import Dataset, Split, batches

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    seed: int = 0


@dataclass(frozen=True)
class EvalResult:
    mcr: float  # misclassification rate, a fraction in [0, 1]
    loss: float  # mean cross-entropy


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 500) -> EvalResult:
    was_training = model.training
    model.eval()
    wrong, loss_sum = 0, 0.0
    for x, y in batches(split, batch_size):
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        wrong += int((logits.argmax(1) != y).sum())
    model.train(was_training)
    n = max(len(split), 1)
    return EvalResult(wrong / n, loss_sum / n)


def train(
    model: nn.Module,
    data: Dataset,
    cfg: TrainConfig,
    after_step: Callable[[], None] | None = None,
) -> list[dict[str, float]]:
    """SGD with momentum and a cosine schedule. `after_step` runs after each optimizer step
    (retraining uses it to hold pruned weights at zero). Returns one record per epoch."""
    torch.manual_seed(cfg.seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(data.train) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(steps, 1))))
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        total = 0.0
        for x, y in batches(data.train, cfg.batch_size, shuffle=True, seed=cfg.seed * 1000 + epoch):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            sched.step()
            if after_step is not None:
                after_step()
            total += float(loss.detach()) * len(y)
        val = evaluate(model, data.val)
        history.append({"epoch": epoch + 1, "train_loss": total / len(data.train), "val_mcr": val.mcr, "val_loss": val.loss})
        log.info("epoch %d: train loss %.4f, val MCR %.4f", epoch + 1, history[-1]["train_loss"], val.mcr)
    return history
