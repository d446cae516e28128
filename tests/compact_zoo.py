"""Compacted tiny zoo networks for the quantization, packing and export tests."""

from __future__ import annotations

import torch
from torch import nn

from structprune.arch import example_input
from structprune.compact.compaction import compact
from structprune.models import create
from structprune.sparsity.channel_groups import find_channel_groups
from structprune.sparsity.granularity import Granularity
from structprune.sparsity.selection import SelectionConfig, select

TINY_ZOO = ("tiny-paper", "tiny-vgg", "tiny-resnet", "tiny-mobilenet", "tiny-densenet")


def compacted(name: str, channel: float = 0.5, intra: float = 0.5, kernel: float = 0.0, seed: int = 0) -> nn.Module:
    """`name` with half of its channel groups removed (L1), intra-kernel patterns on its convs and, with
    `kernel` > 0, that fraction of its kernels pruned."""
    torch.manual_seed(seed)
    model = create(name).eval()
    x = example_input(model, 2)
    groups = find_channel_groups(model, x)
    scales = [Granularity.CHANNEL, Granularity.INTRA] + ([Granularity.KERNEL] if kernel > 0 else [])
    ratios = [channel, intra] + ([kernel] if kernel > 0 else [])
    mask = select(model, scales, ratios, SelectionConfig(seed=seed), groups=groups)
    return compact(model, mask, x, groups).eval()


def compacted_with_mask(name: str = "tiny-paper", channel: float = 0.5, intra: float = 0.5):
    """(original, mask, compact network)."""
    model = create(name).eval()
    x = example_input(model, 2)
    groups = find_channel_groups(model, x)
    mask = select(model, [Granularity.CHANNEL, Granularity.INTRA], [channel, intra], SelectionConfig(), groups=groups)
    return model, mask, compact(model, mask, x, groups).eval()
