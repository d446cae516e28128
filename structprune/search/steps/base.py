"""The kinds of search step, as strategies the driver runs without knowing which scale they prune.

A `Step` (one per kind: channel groups, kernels, kernel blocks, intra patterns, the global channel search) lists
its units (the layers or channel groups it visits, input side first) and, for a unit and the current mask,
the ladder of `Rung`s to try. A `Rung` is one particle space: its length, the decoding of particles into
the masks the cached scorer takes, into a NetworkMask, its L1 candidate (from selection's L1 scores), and
how its candidates are scored (`Rung.scorer`: the chain's cache, the traced graph's, or a full forward pass).
Steps register by name (`register_step`); `step_names(cfg)` picks them for a SearchConfig.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch

from structprune.errors import StructpruneError
from structprune.search.config import SearchConfig
from structprune.search.fx_graph import split_graph
from structprune.search.network import SearchNet
from structprune.search.particle_filter import Space
from structprune.search.scoring import LayerScorer, ScoreSet
from structprune.search.scoring_full import SCORING_CACHED, SCORING_FULL, SCORING_FX, FullForwardScorer
from structprune.search.scoring_fx import FxCachedScorer, full_forward_reason, tail_conv_share
from structprune.sparsity.granularity import Granularity, KernelStructure
from structprune.sparsity.masks import NetworkMask

log = logging.getLogger(__name__)
ScoreFn = Callable[[np.ndarray], np.ndarray]


class RungScoring(NamedTuple):
    """How a rung's candidates are scored: the scorer, the decoding of particles into what it takes, which
    scoring it is (SCORING_CACHED, SCORING_FX or SCORING_FULL) and why, in one phrase."""

    scorer: Any
    decode: Callable[[np.ndarray], Any]
    how: str
    why: str


def top_bits(scores: torch.Tensor, keep: int) -> np.ndarray:
    """A BitSpace particle keeping the `keep` best-scored units (ties: the first)."""
    bits = np.zeros(len(scores), dtype=np.int16)
    bits[torch.argsort(scores, descending=True, stable=True)[:keep].numpy()] = 1
    return bits


class Rung(ABC):
    """One candidate step: the particle space of a unit at a pruning level."""

    granularity: ClassVar[Granularity]

    def __init__(self, net: SearchNet, layer: str, ratio: float, space: Space, base: NetworkMask):
        self.net, self.layer, self.ratio, self.space = net, layer, ratio, space
        self.base = base  # the mask the rung starts from

    @property
    def length(self) -> int:
        """Entries per particle."""
        return self.space.n

    @property
    def shape(self) -> tuple[int, ...]:
        return self.net.shape(self.layer)

    @abstractmethod
    def decode(self, particles: np.ndarray) -> torch.Tensor:
        """Particles [P, length] -> the masks the cached scorer takes (see scoring.LayerScorer)."""

    @abstractmethod
    def to_mask(self, particle: np.ndarray, mask: NetworkMask) -> NetworkMask:
        """`mask` with this rung's choice `particle` [length] in place."""

    def network_masks(self, particles: np.ndarray) -> list[NetworkMask]:
        """Particles [P, length] -> one whole-network mask each (for full-forward scoring)."""
        return [self.to_mask(row, self.base) for row in particles]

    @abstractmethod
    def l1_particle(self) -> np.ndarray:
        """The L1-magnitude candidate, as a particle."""

    def tp_particle(self) -> np.ndarray:
        raise StructpruneError("--method tp-l2 applies to layer-by-layer channel pruning only")

    def cache_blocker(self) -> str | None:
        """Why cached scoring cannot score this rung (None: it can)."""
        if self.net.chain is None:
            return f"{type(self.net.model).__name__} is not a chain of modules (features + classifier)"
        if self.layer not in {name for name, _ in self.net.chain}:
            return f"{self.layer} sits inside a block of the chain, not in the chain itself"
        if self.net.conv(self.layer).groups != 1:
            return f"{self.layer} is a grouped or depthwise convolution"
        return None

    def cached_scorer(self, data: ScoreSet, tie: float, recalibrate: torch.Tensor | None) -> Any:
        return LayerScorer(self.net.model, self.layer, self.granularity, data, tie=tie, recalibrate=recalibrate)

    def touched_modules(self) -> set[str]:
        """The modules whose parameters this rung's candidates change (default: the layer)."""
        return {self.layer}

    def varying_layers(self) -> set[str]:
        """The layers whose masks differ between this rung's candidates (default: the layer)."""
        return {self.layer}

    def scorer(self, data: ScoreSet, tie: float, recalibrate: torch.Tensor | None) -> RungScoring:
        """How this rung's candidates are scored: the chain's cached activations where the rung allows them
        (`cached_scorer`, particles batched), else cached activations of the traced graph (scoring_fx) unless
        the part to rerun is (nearly) the whole network, else one full forward pass per candidate, with one
        log line saying why (once per reason)."""
        if self.cache_blocker() is None:
            try:
                return RungScoring(self.cached_scorer(data, tie, recalibrate), self.decode, SCORING_CACHED,
                                   "the layer sits in a chain of modules")
            except StructpruneError:  # e.g. a module between the conv and the next layer the cache cannot pass
                pass
        net = self.net
        try:
            traced = net.traced()
        except StructpruneError as exc:  # a network torch.fx cannot trace: said once
            why = str(exc)
            self._say(f"{exc}; scoring by a full forward pass per candidate where the chain's cache does not apply")
        else:
            try:
                split = split_graph(traced, net.model, self.touched_modules())
                macs = net.layer_macs(tuple(data.x.shape[1:]))
                reason = full_forward_reason(split, macs)
                if reason is None:
                    scorer = FxCachedScorer(net.model, net.applier, traced, self.touched_modules(), self.base, data,
                                            tie=tie, recalibrate=recalibrate, varying=self.varying_layers(),
                                            split=split)
                    why = f"the tail to rerun holds {tail_conv_share(split, macs):.0%} of the conv MACs"
                    log.debug("%s: %s; scoring with cached activations of the traced graph", self.layer, why)
                    return RungScoring(scorer, self.network_masks, SCORING_FX, why)
                why = reason
            except StructpruneError as exc:
                why = str(exc)
            self._say(f"{self.layer}: {why}; scoring by a full forward pass per candidate")
        scorer = FullForwardScorer(net.model, net.applier, data, tie=tie, recalibrate=recalibrate)
        return RungScoring(scorer, self.network_masks, SCORING_FULL, why)

    def _say(self, line: str) -> None:
        """Log `line` once per network (a ladder's rungs of one unit fall back for the same reason)."""
        if line not in self.net.said:
            self.net.said.add(line)
            log.info("%s", line)

    def objective(self, score_fn: ScoreFn, latency: Callable[[], Any], weight: float) -> ScoreFn:
        """The function the method minimises (default: the score itself)."""
        return score_fn


