"""Cached, batched scoring gives the same MCR and cross-entropy as masking the weights and running the
whole network, at every scale and layer."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from structprune.errors import StructpruneError
from structprune.models import create
from structprune.search.scoring import (
    LayerScorer,
    ScoreSet,
    channel_masks_from_bits,
    conv_layers,
    intra_masks_from_choices,
    kernel_masks_from_bits,
)
from structprune.sparsity.granularity import Granularity, IntraPattern


def tiny(bn: bool):
    torch.manual_seed(0)
    model = create("tiny-paper", in_channels=1, input_size=8, bn=bn).eval()
    if bn:  # give the norms non-trivial statistics and affine parameters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.5, 0.5)
    return model


def reference(model, layer, weight_mask, keep_out, x, y):
    """Mask a copy's weights (the map's bias and batch norm too) and run the whole network."""
    ref = copy.deepcopy(model)
    mods = dict(ref.named_modules())
    conv = mods[layer]
    with torch.no_grad():
        if weight_mask is not None:
            conv.weight.mul_(weight_mask)
        if keep_out is not None:
            conv.weight[~keep_out] = 0
            if conv.bias is not None:
                conv.bias[~keep_out] = 0
            names = list(mods)
            follower = mods[names[names.index(layer) + 1]]
            if isinstance(follower, torch.nn.BatchNorm2d):
                follower.weight[~keep_out] = 0
                follower.bias[~keep_out] = 0
        logits = ref(x)
    return float((logits.argmax(1) != y).float().mean()), float(F.cross_entropy(logits, y))


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("granularity", list(Granularity))
def test_cached_scores_match_masked_full_forward(bn, granularity):
    model = tiny(bn)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(37, 1, 8, 8, generator=g), torch.randint(0, 10, (37,), generator=g)
    rng = np.random.default_rng(0)
    for layer in conv_layers(model):
        conv = model.get_submodule(layer)
        shape = tuple(conv.weight.shape)
        scorer = LayerScorer(model, layer, granularity, ScoreSet(x, y), tie=0.0, max_rows=50)  # forces chunks
        if granularity is Granularity.CHANNEL:
            alive = torch.ones(shape[0], dtype=torch.bool)
            bits = (rng.random((5, shape[0])) < 0.5).astype(np.int8)
            masks = channel_masks_from_bits(bits, alive)
            refs = [reference(model, layer, None, m, x, y) for m in masks]
        elif granularity is Granularity.KERNEL:
            alive = torch.ones(shape[0], shape[1], dtype=torch.bool)
            bits = (rng.random((5, shape[0] * shape[1])) < 0.5).astype(np.int8)
            masks = kernel_masks_from_bits(bits, alive, shape)
            refs = [reference(model, layer, m, None, x, y) for m in masks]
        else:
            patterns = IntraPattern.with_taps(shape[2] * shape[3], 3)
            choices = rng.integers(0, len(patterns), (5, shape[1])).astype(np.int8)
            masks = intra_masks_from_choices(choices, patterns, shape)
            refs = [reference(model, layer, m, None, x, y) for m in masks]
        mcr, ce = scorer.mcr_and_ce(masks)
        np.testing.assert_allclose(mcr, [r[0] for r in refs], atol=1e-9)
        np.testing.assert_allclose(ce, [r[1] for r in refs], rtol=1e-4, atol=1e-5)


def test_all_kept_scores_the_unpruned_model_and_tie_breaks():
    model = tiny(False)
    x, y = torch.randn(20, 1, 8, 8), torch.randint(0, 10, (20,))
    layer = conv_layers(model)[1]
    scorer = LayerScorer(model, layer, Granularity.CHANNEL, ScoreSet(x, y), tie=1e-3)
    full = torch.ones(1, model.get_submodule(layer).out_channels, dtype=torch.bool)
    mcr, ce = scorer.mcr_and_ce(full)
    with torch.no_grad():
        logits = model(x)
    assert mcr[0] == pytest.approx(float((logits.argmax(1) != y).float().mean()))
    assert scorer.score_masks(full)[0] == pytest.approx(mcr[0] + 1e-3 * ce[0])


def test_empty_validation_set_and_bad_layer_are_one_line_errors():
    model = tiny(False)
    with pytest.raises(StructpruneError, match="empty"):
        ScoreSet(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    with pytest.raises(StructpruneError, match="not a convolution"):
        data = ScoreSet(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))
        LayerScorer(model, "classifier.1", Granularity.CHANNEL, data)


@pytest.mark.parametrize("granularity", [Granularity.CHANNEL, Granularity.KERNEL])
def test_batch_norm_recalibration_matches_a_recalibrated_copy(granularity):
    model = tiny(True)
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(30, 1, 8, 8, generator=g), torch.randint(0, 10, (30,), generator=g)
    recal = torch.randn(48, 1, 8, 8, generator=g) * 2 + 0.5  # other statistics than the stored ones
    layer = conv_layers(model)[1]
    conv = model.get_submodule(layer)
    shape = tuple(conv.weight.shape)
    rng = np.random.default_rng(3)
    if granularity is Granularity.CHANNEL:
        bits = (rng.random((3, shape[0])) < 0.5).astype(np.int16)
        masks = channel_masks_from_bits(bits, torch.ones(shape[0], dtype=torch.bool))
    else:
        bits = (rng.random((3, shape[0] * shape[1])) < 0.5).astype(np.int16)
        masks = kernel_masks_from_bits(bits, torch.ones(shape[0], shape[1], dtype=torch.bool), shape)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scorer = LayerScorer(model, layer, granularity, ScoreSet(x, y), tie=0.0, recalibrate=recal, recal_batch=16)
    plain = LayerScorer(model, layer, granularity, ScoreSet(x, y), tie=0.0)
    got_mcr, got_ce = scorer.mcr_and_ce(masks)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # statistics restored
    assert not np.allclose(got_ce, plain.mcr_and_ce(masks)[1])  # recalibration changed something
    names = [n for n, _ in model.named_modules()]
    later = [n for n in names if n.startswith("features.") and names.index(n) > names.index(layer)]
    for i, m in enumerate(masks):
        ref = copy.deepcopy(model)
        with torch.no_grad():
            c = ref.get_submodule(layer)
            if granularity is Granularity.CHANNEL:
                c.weight[~m] = 0
                own_bn = ref.get_submodule(later[0])
                own_bn.weight[~m] = 0
                own_bn.bias[~m] = 0
                recal_norms = [ref.get_submodule(n) for n in later[1:]]
            else:
                c.weight.mul_(m)
                recal_norms = [ref.get_submodule(n) for n in later]
            recal_norms = [bn for bn in recal_norms if isinstance(bn, torch.nn.BatchNorm2d)]
            for bn in recal_norms:
                bn.reset_running_stats()
                bn.momentum = None
                bn.train()
            for start in range(0, 48, 16):
                ref(recal[start:start + 16])
            ref.eval()
            logits = ref(x)
        assert got_mcr[i] == pytest.approx(float((logits.argmax(1) != y).float().mean()))
        assert got_ce[i] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-4)
