"""Retraining under masks: pruned weights (whole channel groups included) stay exactly zero."""

from __future__ import annotations

import torch

from structprune import models
from structprune.compact.compaction import compact
from structprune.data import load_dataset
from structprune.retrain import retrain_compact, retrain_masked
from structprune.sparsity.masking import MaskApplier
from structprune.sparsity.selection import select_masks
from structprune.train import TrainConfig

CFG = TrainConfig(epochs=1, lr=0.05, batch_size=128)


def test_masked_retraining_holds_every_pruned_weight_at_zero_and_trains_the_rest():
    torch.manual_seed(0)
    model = models.create("plain", spec="8C3-8C3-MP2-16C3-MP2-10FC", in_channels=1, input_size=8, bn=True)
    data = load_dataset("digits")
    mask = select_masks(model, "channel,intra", [0.5, 0.5])
    factors = MaskApplier(model).factors(mask)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    history = retrain_masked(model, mask, data, CFG)
    params = dict(model.named_parameters())
    assert len(history) == 1
    for name, factor in factors.items():
        assert bool((params[name].detach()[factor == 0] == 0).all()), name
    changed = [n for n in before if not torch.equal(before[n] * factors.get(n, 1), params[n].detach())]
    assert "features.0.weight" in changed and "classifier.1.weight" in changed
    assert "features.1.weight" in factors  # the batch norm of a pruned group is held too


def test_a_compact_network_trains_directly():
    torch.manual_seed(0)
    model = models.create("tiny-paper", in_channels=1, input_size=8)
    data = load_dataset("digits")
    small = compact(model, select_masks(model, "channel,intra", 0.5))
    before = [p.detach().clone() for p in small.parameters()]
    retrain_compact(small, data, CFG)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, small.parameters(), strict=True))