class Step(ABC):
    """One kind of step: which units it visits and the ladder of rungs of a unit."""

    name: ClassVar[str]
    granularity: ClassVar[Granularity]
    nested: ClassVar[bool] = True  # rungs are derived from the mask (False: their position is remembered)

    def __init__(self, net: SearchNet, cfg: SearchConfig):
        self.net, self.cfg = net, cfg

    @property
    def ratios(self) -> list[float]:
        return [self.cfg.ratio] if self.cfg.ratio is not None else sorted(self.cfg.ladder)

    def units(self, convs: list[str]) -> list[str]:
        """The units this step visits, input side first (default: the searched convolutions)."""
        return list(convs)

    @abstractmethod
    def rungs(self, mask: NetworkMask, unit: str) -> list[Rung]:
        """The ladder of `unit` from the current mask (levels already passed skipped)."""


STEPS: dict[str, type[Step]] = {}


def register_step(cls: type[Step]) -> type[Step]:
    if cls.name in STEPS:
        raise ValueError(f"search step {cls.name!r} is already registered")
    STEPS[cls.name] = cls
    return cls


def step_names(cfg: SearchConfig) -> list[str]:
    """The registered steps a SearchConfig runs, in order."""
    if cfg.scope == "global":
        return ["global-channel"]
    names = {Granularity.CHANNEL: "channel", Granularity.INTRA: "intra",
             Granularity.KERNEL: "kernel-blocks" if cfg.kernel.structure is KernelStructure.BLOCKS else "kernel"}
    return [names[g] for g in cfg.grans]


def make_steps(net: SearchNet, cfg: SearchConfig) -> list[Step]:
    return [STEPS[name](net, cfg) for name in step_names(cfg)]
