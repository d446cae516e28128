"""Cached, batched scoring gives the same MCR and cross-entropy as masking the weights and running the
whole network, at every scale and layer."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from structprune.errors import StructpruneError
from structprune.granularity import Granularity, IntraPattern
from structprune.models import create
from structprune.search.scoring import (
    LayerScorer,
    ScoreSet,
    channel_masks_from_bits,
    conv_layers,
    intra_masks_from_choices,
    kernel_masks_from_bits,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread avoids thread contention on shared machines (10x faster there)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
