"""The structures a target search chooses among: one rung of a ladder per channel group.

A particle is a vector of choice numbers, one per conv-rooted channel group (the coupled groups of
structprune.sparsity.channel_groups, so the same code serves chains, residual adds, depthwise convs and
concatenation). Each group has its own ladder of kept-map counts: its size, then the multiples of `round_to`
below it, down to the floor (`min_keep` of its maps; never fewer than `round_to`, nor than one map). Choice c
of k picks the rung at the same *fraction* of the group's ladder (rung round(c·(L-1)/(k-1)) of L), so one
choice number means about the same keep fraction in every group and a uniform particle is a uniform
network. Which maps of a group go is decided by L1 importance (selection's `channel_l1`).

From the kept maps of every group follow the kept input and output maps of every conv and linear layer
(`layer_counts`), which the cost models read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from structprune.errors import StructpruneError
from structprune.sparsity.channel_groups import ChannelGroups
from structprune.sparsity.masks import NetworkMask
from structprune.sparsity.selection import channel_l1

DEFAULT_MIN_KEEP = 0.25  # the ladder's floor: a group keeps at least this fraction of its maps


def ladder(size: int, round_to: int, min_keep: float) -> list[int]:
    """Kept-map counts of one group, most first: `size`, then the multiples of `round_to` below it down to the
    floor ceil(min_keep·size) (rounded up to a multiple of round_to; one rung at least)."""
    floor = max(1, math.ceil(min_keep * size - 1e-9))
    floor = min(size, math.ceil(floor / round_to) * round_to)
    below = range((size - 1) // round_to * round_to, floor - 1, -round_to)
    return [size, *[c for c in below if 0 < c < size]]


@dataclass(frozen=True)
class LayerCounts:
    """One conv or linear layer under a structure: kept input and output maps, and the dense counts."""

    kept_in: int
    kept_out: int
    dense_in: int
    dense_out: int
    groups: int  # the layer's groups (1 for linear layers)
    depthwise: bool  # a depthwise conv: one input map per group, kept_in == kept_out


class TargetSpace:
    """The particle space of a target search over `model`'s channel groups, and what a particle means."""

    def __init__(self, model: nn.Module, groups: ChannelGroups, round_to: int, min_keep: float):
        if round_to < 1:
            raise StructpruneError(f"round_to must be at least 1, got {round_to}")
        if not 0.0 < min_keep <= 1.0:
            raise StructpruneError(f"the ladder's floor (minimum keep fraction) {min_keep} must be in (0, 1]")
        self.model, self.groups = model, groups
        self.roots = [g.root for g in groups if not g.linear]
        if not self.roots:
            raise StructpruneError(f"{type(model).__name__} has no prunable convolution channel group")
        self.ladders = {r: ladder(groups[r].size, round_to, min_keep) for r in self.roots}
        self.k = max(len(v) for v in self.ladders.values())
        self.order = {r: torch.argsort(channel_l1(model, groups[r]), descending=True, stable=True) for r in self.roots}
        self.layers = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        self._slices = self._member_slices()

    @property
    def n(self) -> int:
        return len(self.roots)

    def _member_slices(self) -> dict[tuple[str, str], list[tuple[str, torch.Tensor, torch.Tensor]]]:
        """(layer, role) -> [(group root, the layer's indices, their root channels)] for the searched groups."""
        out: dict[tuple[str, str], list[tuple[str, torch.Tensor, torch.Tensor]]] = {}
        for root in self.roots:
            for member in self.groups[root].members:
                out.setdefault((member.name, member.role), []).append((root, member.index, member.root))
        return out

    def rung(self, root: str, choice: int) -> int:
        """The ladder position of `choice` (0..k-1) in `root`'s ladder."""
        steps = len(self.ladders[root]) - 1
        return 0 if self.k == 1 else round(int(choice) * steps / (self.k - 1))

    def counts(self, particle: np.ndarray) -> dict[str, int]:
        """Kept maps per group root."""
        return {r: self.ladders[r][self.rung(r, c)] for r, c in zip(self.roots, particle.tolist(), strict=True)}

    def keeps(self, counts: dict[str, int]) -> dict[str, torch.Tensor]:
        """bool keep vector per group root: its `counts[root]` maps of highest L1."""
        out = {}
        for root, count in counts.items():
            keep = torch.zeros(self.groups[root].size, dtype=torch.bool)
            keep[self.order[root][:count]] = True
            out[root] = keep
        return out

    def mask(self, particle: np.ndarray) -> NetworkMask:
        """The channel masks of a particle (roots keeping every map are left out)."""
        mask = NetworkMask()
        for root, keep in self.keeps(self.counts(particle)).items():
            if not bool(keep.all()):
                mask.layer(root, self.model.get_submodule(root)).keep_out = keep
        return mask

    def _alive(self, name: str, role: str, size: int, keeps: dict[str, torch.Tensor]) -> int:
        alive = torch.ones(size, dtype=torch.bool)
        for root, index, channels in self._slices.get((name, role), []):
            alive[index] &= keeps[root][channels]
        return int(alive.sum())

    def layer_counts(self, particle: np.ndarray) -> dict[str, LayerCounts]:
        """Kept input/output maps of every conv and linear layer under the particle."""
        keeps = self.keeps(self.counts(particle))
        out = {}
        for name in self.layers:
            module = self.model.get_submodule(name)
            dense_in, dense_out = module.weight.shape[1], module.weight.shape[0]
            groups = getattr(module, "groups", 1)
            kept_out = self._alive(name, "out", dense_out, keeps)
            depthwise = groups > 1 and groups == getattr(module, "in_channels", 0)
            kept_in = kept_out if depthwise else self._alive(name, "in", dense_in * groups, keeps)
            out[name] = LayerCounts(kept_in, kept_out, dense_in * groups, dense_out, groups, depthwise)
        return out

    def uniform(self, choice: int) -> np.ndarray:
        return np.full(self.n, choice, dtype=np.int16)

    def describe(self, particle: np.ndarray) -> dict[str, dict[str, int]]:
        """Per group root: kept and total maps (the record of a chosen structure)."""
        return {r: {"kept": c, "maps": self.groups[r].size} for r, c in self.counts(particle).items()}
