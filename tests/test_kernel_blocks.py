"""Kernel blocks: block-diagonal kernel masks (selection) that compact into grouped convolutions (block_order)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from prune_nets import family_models
from torch import nn

from structprune import models
from structprune.compact.compaction import compact
from structprune.compact.kernel_conv import KernelSparseConv2d
from structprune.errors import StructpruneError
from structprune.sparsity.channel_groups import find_channel_groups
from structprune.sparsity.granularity import Granularity, IntraPattern, KernelForm
from structprune.sparsity.kernel_blocks import balanced_blocks, input_blocks
from structprune.sparsity.masking import MaskApplier
from structprune.sparsity.selection import SelectionConfig, select

FAMILIES = family_models()
GROUPS = {name: find_channel_groups(m, torch.randn(1, *shape)) for name, (m, shape) in FAMILIES.items()}


def plain_net(bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return models.create("plain", spec="2x16C3-MP2-2x16C3-MP2-32C3-24FC-10FC", in_channels=3, input_size=16, bn=bn).eval()


def blocks_mask(model: nn.Module, groups, blocks: int = 2, channel: float = 0.25, intra: IntraPattern | None = None):
    scales, ratios = [Granularity.CHANNEL, Granularity.KERNEL], [channel, 1 - 1 / blocks]
    if intra is not None:
        scales.append(Granularity.INTRA)
        ratios.append(1 - len(intra.taps(9)) / 9)
    cfg = SelectionConfig(kernel=KernelForm("blocks", blocks), round_to=2 * blocks,
                          intra_patterns=None if intra is None else (intra,))
    return select(model, scales, ratios, cfg, groups=groups)


def test_balanced_blocks_are_equal_and_follow_the_scores():
    scores = torch.tensor([[5.0, 0.0], [4.0, 1.0], [0.0, 3.0], [3.0, 2.9], [1.0, 1.0], [0.0, 0.0]])
    rows = torch.tensor([True, True, True, True, False, True])
    blocks = balanced_blocks(scores, rows, 2)
    assert blocks[4] == -1
    assert sorted(blocks[rows].tolist()) == [0, 0, 0, 1, 1]  # 5 kept rows: blocks of 3 and 2 (the first larger)
    assert blocks[0] == 0 and blocks[2] == 1  # the clearest preferences are served


def test_input_blocks_need_disjoint_sets_of_input_maps():
    disjoint = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    assert input_blocks(disjoint).tolist() in ([1, 1, 0, 0], [0, 0, 1, 1])
    overlapping = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    assert input_blocks(overlapping) is None
    assert input_blocks(torch.ones(3, 4, dtype=torch.bool)) is None  # one block: nothing to order


@pytest.mark.parametrize("bn", [False, True])
def test_each_output_map_reads_only_its_block_and_blocks_follow_the_producer(bn):
    model = plain_net(bn)
    groups = find_channel_groups(model, torch.randn(1, 3, 16, 16))
    mask = blocks_mask(model, groups, blocks=2)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert mask.layers[convs[0]].keep_kernel is None  # the first layer reads the image: it starts the blocks
    previous_out = None
    for name in convs[1:]:
        keep = mask.layers[name].keep_kernel
        rows = keep.any(1)
        blocks = input_blocks(keep)
        assert blocks is not None
        sizes = torch.bincount(blocks[blocks >= 0])
        assert len(sizes) == 2 and sizes[0] == sizes[1]  # two equal blocks of input maps
        for row in keep[rows]:  # each kept output map reads exactly one whole block
            assert len(set(blocks[row].tolist())) == 1 and int(row.sum()) == int(sizes[0])
        out_sets = {tuple(torch.nonzero(r).flatten().tolist()) for r in keep[rows]}
        if previous_out is not None:  # this layer's input blocks are the previous layer's output blocks
            in_sets = {tuple(torch.nonzero(blocks == b).flatten().tolist()) for b in range(2)}
            assert in_sets == previous_out
        previous_out = {tuple(torch.nonzero(keep[:, list(s)].any(1) & rows).flatten().tolist()) for s in out_sets}


def test_a_kernel_ratio_other_than_one_minus_one_over_g_is_refused():
    model = plain_net()
    groups = find_channel_groups(model, torch.randn(1, 3, 16, 16))
    with pytest.raises(StructpruneError, match=r"2 blocks remove 0\.5"):
        select(model, [Granularity.KERNEL], [0.3], SelectionConfig(kernel=KernelForm("blocks", 2)),
               groups=groups)


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("intra", [None, IntraPattern(3, 1), IntraPattern(1, 3)])
def test_blocked_layers_compact_into_grouped_convs_with_no_gather(bn, intra):
    model = plain_net(bn)
    x = torch.randn(3, 3, 16, 16)
    groups = find_channel_groups(model, x[:1])
    mask = blocks_mask(model, groups, blocks=2, intra=intra)
    small = compact(model, mask, sample=x, groups=groups).eval()
    with torch.no_grad(), MaskApplier(model, groups).applied(mask):
        want = model(x)
    with torch.no_grad():
        assert torch.allclose(small(x), want, rtol=1e-4, atol=1e-5)
    blocked = [m for m in small.modules() if isinstance(m, KernelSparseConv2d)]
    assert len(blocked) == 4
    for layer in blocked:  # one grouped conv over the input as it comes, outputs in order
        assert layer._single and [b.groups for b in layer.branches] == [2]


def test_round_to_applies_per_block_so_blocks_stay_equal_and_aligned():
    torch.manual_seed(0)
    model = models.create("plain", spec="2x40C3-MP2-2x40C3-MP2-48C3-24FC-10FC", in_channels=3, input_size=16).eval()
    x = torch.randn(2, 3, 16, 16)
    groups = find_channel_groups(model, x[:1])
    cfg = SelectionConfig(kernel=KernelForm("blocks", 2), round_to=4)
    mask = select(model, [Granularity.CHANNEL, Granularity.KERNEL], [0.3, 0.5], cfg, groups=groups)
    for name, layer in mask.layers.items():  # 40 maps at 0.3: 28 kept, blocks of 14; per block: blocks of 16
        kept = int(layer.keep_out.sum()) if layer.keep_out is not None else None
        if kept is not None and not name.startswith("classifier"):
            assert kept % 8 == 0, (name, kept)
    small = compact(model, mask, sample=x, groups=groups).eval()
    blocked = [m for m in small.modules() if isinstance(m, KernelSparseConv2d)]
    assert len(blocked) == 4
    for layer in blocked:
        assert [b.groups for b in layer.branches] == [2] and layer.in_channels % 8 == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(family=st.sampled_from(sorted(FAMILIES)), blocks=st.sampled_from([2, 3]), channel=st.sampled_from([0.0, 0.25, 0.5]),
       intra=st.sampled_from([None, IntraPattern(0, 2), IntraPattern(3, 1)]), batch=st.integers(1, 3),
       seed=st.integers(0, 2**31 - 1))
def test_blocks_compact_to_the_masked_function_on_every_family(family, blocks, channel, intra, batch, seed):
    model, shape = FAMILIES[family]
    groups = GROUPS[family]
    scales, ratios = [Granularity.CHANNEL, Granularity.KERNEL], [channel, 1 - 1 / blocks]
    if intra is not None:
        scales.append(Granularity.INTRA)
        ratios.append(0.4)
    cfg = SelectionConfig(kernel=KernelForm("blocks", blocks))
    try:
        mask = select(model, scales, ratios, cfg, groups=groups)
    except StructpruneError as exc:  # too few maps left for the blocks: refused in one line
        assert "keep no kernel" in str(exc)
        event("refused: too few maps")
        return
    event(f"blocked layers: {sum(1 for _, lm in mask if lm.keep_kernel is not None)}")
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))
    small = compact(model, mask, sample=x, groups=groups).eval()
    with torch.no_grad(), MaskApplier(model, groups).applied(mask):
        want = model(x)
    with torch.no_grad():
        got = small(x)
    assert float((got - want).abs().max()) <= 1e-4 * max(float(want.abs().max()), 1e-6) + 1e-6
