"""Scoring candidate masks of one layer on a validation subset, without copying the model.

The network is viewed as a chain of modules (`as_chain`: a Sequential, or a model made of `features` and
`classifier` Sequentials, like the paper networks). To score masks of conv k:
  channel scale  pruning output maps of conv k zeroes those maps up to the next weighted layer (through
                 ReLU / pooling / the map's batch norm, itself masked). So the activation entering that
                 next layer is computed once and cached; a particle only zeroes channels of the cache and
                 runs the rest of the chain. P particles run as one batch of P·N images.
  kernel/intra   the activation entering conv k is cached; conv k runs once per particle with its masked
                 weights, then the rest of the chain runs on all particles' activations as one batch.
Images are processed in chunks so that P·chunk rows stay under `max_rows`.

The score of a particle is  MCR + tie · mean cross-entropy  (lower is better): MCR moves in steps of 1/N,
and the cross-entropy term (tie = 1e-3 by default, far below 1/N for N ≤ 1000) orders equal MCRs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from structprune.errors import StructpruneError
from structprune.sparsity.granularity import Granularity, IntraPattern

# Modules between a conv and the next weighted layer through which a zeroed map stays zero
# (its batch norm counts: a pruned map's norm is pruned with it).
ZERO_PRESERVING = (nn.ReLU, nn.ReLU6, nn.MaxPool2d, nn.AvgPool2d, nn.Dropout, nn.Identity, nn.BatchNorm2d)
WEIGHTED = (nn.Conv2d, nn.Linear, nn.Flatten)


def as_chain(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of a sequential network, in execution order."""
    if isinstance(model, nn.Sequential):
        parts = [("", model)]
    elif hasattr(model, "features") and hasattr(model, "classifier"):
        parts = [("features", model.features), ("classifier", model.classifier)]
    else:
        raise StructpruneError(
            f"{type(model).__name__}: cached scoring needs a sequential network (features + classifier)"
        )
    chain = []
    for prefix, seq in parts:
        if not isinstance(seq, nn.Sequential):
            raise StructpruneError(f"{type(model).__name__}.{prefix} is not an nn.Sequential")
        for name, module in seq.named_children():
            chain.append((f"{prefix}.{name}" if prefix else name, module))
    return chain


def conv_layers(model: nn.Module) -> list[str]:
    """Names of the chain's Conv2d layers, input side first."""
    return [name for name, m in as_chain(model) if isinstance(m, nn.Conv2d)]


