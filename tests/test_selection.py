"""Mask selection by L1 magnitude and at random: counts, ranking, nesting, global scope, intra patterns."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from prune_nets import family_models

from structprune import models
from structprune.errors import StructpruneError
from structprune.sparsity.channel_groups import find_channel_groups
from structprune.sparsity.granularity import Granularity as G
from structprune.sparsity.granularity import IntraPattern, KernelForm
from structprune.sparsity.selection import keep_count, select_masks

FAMILIES = family_models()
HAS_KERNEL_CONV = importlib.util.find_spec("structprune.compact.kernel_conv") is not None


def paper(seed: int = 0):
    torch.manual_seed(seed)
    model = models.create("plain", spec="8C3-MP2-16C3-MP2-24C3-10FC", in_channels=3, input_size=16).eval()
    return model, find_channel_groups(model, torch.randn(1, 3, 16, 16))


def test_l1_keeps_the_filters_with_the_largest_magnitude():
    model, groups = paper()
    with torch.no_grad():
        scale = torch.tensor([5.0, 0.1, 4.0, 0.2, 3.0, 0.3, 2.0, 0.4]).view(8, 1, 1, 1)
        model.features[0].weight.copy_(scale * torch.sign(torch.randn_like(model.features[0].weight)))
    mask = select_masks(model, "channel", 0.5, groups=groups)
    assert mask.layers["features.0"].keep_out.tolist() == [True, False, True, False, True, False, True, False]


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.9, 0.99])
def test_per_layer_channel_counts_follow_the_ratio(ratio):
    model, groups = paper()
    mask = select_masks(model, "channel", ratio, groups=groups)
    for group in groups:
        assert int(mask.layers[group.root].keep_out.sum()) == keep_count(group.size, ratio) >= 1


def test_round_to_keeps_multiples_of_eight():
    model, groups = paper()
    mask = select_masks(model, "channel", 0.6, groups=groups, round_to=8)
    assert [int(mask.layers[g.root].keep_out.sum()) for g in groups] == [8, 8, 16]


@settings(max_examples=25, deadline=None)
@given(r1=st.floats(0.0, 0.9), r2=st.floats(0.0, 0.9), method=st.sampled_from(["l1", "random"]),
       scope=st.sampled_from(["layer", "global"]), gran=st.sampled_from(["channel", "kernel"]))
def test_a_higher_ratio_nests_inside_the_lower_one(r1, r2, method, scope, gran):
    low, high = sorted((r1, r2))
    model, groups = paper()
    first = select_masks(model, gran, low, method=method, scope=scope, groups=groups)
    second = select_masks(model, gran, high, method=method, scope=scope, groups=groups, base=first, seed=1)
    key = "keep_out" if gran == "channel" else "keep_kernel"
    for name, lm in first:
        a, b = getattr(lm, key), getattr(second.layers[name], key)
        assert bool((b <= a).all()), name  # nothing pruned comes back
        assert int(b.sum()) >= 1


def test_global_scope_prunes_the_network_wide_count_and_keeps_every_group():
    model, groups = paper()
    mask = select_masks(model, "channel", 0.5, scope="global", groups=groups)
    total = sum(g.size for g in groups)
    kept = sum(int(mask.layers[g.root].keep_out.sum()) for g in groups)
    assert kept == keep_count(total, 0.5)
    per_layer = [int(mask.layers[g.root].keep_out.sum()) / g.size for g in groups]
    assert len(set(per_layer)) > 1  # not simply the per-layer answer


def test_random_is_reproducible_by_seed():
    model, groups = paper()
    a = select_masks(model, "channel,intra", 0.5, method="random", seed=3, groups=groups)
    b = select_masks(model, "channel,intra", 0.5, method="random", seed=3, groups=groups)
    c = select_masks(model, "channel,intra", 0.5, method="random", seed=4, groups=groups)
    assert a.to_json() == b.to_json() != c.to_json()


def test_intra_picks_the_pattern_keeping_most_l1_for_each_input_map():
    model, groups = paper(1)
    mask = select_masks(model, "intra", 5 / 9 - 0.01, groups=groups)  # 4 of 9 taps
    conv = model.features[3]
    l1 = conv.weight.detach().abs().flatten(2).sum(0)  # [I, 9]
    candidates = IntraPattern.with_taps(9, 4)
    for i, chosen in enumerate(mask.layers["features.3"].intra):
        assert len(chosen.taps(9)) == 4
        best = max(float(l1[i, list(p.taps(9))].sum()) for p in candidates)
        assert float(l1[i, list(chosen.taps(9))].sum()) == pytest.approx(best)


def test_intra_shared_uses_one_pattern_per_layer():
    model, groups = paper()
    mask = select_masks(model, "intra", 0.66, groups=groups, intra_shared=True)
    for _, lm in mask:
        assert len(set(lm.intra)) == 1


def test_global_intra_spends_the_tap_budget_unevenly():
    model, groups = paper()
    mask = select_masks(model, "intra", 0.5, scope="global", groups=groups)
    taps = {name: len(lm.intra[0].taps(9)) if lm.intra else 9 for name, lm in mask}
    weights = {name: model.get_submodule(name).weight.shape[0] * model.get_submodule(name).weight.shape[1]
               for name in taps}
    kept = sum(weights[n] * taps[n] for n in taps) / sum(weights[n] * 9 for n in taps)
    assert kept <= 0.5 and kept > 0.3


def test_unstructured_kernels_drop_the_smallest_kernels_among_kept_channels():
    model, groups = paper()
    mask = select_masks(model, "channel,kernel", [0.5, 0.5], groups=groups)
    lm = mask.layers["features.3"]
    rows = torch.nonzero(lm.keep_out).flatten()
    cols = torch.nonzero(mask.layers["features.0"].keep_out).flatten()
    region = lm.keep_kernel[rows][:, cols]
    assert int(region.sum()) == keep_count(region.numel(), 0.5)
    assert int(lm.keep_kernel.sum()) == int(region.sum())  # nothing kept outside the kept channels
    l1 = model.features[3].weight.detach().abs().sum((2, 3))[rows][:, cols]
    assert float(l1[region].min()) >= float(l1[~region].max())


@pytest.mark.skipif(not HAS_KERNEL_CONV, reason="structured kernel masks come with the compact kernel layer")
def test_structured_kernels_share_kept_inputs_within_output_groups():
    model, groups = paper()
    mask = select_masks(model, "kernel", 0.5, groups=groups, kernel=KernelForm("structured", 2))
    kk = mask.layers["features.3"].keep_kernel
    assert 0 < int(kk.sum()) < kk.numel()
    assert len({tuple(row.tolist()) for row in kk}) <= 2


@pytest.mark.skipif(not HAS_KERNEL_CONV, reason="structured kernel masks come with the compact kernel layer")
@pytest.mark.parametrize("ratio", [0.2, 0.5, 0.7])
def test_structured_kernels_keep_multiples_of_round_to_inputs(ratio):
    torch.manual_seed(0)
    model = models.create("plain", spec="32C3-MP2-40C3-10FC", in_channels=3, input_size=8).eval()
    groups = find_channel_groups(model, torch.randn(1, 3, 8, 8))
    mask = select_masks(model, "kernel", ratio, groups=groups, kernel=KernelForm("structured", 2), round_to=8)
    kept = mask.layers["features.3"].keep_kernel.sum(1)  # kept input maps of each of the 40 output maps
    assert all(int(k) % 8 == 0 and int(k) >= round((1 - ratio) * 32) for k in kept)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_gets_valid_masks_at_all_scales(family):
    model, shape = FAMILIES[family]
    groups = find_channel_groups(model, torch.randn(1, *shape))
    mask = select_masks(model, [G.CHANNEL, G.KERNEL, G.INTRA], 0.5, groups=groups)
    mask.validate(model)
    assert any(lm.keep_out is not None for _, lm in mask)


def test_bad_ratio_lists_are_rejected():
    model, groups = paper()
    with pytest.raises(StructpruneError, match="2 ratios given for 3 granularities"):
        select_masks(model, "channel,kernel,intra", [0.5, 0.5], groups=groups)
    with pytest.raises(StructpruneError, match=r"ratio 1\.0 must be in \[0, 1\)"):
        select_masks(model, "channel", 1.0, groups=groups)


def test_intra_patterns_restrict_the_choice_and_a_missing_tap_count_is_an_error():
    model, groups = paper()
    mask = select_masks(model, "intra", 6 / 9, groups=groups, intra_patterns=(IntraPattern(1, 3), IntraPattern(0, 3)))
    chosen = {p for _, lm in mask for p in lm.intra}
    assert chosen <= {IntraPattern(1, 3), IntraPattern(0, 3)}
    with pytest.raises(StructpruneError, match=r"features\.0: no allowed intra-kernel pattern keeps 5 of 9"):
        select_masks(model, "intra", 4 / 9, groups=groups, intra_patterns=(IntraPattern(1, 3),))


def test_linear_ratio_keeps_the_hidden_units_with_the_largest_weight_rows():
    torch.manual_seed(0)
    model = models.create("plain", spec="8C3-MP2-12FC-10FC", in_channels=3, input_size=8).eval()
    groups = find_channel_groups(model, torch.randn(1, 3, 8, 8))
    hidden = model.classifier[1]
    with torch.no_grad():
        scale = torch.arange(12, 0, -1, dtype=torch.float32)[torch.randperm(12)]
        hidden.weight.copy_(scale.unsqueeze(1) * torch.sign(torch.randn_like(hidden.weight)))
    mask = select_masks(model, "channel", 0.0, groups=groups, linear_ratio=0.25)
    keep = mask.layers["classifier.1"].keep_out
    assert keep.tolist() == (scale > 3).tolist()  # the 9 largest rows of 12
    assert mask.layers["features.0"].keep_out.all()  # the conv scale at ratio 0 keeps every map
    assert "classifier.3" not in mask.layers  # the classifier's outputs are the classes


def test_linear_ratio_without_a_hidden_layer_is_refused():
    model, groups = paper()  # its one linear layer is the classifier
    with pytest.raises(StructpruneError, match="no hidden fully connected layer"):
        select_masks(model, "channel", 0.5, groups=groups, linear_ratio=0.5)
    with pytest.raises(StructpruneError, match=r"linear ratio 1\.0 must be in"):
        select_masks(model, "channel", 0.5, groups=groups, linear_ratio=1.0)
