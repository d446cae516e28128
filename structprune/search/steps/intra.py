"""Intra-kernel scale: one (start, stride) pattern per input map of a conv (or one per layer, shared).

Rungs are tap counts nearest the ladder's ratios, fewest pruned first; a rung replaces the layer's pattern
(taps pruned before come back at zero), so rungs do not nest and their position is remembered. Every conv
larger than 1×1 takes patterns, depthwise ones included (one pattern per map there); 1×1 convs are skipped.
With `intra_fast` only the one-rectangle patterns are choices and convs reading 3 or fewer maps are skipped.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from structprune.errors import StructpruneError
from structprune.search.particle_filter import ChoiceSpace
from structprune.search.scoring import intra_masks_from_choices
from structprune.search.steps.base import Rung, Step, register_step
from structprune.sparsity.granularity import Granularity, IntraPattern, fast_patterns
from structprune.sparsity.intra_selection import pattern_l1
from structprune.sparsity.masks import NetworkMask
from structprune.sparsity.selection_base import FEW_INPUT_MAPS

log = logging.getLogger(__name__)


class IntraRung(Rung):
    granularity = Granularity.INTRA

    def __init__(self, net, layer, ratio, space, base, patterns: list[IntraPattern], shared: bool):
        super().__init__(net, layer, ratio, space, base)
        self.patterns = patterns  # the choices
        self.shared = shared  # one choice for every input map of the layer

    def _per_input(self, particles: np.ndarray) -> np.ndarray:
        return np.repeat(particles, self.shape[1], axis=1) if self.shared else particles

    def decode(self, particles: np.ndarray) -> torch.Tensor:
        return intra_masks_from_choices(self._per_input(particles), self.patterns, self.shape)

    def to_mask(self, particle: np.ndarray, mask: NetworkMask) -> NetworkMask:
        choices = self._per_input(particle[None])[0]
        return self.net.with_layer(mask, self.layer, intra=[self.patterns[int(c)] for c in choices])

    def l1_particle(self) -> np.ndarray:
        """Per input map (or for the layer) the pattern keeping the most L1 of the alive kernels."""
        table = pattern_l1(self.net.conv(self.layer), self.net.alive_kernels(self.base, self.layer), self.patterns)
        if self.shared:
            table = table.sum(0, keepdim=True)
        return table.argmax(1).cpu().numpy().astype(np.int16)


@register_step
class IntraStep(Step):
    name = "intra"
    granularity = Granularity.INTRA
    nested = False

    def units(self, convs: list[str]) -> list[str]:
        out = []
        for name in convs:
            if self.net.conv(name).kernel_size in ((1, 1), 1):
                log.info("%s: a 1×1 convolution has no intra-kernel patterns; the intra step skips it", name)
            elif self.cfg.intra_fast and self.net.conv(name).in_channels <= FEW_INPUT_MAPS:
                log.info("%s reads %d or fewer maps: intra patterns there run slower than dense; the intra step skips it",
                         name, FEW_INPUT_MAPS)
            else:
                out.append(name)
        return out

    def rungs(self, mask: NetworkMask, unit: str) -> list[Rung]:
        shape = self.net.shape(unit)
        positions = shape[2] * shape[3]
        patterns = self.cfg.intra_patterns
        if self.cfg.intra_fast:
            patterns = tuple(p for p in fast_patterns((shape[2], shape[3])) if len(p.taps(positions)) < positions)
        allowed = IntraPattern.all_patterns(positions) if patterns is None else list(patterns)
        available = sorted({len(p.taps(positions)) for p in allowed} - {positions, 0})
        if not available:
            raise StructpruneError(f"{unit}: no allowed intra-kernel pattern prunes a kernel of {positions} positions")
        # the tap counts nearest to the ladder's ratios, fewest pruned first
        counts = sorted({min(available, key=lambda c: (abs(c - (1 - r) * positions), -c)) for r in self.ratios},
                        reverse=True)
        out: list[Rung] = []
        for c in counts:
            chosen = [p for p in IntraPattern.with_taps(positions, c) if p in allowed]
            choices = 1 if self.cfg.intra_shared else shape[1]
            out.append(IntraRung(self.net, unit, 1 - c / positions, ChoiceSpace(choices, len(chosen)), mask,
                                 patterns=chosen, shared=self.cfg.intra_shared))
        return out
