"""Applying masks in place: restored exactly, whole groups silenced, clear errors for bad masks."""

from __future__ import annotations

import pytest
import torch
from prune_nets import family_models
from torch import nn

from structprune import models
from structprune.errors import StructpruneError
from structprune.sparsity.channel_groups import find_channel_groups
from structprune.sparsity.granularity import IntraPattern
from structprune.sparsity.masking import MaskApplier, apply_mask_
from structprune.sparsity.masks import LayerMask, NetworkMask

FAMILIES = family_models()


def tiny():
    torch.manual_seed(0)
    return models.create("tiny-paper", in_channels=1, input_size=8).eval()


def test_applied_mask_is_undone_exactly_and_all_ones_changes_nothing():
    model = tiny()
    x = torch.randn(4, 1, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mask = NetworkMask()
    mask.layer("features.0", model.features[0]).keep_out = torch.tensor([1, 0, 1, 0, 1, 1, 1, 1], dtype=torch.bool)
    mask.layer("features.2", model.features[2]).intra = [IntraPattern(1, 3)] * 8
    applier = MaskApplier(model)
    with torch.no_grad():
        reference = model(x)
        with applier.applied(mask):
            assert not torch.equal(model(x), reference)
        assert torch.equal(model(x), reference)
        ones = NetworkMask({"features.0": LayerMask(shape=(8, 1, 3, 3), keep_out=torch.ones(8, dtype=torch.bool))})
        with applier.applied(ones):
            assert torch.equal(model(x), reference)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("family", ["plain-bn", "resnet", "densenet", "mobilenet"])
def test_a_pruned_channel_carries_nothing_anywhere_in_its_group(family):
    """Hook every member: its pruned slice of output (out role) is exactly zero."""
    model, shape = FAMILIES[family]
    groups = find_channel_groups(model, torch.randn(1, *shape))
    mask = NetworkMask()
    for group in groups:
        keep = torch.ones(group.size, dtype=torch.bool)
        keep[0] = False
        mask.layer(group.root, model.get_submodule(group.root)).keep_out = keep
    seen: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(m.name).register_forward_hook(lambda mod, i, o, n=m.name: seen.__setitem__(n, o))
             for g in groups for m in g.members if m.role == "out"]
    with torch.no_grad(), MaskApplier(model, groups).applied(mask):
        model(torch.randn(2, *shape))
    for h in hooks:
        h.remove()
    for group in groups:
        for m in group.members:
            if m.role == "out":
                dead = m.index[m.root == 0]
                assert float(seen[m.name][:, dead].abs().max()) == 0.0, m.name


def test_apply_is_permanent_and_combines_the_three_scales():
    model = tiny()
    mask = NetworkMask()
    lm = mask.layer("features.2", model.features[2])
    lm.keep_kernel = torch.rand(8, 8) > 0.5
    lm.keep_kernel[0, 0] = True
    lm.intra = [IntraPattern(0, 2)] * 8
    original = model.features[2].weight.detach().clone()
    apply_mask_(model, mask)
    assert torch.equal(model.features[2].weight.detach(), original * lm.weight_mask())
    assert int((lm.weight_mask() == 0).sum()) > 8 * 8 * 4  # at least the dropped taps are zero


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m, model: m.layers.__setitem__("features.9", LayerMask(shape=(8, 1, 3, 3))), "features.9"),
        (lambda m, model: setattr(m.layer("features.0", model.features[0]), "keep_out", torch.ones(5, dtype=torch.bool)),
         r"features\.0: keep_out has \(5,\)"),
        (lambda m, model: setattr(m.layer("features.0", model.features[0]), "keep_out", torch.zeros(8, dtype=torch.bool)),
         r"features\.0: mask removes every feature map"),
        (lambda m, model: setattr(m.layer("features.2", model.features[2]), "intra", [IntraPattern(9, 1)] * 8),
         r"features\.2: intra-kernel pattern .* outside"),
        (lambda m, model: setattr(m.layer("features.2", model.features[2]), "intra", [None] * 3),
         r"features\.2: 3 intra-kernel patterns"),
        (lambda m, model: m.layers.__setitem__("features.1", LayerMask(shape=(8, 8, 1, 1))),
         r"features\.1: masks apply to Conv2d and Linear layers, not ReLU"),
        (lambda m, model: m.layers.__setitem__("classifier.1", LayerMask(shape=(32, 64, 1, 1))),
         r"classifier\.1: mask is for weight \[32, 64, 1, 1\], layer has \[32, 64\]"),
        (lambda m, model: setattr(m.layer("classifier.1", model.classifier[1]), "keep_kernel",
                                  torch.ones(32, 64, dtype=torch.bool)),
         r"classifier\.1: a fully connected layer takes channel masks only"),
    ],
)
def test_bad_masks_fail_with_one_line_naming_the_layer(edit, message):
    model = tiny()
    mask = NetworkMask()
    edit(mask, model)
    with pytest.raises(StructpruneError, match=message) as info:
        MaskApplier(model).factors(mask)
    assert "\n" not in str(info.value)


def test_weights_are_restored_even_when_the_block_raises():
    model = tiny()
    before = model.features[0].weight.detach().clone()
    mask = NetworkMask()
    mask.layer("features.0", model.features[0]).keep_out = torch.tensor([0, 1, 1, 1, 1, 1, 1, 1], dtype=torch.bool)
    with pytest.raises(KeyError), MaskApplier(model).applied(mask):
        assert float(model.features[0].weight.detach()[0].abs().sum()) == 0.0
        raise KeyError("boom")
    assert torch.equal(model.features[0].weight.detach(), before)


def test_mask_on_grouped_conv_depthwise_channel_root():
    model, shape = FAMILIES["mobilenet"]
    assert isinstance(model.get_submodule("down.0"), nn.Conv2d)
    groups = find_channel_groups(model, torch.randn(1, *shape))
    mask = NetworkMask()
    mask.layer("down.0", model.get_submodule("down.0")).keep_out = torch.tensor([1, 0, 1, 1], dtype=torch.bool)
    with pytest.raises(StructpruneError, match=r"down\.0: its output channels are coupled to stem\.0"):
        MaskApplier(model, groups).factors(mask)
