"""Scoring candidate masks of any network: one full forward pass per candidate, the mask applied in place.

The fallback when neither cached scoring runs: not the chain's (scoring.py: a network that is not a chain, a
depthwise conv, a channel group that spans more than one conv), nor the traced graph's (scoring_fx.py: a
network torch.fx cannot trace, or a graph that defeats the cache). Each candidate is a whole NetworkMask;
MaskApplier writes its masked weights into the model, the score images run through it, and the weights are
restored. With `recalibrate` images, every batch norm re-estimates its statistics under the candidate first
(and gets them back afterwards). Score as in scoring.py: MCR + tie · mean cross-entropy.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from structprune.search.scoring import ScoreSet, reestimate_norms
from structprune.sparsity.masking import MaskApplier
from structprune.sparsity.masks import NetworkMask

SCORING_CACHED = "cached activations"
SCORING_FULL = "full forward per candidate"
SCORING_FX = "cached-fx"  # scoring_fx.FxCachedScorer: cached activations of the traced graph


def norm_stats(norms: list[nn.Module]) -> list[tuple[torch.Tensor, ...]]:
    """A copy of the running statistics of each batch norm."""
    return [(bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()) for bn in norms]


def restore_norm_stats(norms: list[nn.Module], saved: list[tuple[torch.Tensor, ...]]) -> None:
    for bn, (mean, var, tracked) in zip(norms, saved, strict=True):
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.num_batches_tracked.copy_(tracked)


class MaskScorer:
    """Scores whole-network masks one at a time: `_one(mask)` gives (MCR, mean cross-entropy) on the score
    images; the score is MCR + tie · cross-entropy."""

    tie: float

    def _one(self, mask: NetworkMask) -> tuple[float, float]:
        raise NotImplementedError

    @torch.no_grad()
    def mcr_and_ce(self, masks: list[NetworkMask]) -> tuple[np.ndarray, np.ndarray]:
        """One NetworkMask per candidate -> MCR [P], CE [P]."""
        results = [self._one(mask) for mask in masks]
        return np.array([r[0] for r in results]), np.array([r[1] for r in results])

    def score_masks(self, masks: list[NetworkMask]) -> np.ndarray:
        mcr, ce = self.mcr_and_ce(masks)
        return mcr + self.tie * ce


class FullForwardScorer(MaskScorer):
    """Scores whole-network masks of `model` (in eval mode) on a fixed image set."""

    def __init__(self, model: nn.Module, applier: MaskApplier, data: ScoreSet, tie: float = 1e-3,
                 batch: int = 1024, recalibrate: torch.Tensor | None = None, recal_batch: int = 64):
        self.model, self.applier, self.x, self.y = model, applier, data.x, data.y
        self.tie, self.batch, self.recalibrate, self.recal_batch = tie, batch, recalibrate, recal_batch
        self.norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def _one(self, mask: NetworkMask) -> tuple[float, float]:
        wrong, ce = 0, 0.0
        with self.applier.applied(mask):
            recalibrates = self.recalibrate is not None and bool(self.norms)
            saved = norm_stats(self.norms) if recalibrates else []
            if recalibrates:
                images = self.recalibrate
                reestimate_norms(self.norms, (lambda s=s: self.model(images[s:s + self.recal_batch])
                                              for s in range(0, len(images), self.recal_batch)))
            try:
                for start in range(0, len(self.y), self.batch):
                    logits = self.model(self.x[start:start + self.batch])
                    y = self.y[start:start + self.batch]
                    wrong += int((logits.argmax(1) != y).sum())
                    ce += float(F.cross_entropy(logits, y, reduction="sum"))
            finally:
                restore_norm_stats(self.norms if recalibrates else [], saved)
        n = len(self.y)
        return wrong / n, ce / n