@dataclass
class ScoreSet:
    """Validation images for scoring, [N, C, H, W] and labels [N]."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.y) == 0:
            raise StructpruneError("the validation set for scoring is empty")


def run_chain(chain: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for module in chain:
        x = module(x)
    return x


def _chunk_rows(count: int, particles: int, max_rows: int) -> int:
    return max(1, min(count, max_rows // max(particles, 1)))


class LayerScorer:
    """Scores masks of one conv layer of `model` (in eval mode) on a fixed image set."""

    def __init__(self, model: nn.Module, layer: str, granularity: Granularity, data: ScoreSet,
                 tie: float = 1e-3, max_rows: int = 4096, recalibrate: torch.Tensor | None = None,
                 recal_batch: int = 64):
        """`recalibrate`: training images [B, C, H, W]; when given, the batch norms after the scored step
        re-estimate their statistics for every candidate (batches of `recal_batch`) before it is scored."""
        chain = as_chain(model)
        names = [n for n, _ in chain]
        if layer not in names or not isinstance(chain[names.index(layer)][1], nn.Conv2d):
            raise StructpruneError(f"{layer!r} is not a convolution of the network's chain")
        self.model, self.layer, self.granularity, self.tie, self.max_rows = model, layer, granularity, tie, max_rows
        self.y = data.y
        k = names.index(layer)
        self.conv: nn.Conv2d = chain[k][1]
        if self.conv.groups != 1:
            raise StructpruneError(f"{layer}: grouped convolutions are not supported by the scorer")
        if granularity is Granularity.CHANNEL:
            cut = k + 1
            while cut < len(chain) and not isinstance(chain[cut][1], WEIGHTED):
                if not isinstance(chain[cut][1], ZERO_PRESERVING):
                    raise StructpruneError(f"{chain[cut][0]}: {type(chain[cut][1]).__name__} between "
                                           f"{layer} and the next layer does not keep pruned maps at zero")
                cut += 1
            prefix, self.rest = chain[:cut], [m for _, m in chain[cut:]]
        else:
            prefix, self.rest = chain[:k], [m for _, m in chain[k + 1:]]
        with torch.no_grad():
            self.cache = run_chain([m for _, m in prefix], data.x)  # [N, C, H, W] entering the scored step
            self.recal_cache = None if recalibrate is None else run_chain([m for _, m in prefix], recalibrate)
        self.recal_batch = recal_batch
        self.norms = [m for r in self.rest for m in r.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def _masked(self, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The activations entering the rest of the chain for each particle, [P·n, ...] (particle-major)."""
        count = len(masks)
        if self.granularity is Granularity.CHANNEL:
            keep = masks.to(x.dtype).view(count, 1, -1, *([1] * (x.dim() - 2)))  # [P, 1, C, 1, 1]
            return (x.unsqueeze(0) * keep).flatten(0, 1)  # [P·n, C, H, W]
        # one conv per particle: stacking them into one wide conv costs a transpose copy of its output
        weights = self.conv.weight.unsqueeze(0) * masks  # [P, O, I, kh, kw]
        return torch.cat([F.conv2d(x, w, self.conv.bias, self.conv.stride, self.conv.padding, self.conv.dilation)
                          for w in weights])  # [P·n, O, H, W]

    @contextmanager
    def _recalibrated(self, mask: torch.Tensor) -> Iterator[None]:
        """Batch-norm statistics of the rest of the chain re-estimated for one candidate, restored on exit."""
        saved = [(bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()) for bn in self.norms]
        try:
            batches = range(0, len(self.recal_cache), self.recal_batch)
            reestimate_norms(self.norms, (lambda start=start: run_chain(
                self.rest, self._masked(self.recal_cache[start:start + self.recal_batch], mask)) for start in batches))
            yield
        finally:
            for bn, (mean, var, tracked) in zip(self.norms, saved, strict=True):
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
                bn.num_batches_tracked.copy_(tracked)

    def _losses(self, logits: torch.Tensor, y: torch.Tensor, particles: int) -> tuple[torch.Tensor, torch.Tensor]:
        """logits [P·n, classes] (particle-major) -> wrong counts and CE sums per particle, [P] each."""
        yy = y.repeat(particles)
        wrong = (logits.argmax(1) != yy).view(particles, -1).sum(1)
        ce = F.cross_entropy(logits, yy, reduction="none").view(particles, -1).sum(1)
        return wrong, ce

    @torch.no_grad()
    def mcr_and_ce(self, masks: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """masks: channel scale bool [P, O]; kernel/intra scale float [P, O, I, kh, kw] -> MCR [P], CE [P]."""
        if self.recal_cache is not None and self.norms:  # statistics differ per candidate: one at a time
            results = []
            for i in range(len(masks)):
                with self._recalibrated(masks[i:i + 1]):
                    results.append(self._mcr_and_ce(masks[i:i + 1]))
            return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])
        return self._mcr_and_ce(masks)

    def _mcr_and_ce(self, masks: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        count = len(masks)
        n = len(self.y)
        wrong = torch.zeros(count, dtype=torch.long)
        ce = torch.zeros(count, dtype=torch.float64)
        rows = _chunk_rows(n, count, self.max_rows)
        for start in range(0, n, rows):
            x, y = self.cache[start:start + rows], self.y[start:start + rows]
            part_wrong, part_ce = self._losses(run_chain(self.rest, self._masked(x, masks)), y, count)
            wrong += part_wrong
            ce += part_ce.double()
        return (wrong.double() / n).numpy(), (ce / n).numpy()

    def score_masks(self, masks: torch.Tensor) -> np.ndarray:
        mcr, ce = self.mcr_and_ce(masks)
        return mcr + self.tie * ce


def reestimate_norms(norms: list[nn.Module], forwards: Iterable[Callable[[], Any]]) -> None:
    """Replace the running statistics of `norms` by their cumulative average over the passes `forwards` runs
    (each a no-argument call running one batch through them); the norms end in eval mode, momenta unchanged."""
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches
        bn.train()
    try:
        with torch.no_grad():
            for forward in forwards:
                forward()
    finally:
        for bn, momentum in zip(norms, momenta, strict=True):
            bn.momentum = momentum
            bn.eval()


def kernel_masks_from_bits(bits: np.ndarray, alive: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Particles over the alive (out, in) kernels [P, n_alive] -> weight masks [P, O, I, kh, kw]."""
    return kernel_masks_from_units(bits, kernel_units(alive, 0), shape)


def kernel_groups_in_use(alive: torch.Tensor, groups: int) -> int:
    """The most output-map groups, at most `groups`, that split the alive output maps evenly."""
    rows = max(int(alive.any(1).sum()), 1)
    return max(d for d in range(1, min(groups, rows) + 1) if rows % d == 0)


def kernel_units(alive: torch.Tensor, groups: int) -> torch.Tensor:
    """long [O, I]: the particle bit of each alive kernel (-1 for dead ones), numbered 0..U-1. groups = 0: one
    bit per kernel; G >= 1: the alive output maps split into contiguous groups (kernel_groups_in_use), one bit per
    (group, input map), so every output map of a group keeps the same input maps: one grouped convolution."""
    units = torch.full(alive.shape, -1, dtype=torch.long)
    if groups == 0:
        units[alive] = torch.arange(int(alive.sum()))
        return units
    rows = alive.any(1).nonzero().flatten()
    cols = torch.arange(alive.shape[1])
    group_of_row = torch.arange(len(rows)) * kernel_groups_in_use(alive, groups) // max(len(rows), 1)
    units[rows.unsqueeze(1), cols.unsqueeze(0)] = group_of_row.unsqueeze(1) * len(cols) + cols.unsqueeze(0)
    units = units.masked_fill(~alive, -1)
    present = units[units >= 0].unique()  # sorted; units whose kernels are all pruned drop out
    remap = torch.full((int(units.max()) + 1,), -1, dtype=torch.long)
    remap[present] = torch.arange(len(present))
    units[units >= 0] = remap[units[units >= 0]]
    return units


def kernel_masks_from_units(bits: np.ndarray, units: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Particles over kernel units [P, U] (see kernel_units) -> weight masks [P, O, I, kh, kw]."""
    count = len(bits)
    out_ch, in_ch, kh, kw = shape
    flat = torch.zeros(count, out_ch * in_ch)
    unit = units.flatten()
    live = (unit >= 0).nonzero().flatten()
    flat[:, live] = torch.from_numpy(bits).float()[:, unit[live]]
    return flat.view(count, out_ch, in_ch, 1, 1).expand(count, out_ch, in_ch, kh, kw)


def intra_masks_from_choices(choices: np.ndarray, patterns: list[IntraPattern],
                             shape: tuple[int, ...]) -> torch.Tensor:
    """Particles choosing one pattern per input map [P, I] -> weight masks [P, O, I, kh, kw]."""
    _, _, kh, kw = shape
    table = torch.zeros(len(patterns), kh * kw)  # [patterns, kh·kw]
    for j, p in enumerate(patterns):
        table[j, list(p.taps(kh * kw))] = 1.0
    per_input = table[torch.from_numpy(choices.astype(np.int64))]  # [P, I, kh·kw]
    return per_input.view(len(choices), 1, shape[1], kh, kw).expand(len(choices), *shape)


def channel_masks_from_bits(bits: np.ndarray, alive: torch.Tensor) -> torch.Tensor:
    """Particles over the alive output maps [P, n_alive] -> keep masks bool [P, O]."""
    masks = torch.zeros(len(bits), len(alive), dtype=torch.bool)
    masks[:, alive.nonzero().flatten()] = torch.from_numpy(bits).bool()
    return masks


def particle_scorer(scorer: LayerScorer, decode: Callable[[np.ndarray], torch.Tensor]) -> Callable[[np.ndarray], np.ndarray]:
    """A score function for the particle filter: particles -> masks -> scores."""
    return lambda particles: scorer.score_masks(decode(particles))


class ChainChannelScorer:
    """Scores channel masks of several convolutions at once (global search): every particle runs the whole
    chain, with each layer's kept maps applied where its output enters the next weighted layer."""

    def __init__(self, model: nn.Module, layers: list[str], data: ScoreSet, tie: float = 1e-3, max_rows: int = 4096):
        chain = as_chain(model)
        names = [n for n, _ in chain]
        self.modules = [m for _, m in chain]
        self.cuts: dict[int, tuple[int, int]] = {}  # chain index -> (offset, maps) in the particle's mask
        offset = 0
        for layer in layers:
            k = names.index(layer)
            cut = k + 1
            while cut < len(chain) and not isinstance(chain[cut][1], WEIGHTED):
                if not isinstance(chain[cut][1], ZERO_PRESERVING):
                    raise StructpruneError(f"{chain[cut][0]}: {type(chain[cut][1]).__name__} after {layer} does not keep "
                                           "pruned maps at zero")
                cut += 1
            maps = chain[k][1].out_channels
            self.cuts[cut] = (offset, maps)
            offset += maps
        self.total = offset
        self.x, self.y, self.tie, self.max_rows = data.x, data.y, tie, max_rows

    @torch.no_grad()
    def mcr_and_ce(self, keeps: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """keeps: bool [P, total maps of the layers, in order] -> MCR [P], CE [P]."""
        count, n = len(keeps), len(self.y)
        wrong = torch.zeros(count, dtype=torch.long)
        ce = torch.zeros(count, dtype=torch.float64)
        rows = _chunk_rows(n, count, self.max_rows)
        for start in range(0, n, rows):
            h = self.x[start:start + rows]
            y = self.y[start:start + rows]
            h = h.unsqueeze(0).expand(count, *h.shape).flatten(0, 1)  # [P·n, C, H, W]
            for i, module in enumerate(self.modules):
                if i in self.cuts:
                    offset, maps = self.cuts[i]
                    keep = keeps[:, offset:offset + maps].to(h.dtype).view(count, 1, maps, 1, 1)  # [P, 1, C, 1, 1]
                    h = (h.view(count, -1, *h.shape[1:]) * keep).flatten(0, 1)
                h = module(h)
            yy = y.repeat(count)
            wrong += (h.argmax(1) != yy).view(count, -1).sum(1)
            ce += F.cross_entropy(h, yy, reduction="none").view(count, -1).sum(1).double()
        return (wrong.double() / n).numpy(), (ce / n).numpy()

    def score_masks(self, keeps: torch.Tensor) -> np.ndarray:
        mcr, ce = self.mcr_and_ce(keeps)
        return mcr + self.tie * ce
