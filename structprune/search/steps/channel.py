"""Channel scale: the search's units are the coupled channel groups (selection's and compaction's groups).

A rung keeps a number of the group's alive root channels (maps), rounded up to a multiple of `round_to`;
its particle is one bit per alive root channel. Rungs nest: each prunes further among the maps the previous
one kept. Cached scoring runs where the group is one conv feeding plain consumers in a chain.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn

from structprune.arch import example_input
from structprune.search.particle_filter import BitSpace
from structprune.search.scoring import channel_masks_from_bits
from structprune.search.steps.base import Rung, Step, register_step, top_bits
from structprune.sparsity.granularity import Granularity
from structprune.sparsity.masks import NetworkMask
from structprune.sparsity.selection import channel_l1

log = logging.getLogger(__name__)


def rounded_keep(keep: int, alive: int, multiple: int) -> int:
    """`keep` rounded up to a multiple of `multiple`, at most `alive`."""
    return keep if multiple <= 1 else min(alive, math.ceil(keep / multiple) * multiple)


class ChannelRung(Rung):
    granularity = Granularity.CHANNEL

    def __init__(self, net, layer, ratio, space, base, alive: torch.Tensor):
        super().__init__(net, layer, ratio, space, base)
        self.alive = alive  # bool [root channels]

    def decode(self, particles: np.ndarray) -> torch.Tensor:
        return channel_masks_from_bits(particles, self.alive)

    def to_mask(self, particle: np.ndarray, mask: NetworkMask) -> NetworkMask:
        return self.net.with_layer(mask, self.layer, keep_out=self.decode(particle[None])[0])

    def l1_particle(self) -> np.ndarray:
        return top_bits(channel_l1(self.net.model, self.net.groups[self.layer])[self.alive], self.space.keep)

    def tp_particle(self) -> np.ndarray:
        """Torch-Pruning's group L2 importance of the layer's maps: keep the most important alive ones."""
        from structprune.sparsity.tp_selection import tp_group_l2_importance

        model = self.net.model
        scores = tp_group_l2_importance(model, self.net.groups, example_input(model), roots=[self.layer])[self.layer]
        return top_bits(scores[self.alive], self.space.keep)

    def touched_modules(self) -> set[str]:
        """Every member of the channel group: its convs, batch norms and the consumers' input weights."""
        return set(self.net.groups[self.layer].member_names())

    def cache_blocker(self) -> str | None:
        reason = super().cache_blocker()
        if reason is not None:
            return reason
        group = self.net.groups[self.layer]
        producers = [m.name for m in group.members if m.role == "out"
                     and isinstance(self.net.model.get_submodule(m.name), nn.Conv2d | nn.Linear)]
        if producers != [self.layer]:
            return f"the maps of {self.layer} are coupled with {', '.join(p for p in producers if p != self.layer)}"
        for m in group.members:
            module = self.net.model.get_submodule(m.name)
            if m.role == "in" and getattr(module, "groups", 1) != 1:
                return f"{m.name}, a grouped or depthwise convolution, reads the maps of {self.layer}"
        return None


@register_step
class ChannelStep(Step):
    name = "channel"
    granularity = Granularity.CHANNEL

    def units(self, convs: list[str]) -> list[str]:
        """The roots of the conv-rooted channel groups among the searched convolutions."""
        groups = self.net.groups
        roots = []
        for name in convs:
            root = groups.root_of(name)
            if root == name and not groups[name].linear:
                roots.append(name)
            elif root is None:
                log.info("%s: no prunable channel group (e.g. the classifier); the channel step skips it", name)
            else:
                log.info("%s: its output maps are coupled to %s's; the channel step prunes them with %s", name, root, root)
        return roots

    def rungs(self, mask: NetworkMask, unit: str) -> list[Rung]:
        size = self.net.groups[unit].size
        alive = self.net.alive_outputs(mask, unit)
        n_alive = int(alive.sum())
        out: list[Rung] = []
        for r in self.ratios:
            keep = rounded_keep(max(1, round((1 - r) * size)), n_alive, self.cfg.channel_multiple)
            if keep < n_alive and (not out or keep < out[-1].space.keep):
                out.append(ChannelRung(self.net, unit, r, BitSpace(n_alive, keep), mask, alive=alive))
        return out
