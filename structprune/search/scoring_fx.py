"""Scoring whole-network masks of any traceable network with cached activations (torch.fx).

A candidate of one rung changes the parameters of a few modules only (`touched`: the searched conv, or every
member of its channel group, which on a residual network spans the convs and batch norms writing into a
stage). fx_graph.split_graph cuts the traced network there: the head, which no candidate changes, runs once
on the score images (under the rung's base mask) and its frontier values are kept; each candidate writes its
masked weights into the modules the tail reads, runs the tail on the kept values, and restores the weights.

Batch-norm re-estimation (`recalibrate` images) follows FullForwardScorer exactly: every norm re-estimates
under the candidate. The head's norms see the same inputs for every candidate, so their statistics are
re-estimated once (the frontier values of the score images computed with them, those of the re-estimation
batches with batch statistics, as the training-mode pass computes them); the tail's norms re-estimate per
candidate on the kept re-estimation values. A norm that both parts run is refused (StructpruneError).

Same images, same batches and the same operations as the full forward pass: the scores equal
FullForwardScorer's.

Where the tail is (nearly) the whole network, the cache saves nothing and running the generated tail costs more
than the model's own forward pass: `full_forward_reason` says so when the head runs no convolution or the tail
holds at least FULL_FORWARD_SHARE of the convolutions' MACs, and the rung is scored by the full forward pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from structprune.errors import StructpruneError
from structprune.search.fx_graph import NORMS, GraphSplit, split_graph
from structprune.search.scoring import ScoreSet, reestimate_norms
from structprune.search.scoring_full import MaskScorer, norm_stats, restore_norm_stats
from structprune.sparsity.masking import MaskApplier
from structprune.sparsity.masks import NetworkMask

log = logging.getLogger(__name__)
FULL_FORWARD_SHARE = 0.9  # a tail with at least this share of the conv MACs: the full forward pass scores the rung


def tail_conv_share(split: GraphSplit, macs: dict[str, int]) -> float:
    """The share of the network's conv MACs (`macs`: per conv, for one image) that the tail runs."""
    total = sum(macs.values())
    return sum(m for name, m in macs.items() if name in split.tail_modules) / total if total else 1.0


def full_forward_reason(split: GraphSplit, macs: dict[str, int]) -> str | None:
    """Why the full forward pass should score candidates of this split rather than the tail (None: the tail)."""
    if not any(name in split.head_modules for name in macs):
        return "no convolution runs before the searched layers, so the tail is the whole network"
    share = tail_conv_share(split, macs)
    if share >= FULL_FORWARD_SHARE:
        return f"the tail to rerun holds {share:.0%} of the conv MACs (at least {FULL_FORWARD_SHARE:.0%})"
    return None


def _as_tuple(values: Any) -> tuple[Any, ...]:
    return values if isinstance(values, tuple) else (values,)


class FxCachedScorer(MaskScorer):
    """Scores whole-network masks (one NetworkMask per candidate) of `model` in eval mode. The candidates may
    differ from `base` only in the masks of the layers `varying` (None: any layer), and those masks may change
    only the parameters of the modules `touched`. `split`: split_graph(traced, model, touched), if already made."""

    def __init__(self, model: nn.Module, applier: MaskApplier, traced: fx.GraphModule, touched: set[str],
                 base: NetworkMask, data: ScoreSet, tie: float = 1e-3, batch: int = 1024,
                 recalibrate: torch.Tensor | None = None, recal_batch: int = 64, varying: set[str] | None = None,
                 split: GraphSplit | None = None):
        if model.training:
            raise StructpruneError("the model is in training mode; cached scoring needs eval mode")
        self.model, self.applier, self.tie, self.y = model, applier, tie, data.y
        self.split: GraphSplit = split if split is not None else split_graph(traced, model, touched)
        norms = [m for m in model.modules() if isinstance(m, NORMS)]
        self.recal = recalibrate is not None and bool(norms)
        if self.recal:
            shared = self.split.shared_norm(model)
            if shared is not None:
                raise StructpruneError(f"the batch norm {shared} runs both before and after the searched layers")
        self.tail_norms = self.split.tail_norms(model)
        params = dict(model.named_parameters())
        self.tail_params = {n for n in params if n.rsplit(".", 1)[0] in self.split.tail_modules
                            or ("." not in n and "" in self.split.tail_modules)}
        self._relevant: dict[tuple[str, bool], bool] = {}
        self.varying = varying
        # the factors of the layers no candidate changes, on the tail's parameters: computed once
        self.fixed = {} if varying is None else self._factors(base, lambda name: name not in varying)
        head = self.split.head
        self.recal_cache: list[tuple[Any, ...]] = []
        with torch.no_grad(), applier.applied(base):
            saved = norm_stats(norms) if self.recal else []
            try:
                if self.recal:  # every norm in training mode, as FullForwardScorer re-estimates them
                    images = recalibrate
                    reestimate_norms(norms, (lambda s=s: self.recal_cache.append(_as_tuple(head(images[s:s + recal_batch])))
                                             for s in range(0, len(images), recal_batch)))
                self.cache = [(_as_tuple(head(data.x[s:s + batch])), data.y[s:s + batch])
                              for s in range(0, len(data.y), batch)]
            finally:
                restore_norm_stats(norms if self.recal else [], saved)
        log.debug("cached scoring: the tail runs %d of %d graph nodes from %d kept values",
                  self.split.tail_nodes, self.split.nodes, len(self.split.frontier))

    def _relevant_layer(self, name: str, channels: bool) -> bool:
        """Whether a layer's mask (its channel mask included when `channels`) changes a parameter the tail reads."""
        key = (name, channels)
        if key not in self._relevant:
            modules = [name] + (self.applier.groups[name].member_names() if channels else [])
            self._relevant[key] = any(m in self.split.tail_modules for m in modules)
        return self._relevant[key]

    def _factors(self, mask: NetworkMask, chosen: Callable[[str], bool]) -> dict[str, torch.Tensor]:
        """Mask factors of the `chosen` layers of `mask` that fall on parameters the tail reads."""
        sub = NetworkMask({n: lm for n, lm in mask if chosen(n) and self._relevant_layer(n, lm.keep_out is not None)})
        return {k: f for k, f in self.applier.factors(sub).items() if k in self.tail_params} if sub.layers else {}

    @contextmanager
    def _written(self, mask: NetworkMask) -> Iterator[None]:
        """The tail's parameters masked by `mask` (the head's do not change: its values are kept)."""
        varying = self.varying
        factors = self._factors(mask, lambda name: varying is None or name in varying)
        for key, fixed in self.fixed.items():  # a product of 0/1 factors per layer, as mask_factors forms it
            factors[key] = fixed * factors[key] if key in factors else fixed
        with self.applier.multiplied(factors):
            yield

    def _one(self, mask: NetworkMask) -> tuple[float, float]:
        wrong, ce = 0, 0.0
        with self._written(mask):
            saved = norm_stats(self.tail_norms) if self.recal else []
            try:
                if self.recal:
                    reestimate_norms(self.tail_norms, (lambda v=v: self.split.tail(*v) for v in self.recal_cache))
                for values, y in self.cache:
                    logits = self.split.tail(*values)
                    wrong += int((logits.argmax(1) != y).sum())
                    ce += float(F.cross_entropy(logits, y, reduction="sum"))
            finally:
                restore_norm_stats(self.tail_norms if self.recal else [], saved)
        n = len(self.y)
        return wrong / n, ce / n
