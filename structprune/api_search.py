"""The Python API's particle-filter search over a network of your own: `search` chooses masks layer by layer,
scored by any function of the network (`mcr_scorer` builds one from a data loader)."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from structprune.api_inputs import (
    channel_groups_of,
    check_masks,
    check_model,
    check_runs_on,
    parse_granularities,
    parse_ratios,
    sample_input,
    selection_config,
)
from structprune.errors import StructpruneError
from structprune.search.particle_filter import BitSpace, ChoiceSpace, ParticleFilter, PFConfig
from structprune.sparsity.channel_groups import ChannelGroups
from structprune.sparsity.granularity import Granularity, IntraPattern, KernelForm
from structprune.sparsity.masking import MaskApplier
from structprune.sparsity.masks import NetworkMask
from structprune.sparsity.method import Method
from structprune.sparsity.selection import SelectionConfig, select
from structprune.sparsity.selection_base import kernels_left

log = logging.getLogger(__name__)

ScoreFn = Callable[[nn.Module], float]  # the network (masked in place while called) -> score, lower is better


# ----------------------------------------------------------------------------------------------- scoring
def _batches(loader: Iterable[Any]) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    for batch in loader:
        if not isinstance(batch, list | tuple) or len(batch) < 2 or not all(
                isinstance(t, torch.Tensor) for t in batch[:2]):
            raise StructpruneError("the data loader must yield (inputs, labels) batches of tensors")
        yield batch[0], batch[1]


def mcr_scorer(loader: Iterable[Any], tie: float = 1e-3, max_batches: int | None = None) -> ScoreFn:
    """A score function for `search`: the misclassification rate of the network on `loader` (any iterable of
    (inputs, labels) batches, e.g. a torch DataLoader), plus `tie` × the mean cross-entropy, which orders
    candidates of equal MCR (0: the plain MCR). The network runs in eval mode, on its own device;
    `max_batches` limits the batches read per call."""
    if not isinstance(loader, Iterable):
        raise StructpruneError(f"mcr_scorer needs a data loader (an iterable of batches), not {type(loader).__name__}")
    if tie < 0:
        raise StructpruneError(f"tie {tie} must be >= 0")

    @torch.no_grad()
    def score(model: nn.Module) -> float:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        was_training = model.training
        model.eval()
        wrong, ce, count = 0, 0.0, 0
        try:
            for i, (x, y) in enumerate(_batches(loader)):
                if max_batches is not None and i >= max_batches:
                    break
                logits = model(x.to(device))
                y = y.to(device)
                wrong += int((logits.argmax(1) != y).sum())
                ce += float(F.cross_entropy(logits, y, reduction="sum"))
                count += len(y)
        finally:
            model.train(was_training)
        if count == 0:
            raise StructpruneError("the data loader yielded no images")
        return wrong / count + tie * ce / count

    return score


# ----------------------------------------------------------------------------------------------- search
@dataclass
class _Unit:
    """One layer's choice at one granularity, as a particle space: `decode` turns a particle into LayerMask fields."""

    name: str
    space: BitSpace | ChoiceSpace
    init: np.ndarray  # the L1 choice, as a particle
    decode: Callable[[np.ndarray], dict[str, Any]]


def _bits_decoder(field_name: str, alive: torch.Tensor) -> Callable[[np.ndarray], dict[str, Any]]:
    """Particles over the alive entries of `alive` -> {field_name: bool tensor of alive's shape}."""
    idx = torch.nonzero(alive.flatten()).flatten()

    def decode(bits: np.ndarray) -> dict[str, Any]:
        keep = torch.zeros(alive.numel(), dtype=torch.bool)
        keep[idx[torch.from_numpy(bits.astype(np.int64)).bool()]] = True
        return {field_name: keep.view(alive.shape)}

    return decode


