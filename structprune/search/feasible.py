"""Candidates a step must not choose: masks that leave a kernel-masked convolution without any kernel (a channel
rung after a kernel step can remove every map its kept kernels read; see
`sparsity.channel_groups.layers_without_kernels`). Such a network computes only that layer's bias and cannot be
compacted, so the search scores it as worse than any real candidate."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from structprune.search.steps import Rung
from structprune.sparsity.channel_groups import ChannelGroups, layers_without_kernels
from structprune.sparsity.granularity import Granularity
from structprune.sparsity.masks import NetworkMask

INFEASIBLE = 2.0  # above any MCR (at most 1) plus its small cross-entropy tie-break


class FeasibleOnly:
    """A rung's objective with infeasible particles scored INFEASIBLE; other attributes are the objective's."""

    def __init__(self, score_fn: Any, rung: Rung, mask: NetworkMask, model: nn.Module, groups: ChannelGroups):
        self.score_fn, self.rung, self.mask, self.model, self.groups = score_fn, rung, mask, model, groups

    def __call__(self, particles: np.ndarray) -> np.ndarray:
        scores = np.array(self.score_fn(particles), dtype=float)
        for i, row in enumerate(particles):
            if layers_without_kernels(self.model, self.rung.to_mask(row, self.mask), self.groups):
                scores[i] = INFEASIBLE
        return scores

    def __getattr__(self, name: str) -> Any:
        return getattr(self.score_fn, name)


def may_empty_a_layer(rung: Rung, mask: NetworkMask) -> bool:
    """Whether a candidate of `rung` from `mask` can leave a layer without kernels (only with kernel masks)."""
    return rung.granularity is Granularity.KERNEL or any(layer.keep_kernel is not None for _, layer in mask)


def feasible_only(score_fn: Any, rung: Rung, mask: NetworkMask, model: nn.Module, groups: ChannelGroups) -> Any:
    return FeasibleOnly(score_fn, rung, mask, model, groups) if may_empty_a_layer(rung, mask) else score_fn
