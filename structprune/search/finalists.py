"""Choosing among a target search's best structures by a short fine-tune of each.

The target search ranks structures by their validation MCR right after pruning (batch norms re-estimated), and a
network's accuracy before retraining is a weak guide to its accuracy after it: a structure that loses least at
once may recover least. So the search's `count` best distinct structures, and its uniform and global-importance
start structures (target_search.seed_structures), are each compacted and trained alike (one pass over the same
`images` training images in the same order, SGD with the retraining defaults), then scored on `check` validation
images that the search's scoring did not use; the lowest MCR wins (ties: the search's own order). The fine-tuned
weights are thrown away: the result keeps the pruned weights, to be retrained as any pruned run is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from torch import nn

from structprune.compact.compaction import compact
from structprune.data import Dataset, Split
from structprune.errors import StructpruneError
from structprune.search.target_space import TargetSpace
from structprune.sparsity.channel_groups import ChannelGroups
from structprune.train import TrainConfig, train

log = logging.getLogger("structprune.search")

FINETUNE_SEED = 1000  # the fine-tune's image sample and order: apart from the retraining seeds people use (0, 1, 2)


@dataclass(frozen=True)
class FinalistConfig:
    """How finalists are chosen: `count` best structures of the search (0: off, the search's best is taken), each
    trained on `images` training images at learning rate `lr`, scored on `check_images` validation images."""

    count: int = 0
    images: int = 5000
    lr: float = 0.01
    check_images: int = 1000
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.count < 0 or self.images < 1 or self.check_images < 1 or self.batch_size < 1 or not self.lr > 0:
            raise StructpruneError("finalists must be >= 0; finalist images, check images and batch size >= 1; lr > 0")


def check_split(data: Dataset, used: int, count: int) -> Split:
    """The validation images after the first `used` (those the search scored on), at most `count`; one line
    when none are left."""
    rest = len(data.val) - used
    if rest < 1:
        raise StructpruneError(f"choosing finalists needs validation images the search did not score on; it scored "
                               f"on {used} of {len(data.val)} (lower --score-images)")
    return Split(data.val.x[used:used + count], data.val.y[used:used + count])


def finetune_mcr(small: nn.Module, data: Dataset, check: Split, cfg: FinalistConfig) -> float:
    """`small` trained in place for one pass over `cfg.images` training images; its MCR on `check`."""
    subset = replace(data, train=data.train.sample(cfg.images, FINETUNE_SEED), val=check)
    history = train(small, subset, TrainConfig(epochs=1, lr=cfg.lr, batch_size=cfg.batch_size, seed=FINETUNE_SEED),
                    channels_last=True)
    return float(history[-1]["val_mcr"])


def pick_finalist(model: nn.Module, groups: ChannelGroups, space: TargetSpace, finalists: list[np.ndarray],
                  data: Dataset, check: Split, cfg: FinalistConfig,
                  finetune: Callable[[nn.Module, Dataset, Split, FinalistConfig], float] = finetune_mcr,
                  ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The finalist with the lowest MCR after the fine-tune, and one record per finalist (its choices, its position
    among the finalists: the search's order, the start structures last when they were added; its MCR after
    the fine-tune)."""
    if not finalists:
        raise ValueError("no finalists to choose from")
    records = []
    for rank, particle in enumerate(finalists):
        small = compact(model, space.mask(particle), groups=groups)
        mcr = finetune(small, data, check, cfg)
        records.append({"choices": particle.tolist(), "position": rank + 1, "finetune_mcr": mcr})
        log.info("finalist %d/%d: MCR %.4f on %d check images after a fine-tune on %d images", rank + 1,
                 len(finalists), mcr, len(check), cfg.images)
    best = min(range(len(records)), key=lambda i: (records[i]["finetune_mcr"], i))
    records[best]["chosen"] = True
    return finalists[best], records