def _bits_unit(name: str, field_name: str, alive: torch.Tensor, kept: torch.Tensor) -> _Unit | None:
    """The unit choosing which of the alive entries stay, as many as `kept` keeps (None: nothing to choose)."""
    kept = kept & alive
    if not 0 < int(kept.sum()) < int(alive.sum()):
        return None
    init = kept.flatten()[alive.flatten()].numpy().astype(np.int16)
    return _Unit(name, BitSpace(int(alive.sum()), int(kept.sum())), init, _bits_decoder(field_name, alive))


def _channel_units(candidate: NetworkMask, start: NetworkMask) -> list[_Unit]:
    """A unit per channel group (conv or hidden linear layer) whose kept maps the L1 candidate set."""
    units = []
    for name, lm in candidate:
        if lm.keep_out is None:
            continue
        before = start.layers.get(name)
        alive = before.keep_out if before is not None and before.keep_out is not None else torch.ones_like(lm.keep_out)
        units.append(_bits_unit(name, "keep_out", alive, lm.keep_out))
    return [u for u in units if u is not None]


def _kernel_units(candidate: NetworkMask, start: NetworkMask, model: nn.Module, groups: ChannelGroups) -> list[_Unit]:
    """A unit per conv whose kernels the L1 candidate set, over the kernels left between kept channels."""
    units = []
    for name, lm in candidate:
        if lm.keep_kernel is not None:
            alive = kernels_left(name, model.get_submodule(name), start, groups)
            units.append(_bits_unit(name, "keep_kernel", alive, lm.keep_kernel))
    return [u for u in units if u is not None]


def _intra_decoder(patterns: list[IntraPattern], inputs: int, shared: bool) -> Callable[[np.ndarray], dict[str, Any]]:
    def decode(choices: np.ndarray) -> dict[str, Any]:
        picks = [patterns[int(c)] for c in choices]
        return {"intra": picks * inputs if shared else picks}

    return decode


def _intra_units(candidate: NetworkMask, cfg: SelectionConfig) -> list[_Unit]:
    """A unit per conv whose intra-kernel patterns the L1 candidate set: one of the patterns with the same tap
    count (among `intra_patterns`) per input map, or per layer (`intra_shared`)."""
    allowed = None if cfg.intra_patterns is None else set(cfg.intra_patterns)
    shared = cfg.intra_shared
    units = []
    for name, lm in candidate:
        if lm.intra is None or all(p is None for p in lm.intra):
            continue
        positions = lm.kernel_positions
        taps = len(next(p for p in lm.intra if p is not None).taps(positions))
        patterns = [p for p in IntraPattern.with_taps(positions, taps) if allowed is None or p in allowed]
        chosen = [patterns.index(p) if p in patterns else 0 for p in lm.intra]
        init = np.array(chosen[:1] if shared else chosen, dtype=np.int16)
        units.append(_Unit(name, ChoiceSpace(len(init), len(patterns)), init,
                           _intra_decoder(patterns, len(chosen), shared)))
    return units


def _with(masks: NetworkMask, name: str, model: nn.Module, fields: dict[str, Any]) -> NetworkMask:
    out = copy.deepcopy(masks)
    layer = out.layer(name, model.get_submodule(name))
    for key, value in fields.items():
        setattr(layer, key, value)
    return out


class Scorer:
    """score_fn on `model` with a candidate mask applied (restored afterwards); counts the calls."""

    def __init__(self, model: nn.Module, groups: ChannelGroups, score_fn: ScoreFn):
        self.model, self.applier, self.score_fn, self.calls = model, MaskApplier(model, groups), score_fn, 0

    def __call__(self, candidate: NetworkMask) -> float:
        self.calls += 1
        with self.applier.applied(candidate):
            value = self.score_fn(self.model)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise StructpruneError(f"score_fn returned {type(value).__name__}, not a number") from None
        if not math.isfinite(value):
            raise StructpruneError(f"score_fn returned {value}; it must return a finite number")
        return value


