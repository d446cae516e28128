"""Retraining after pruning: the masked network with its pruned weights held exactly at zero, or a compact
network trained as it is (it has no pruned weights left to hold)."""

from __future__ import annotations

from typing import Any

from torch import nn

from structprune.data import Dataset
from structprune.distill import Distillation
from structprune.sparsity.channel_groups import ChannelGroups
from structprune.sparsity.masking import MaskApplier, multiply_
from structprune.sparsity.masks import NetworkMask
from structprune.train import TrainConfig, train


def retrain_masked(
    model: nn.Module,
    mask: NetworkMask,
    data: Dataset,
    cfg: TrainConfig,
    groups: ChannelGroups | None = None,
    distill: Distillation | None = None,
    **train_options: Any,
) -> list[dict[str, float]]:
    """Train `model` in place under `mask`: pruned weights are zeroed now and again after every optimizer step
    (momentum and weight decay cannot revive them). `distill`: learn from a teacher as well as the labels
    (structprune.distill). `train_options` go to structprune.train.train."""
    factors = MaskApplier(model, groups).apply_(mask)

    def hold_zeros() -> None:
        multiply_(dict(model.named_parameters()), factors)

    return train(model, data, cfg, after_step=hold_zeros, distill=distill, **train_options)


def retrain_compact(model: nn.Module, data: Dataset, cfg: TrainConfig, distill: Distillation | None = None,
                    **train_options: Any) -> list[dict[str, float]]:
    """Train a compact network directly (its layers store only the kept weights); `distill` as retrain_masked."""
    return train(model, data, cfg, distill=distill, **train_options)
