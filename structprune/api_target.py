"""`structprune.prune_to_target`: masks meeting a MAC, speed-up or latency target on a network of your own.

    masks = structprune.prune_to_target(model, x, structprune.mcr_scorer(loader), target_macs=3)
    small = structprune.compact(model, masks)

The structure search of `structprune prune --target-*` (structprune.search.target_search): a particle filter
over how many maps each channel group keeps (a ladder of multiples of `round_to` down to `min_keep`), which
maps by L1, and optionally each conv's kernel blocks and intra shape; every candidate is grown or shrunk to use
the budget in full, then scored by `score_fn`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from structprune.api_inputs import channel_groups_of, check_model, check_runs_on, sample_input
from structprune.api_search import ScoreFn, Scorer
from structprune.errors import StructpruneError
from structprune.search.target_cost import CostModel, LatencyCost, LatencyModelLike, MacCost, measured_latency_cost
from structprune.search.target_forms import parse_forms
from structprune.search.target_search import Target, TargetSearchConfig, check_reachable, search_structure
from structprune.search.target_space import DEFAULT_MAP_IMPORTANCE, DEFAULT_MIN_KEEP, TargetSpace, map_importance
from structprune.sparsity.fast_forms import round_to_or_default
from structprune.sparsity.masks import NetworkMask
from structprune.sparsity.method import Method

log = logging.getLogger(__name__)


class _ScoreFnMasks:
    """The API's score_fn as the search's MaskScorer: one call per candidate, the masks applied in place."""

    def __init__(self, scorer: Scorer):
        self.scorer = scorer

    def score_masks(self, masks: list[NetworkMask]) -> np.ndarray:
        return np.array([self.scorer(m) for m in masks], dtype=np.float64)


def prune_to_target(
    model: nn.Module,
    example_input: torch.Tensor | None,
    score_fn: ScoreFn,
    target_macs: float | None = None,
    target_speedup: float | None = None,
    target_latency: float | None = None,
    latency_model: LatencyModelLike | None = None,
    runtime: str = "onnxruntime",
    batch: int = 1,
    threads: int = 1,
    round_to: int | None = None,
    min_keep: float = DEFAULT_MIN_KEEP,
    particles: int = 16,
    generations: int = 6,
    temperature: float = 0.002,
    evolutionary: bool = False,
    seed: int = 0,
    forms: str = "channel",
    importance: str = DEFAULT_MAP_IMPORTANCE,
) -> NetworkMask:
    """Channel masks meeting one target: `target_macs` R (R× fewer MACs, exact), `target_speedup` S (S× faster)
    or `target_latency` (milliseconds per batch of `batch`). Speed and latency are predicted by `latency_model`
    (anything with network_ms(forms) and dense_ms()), by default a per-layer model measured here with
    `runtime` ("onnxruntime" or "eager"), `batch` and `threads`; time the compact network to confirm them
    (the CLI does, and tightens the budget if it falls short).

    `score_fn(model) -> float` (lower is better, e.g. `mcr_scorer(loader)`) is called with each candidate's
    masks applied in place (weights restored after every call): at most particles × generations calls.
    Every channel group keeps a multiple of `round_to` maps (or all of them), at least `min_keep` of them; by
    default this CPU's channel block (fast_forms.default_round_to: 16 with AVX-512, else 8).
    `forms`: "channel", or "channel,blocks,intra" to also choose per conv kernel blocks (G = 1, 2, 4) and an
    intra-kernel shape (2×3, 3×1, 1×3 of a 3×3 kernel) where they apply. `importance`: which maps of a group go,
    "tp-l2" (Torch-Pruning's group L2 over the coupled layers, the default) or "l1" (the filters' L1). The model is
    not changed."""
    check_model(model)
    if not callable(score_fn):
        raise StructpruneError(f"score_fn must be a function of the network returning a number, not {type(score_fn).__name__}")
    target = Target.of(target_macs, target_speedup, target_latency)
    round_to = round_to_or_default(round_to)
    cfg = TargetSearchConfig(method=Method.EPF if evolutionary else Method.PF, particles=particles,
                             generations=generations, temperature=temperature, round_to=round_to, min_keep=min_keep,
                             seed=seed, forms=parse_forms(forms), importance=importance)
    sample = sample_input(model, example_input)
    check_runs_on(model, sample)
    shape = tuple(sample.shape[1:])
    groups = channel_groups_of(model, sample)
    space = TargetSpace(model, groups, round_to, min_keep, forms=cfg.forms,
                        importance=map_importance(importance, model, groups, sample))
    cost = _cost(target, space, shape, latency_model, runtime, batch, threads, round_to)
    budget = target.relative_budget(cost.dense if isinstance(cost, LatencyCost) else None)
    check_reachable(space, cost, budget, target, cfg)
    best = search_structure(space, cost, budget, _ScoreFnMasks(Scorer(model, groups, score_fn)), cfg, seed=seed,
                               label="prune_to_target").best
    masks = space.mask(best)
    masks.validate(model)
    masks.input_shape = shape
    log.info("prune_to_target: %s met at %.3f of the dense %s (budget %.3f)", target.flag, cost.predict(best),
             "MACs" if target.kind == "macs" else "latency", budget)
    return masks


def _cost(target: Target, space: TargetSpace, shape: tuple[int, ...], latency_model: Any, runtime: str, batch: int,
          threads: int, round_to: int) -> CostModel:
    if target.kind == "macs":
        return MacCost(space, shape)
    if latency_model is not None:
        return LatencyCost(space, latency_model)
    if runtime not in ("onnxruntime", "eager") or batch < 1 or threads < 1:
        raise StructpruneError(f"runtime must be onnxruntime or eager, batch and threads >= 1 (got {runtime!r}, "
                               f"{batch}, {threads})")
    return measured_latency_cost(space, shape, runtime, batch, threads, round_to)