def _search_unit(unit: _Unit, current: NetworkMask, model: nn.Module, scorer: Scorer, config: PFConfig) -> NetworkMask:
    """`current` with the unit's layer set to the best particle the filter finds (the L1 choice is one of them)."""

    def to_mask(particle: np.ndarray) -> NetworkMask:
        return _with(current, unit.name, model, unit.decode(particle))

    pf = ParticleFilter(unit.space, config, init=unit.init[None])
    best = pf.run(lambda batch: np.array([scorer(to_mask(p)) for p in batch]))
    log.info("search: %s: score %.5f (generation 0 best %.5f)", unit.name, pf.best_score, pf.history[0]["best"])
    return to_mask(best)


def search(
    model: nn.Module,
    example_input: torch.Tensor | None,
    score_fn: ScoreFn,
    granularity: str | Iterable[str] = "channel",
    ratio: float | Iterable[float] = 0.5,
    particles: int = 16,
    generations: int = 6,
    temperature: float = 0.002,
    evolutionary: bool = False,
    seed: int = 0,
    base: NetworkMask | None = None,
    **options: Any,
) -> NetworkMask:
    """Masks at `ratio` chosen by the particle filter (Anwar et al. 2017), scored by `score_fn(model) -> float`
    (lower is better: an MCR, e.g. `mcr_scorer(loader)`, or a loss), called with the candidate masks applied
    to `model` in place (the weights are restored after every call).

    Per granularity (channel, then kernel, then intra): start from the L1 masks at that scale, given the masks
    searched so far (the library's L1 selection with the same options: free kernels, every intra pattern and
    exact counts unless they say otherwise; they fix each layer's count of kept units). Then, per layer (channel
    group, or convolution), a particle filter seeded with the layer's current choice searches which units it
    keeps, every other layer held; the best particle replaces the choice. The current choice is among the scored
    candidates, so with a deterministic score_fn no layer's search makes the
    score worse: with one granularity, the result never scores worse than the L1 masks. Cost: at most
    particles × generations calls of `score_fn` per layer. `temperature` is in score units (0.002 suits an
    MCR; scale it for a loss); `evolutionary` adds crossover and elitism (EPF). Kernel masks are searched
    free (kernel "unstructured").
    """
    check_model(model)
    if not callable(score_fn):
        raise StructpruneError(f"score_fn must be a function of the network returning a number, not {type(score_fn).__name__}")
    cfg = selection_config(Method.L1, {**options, "seed": seed})
    if cfg.kernel != KernelForm():
        raise StructpruneError(f"search chooses free kernel masks (kernel 'unstructured', not {str(cfg.kernel)!r}); "
                               "structured and block kernel masks come from structprune.prune")
    pf_config = PFConfig(particles=particles, generations=generations, temperature=temperature,
                         evolutionary=evolutionary, elite=min(2, particles - 1), seed=seed)
    sample = sample_input(model, example_input, base)
    check_runs_on(model, sample)
    grans = parse_granularities(granularity)
    ratios = parse_ratios(ratio, len(grans))
    if base is not None:
        check_masks(base)
    groups = channel_groups_of(model, sample)
    scorer = Scorer(model, groups, score_fn)
    order = {Granularity.CHANNEL: 0, Granularity.KERNEL: 1, Granularity.INTRA: 2}
    current = copy.deepcopy(base) if base is not None else NetworkMask()
    searched = 0
    for g, r in sorted(zip(grans, ratios, strict=True), key=lambda gr: order[gr[0]]):
        start = current
        current = select(model, [g], [r], cfg, groups=groups, base=start)  # the L1 candidate at this scale
        if g is Granularity.CHANNEL:
            units = _channel_units(current, start)
        elif g is Granularity.KERNEL:
            units = _kernel_units(current, start, model, groups)
        else:
            units = _intra_units(current, cfg)
        for unit in units:
            current = _search_unit(unit, current, model, scorer, replace(pf_config, seed=seed + searched))
            searched += 1
    log.info("search: %d layer searches, %d calls of score_fn", searched, scorer.calls)
    current.validate(model)
    current.input_shape = tuple(sample.shape[1:])
    return current
