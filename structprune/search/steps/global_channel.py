"""The global channel search: one rung over every searched channel group's maps at once, at a fixed overall
ratio; the particle is one bit per alive map of all groups, concatenated. Cached scoring runs the chain with
each group's kept maps applied where they enter the next weighted layer (scoring.ChainChannelScorer); on other
networks, one full forward per candidate. With a latency weight λ > 0 the objective adds λ × the conv latency
predicted from a measured table (chains only: the table's input counts follow the chain)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from structprune.errors import StructpruneError
from structprune.search.particle_filter import BitSpace
from structprune.search.scoring import ChainChannelScorer, ScoreSet, channel_masks_from_bits
from structprune.search.steps.base import Rung, ScoreFn, Step, register_step, top_bits
from structprune.search.steps.channel import ChannelStep
from structprune.sparsity.granularity import Granularity
from structprune.sparsity.masks import NetworkMask
from structprune.sparsity.selection import channel_l1

log = logging.getLogger(__name__)
GLOBAL_UNIT = "*"


class GlobalChannelRung(Rung):
    granularity = Granularity.CHANNEL

    def __init__(self, net, ratio, space, base, alive: torch.Tensor, layers: list[str], sizes: list[int]):
        super().__init__(net, GLOBAL_UNIT, ratio, space, base)
        self.alive = alive  # bool [maps of every layer, concatenated]
        self.layers, self.sizes = layers, sizes  # the group roots and their map counts

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.alive),)

    def decode(self, particles: np.ndarray) -> torch.Tensor:
        return channel_masks_from_bits(particles, self.alive)

    def to_mask(self, particle: np.ndarray, mask: NetworkMask) -> NetworkMask:
        keep = self.decode(particle[None])[0]
        for name, part in zip(self.layers, keep.split(self.sizes), strict=True):
            mask = self.net.with_layer(mask, name, keep_out=part.clone())
        return mask

    def l1_particle(self) -> np.ndarray:
        """L1 of each map over its group's mean L1; each layer's best alive map is kept (as selection's global L1
        keeps it, and as the objective asks: a candidate that empties a layer does not compact)."""
        norms = [channel_l1(self.net.model, self.net.groups[n]) for n in self.layers]
        scores = torch.cat([v / v.mean().clamp_min(1e-12) for v in norms])[self.alive]
        start, protected = 0, []
        for alive in self.alive.split(self.sizes):
            count = int(alive.sum())
            if count:
                protected.append(start + int(scores[start:start + count].argmax()))
            start += count
        scores[protected] = float(scores.max()) + 1.0
        return top_bits(scores, self.space.keep)

    def touched_modules(self) -> set[str]:
        return {name for layer in self.layers for name in self.net.groups[layer].member_names()}

    def varying_layers(self) -> set[str]:
        return set(self.layers)

    def cache_blocker(self) -> str | None:
        if self.net.chain is None:
            return f"{type(self.net.model).__name__} is not a chain of modules (features + classifier)"
        return None

    def cached_scorer(self, data: ScoreSet, tie: float, recalibrate: torch.Tensor | None) -> Any:
        return ChainChannelScorer(self.net.model, self.layers, data, tie=tie)

    def objective(self, score_fn: ScoreFn, latency: Callable[[], Any], weight: float) -> ScoreFn:
        """Add λ·predicted latency, and rule out masks that empty a layer."""
        if weight > 0 and self.net.chain is None:
            raise StructpruneError("the latency-aware global search needs a chain network (its latency table "
                                   "follows the chain)")
        table = latency() if weight > 0 else None
        first_in = self.net.conv(self.layers[0]).in_channels

        def objective(particles: np.ndarray) -> np.ndarray:
            keeps = self.decode(particles)  # [P, total maps]
            per_layer = torch.stack([part.sum(1) for part in keeps.split(self.sizes, dim=1)], 1)  # [P, layers]
            scores = score_fn(particles) + 10.0 * (per_layer == 0).any(1).double().numpy()
            if table is not None:
                for p, counts in enumerate(per_layer.tolist()):
                    ins = [first_in, *counts[:-1]]
                    scores[p] += weight * table.network_ms(
                        {name: (i, o) for name, i, o in zip(self.layers, ins, counts, strict=True)})
            return scores

        objective.close = getattr(score_fn, "close", None)
        objective.mcr_of = getattr(score_fn, "mcr_of", None)
        return objective


@register_step
class GlobalChannelStep(Step):
    name = "global-channel"
    granularity = Granularity.CHANNEL
    nested = False  # one rung, tried once

    def units(self, convs: list[str]) -> list[str]:
        self.layers = ChannelStep(self.net, self.cfg).units(convs)
        if self.cfg.round_to > 1:
            log.info("--round-to: the global search keeps a total count of maps, free per layer; not rounded")
        return [GLOBAL_UNIT]

    def rungs(self, mask: NetworkMask, unit: str) -> list[Rung]:
        alive = torch.cat([self.net.alive_outputs(mask, name) for name in self.layers])
        sizes = [self.net.groups[name].size for name in self.layers]
        keep = max(len(self.layers), round((1 - self.cfg.ratio) * len(alive)))
        n = int(alive.sum())
        return [GlobalChannelRung(self.net, self.cfg.ratio, BitSpace(n, min(keep, n)), mask, alive=alive,
                                  layers=self.layers, sizes=sizes)]
