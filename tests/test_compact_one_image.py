"""One channels_last image through the compact layers: the masked convolution, its layout and its MACs."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from structprune.compact import IntraKernelConv2d, KernelSparseConv2d
from structprune.sparsity.granularity import IntraPattern
from structprune.sparsity.masks import LayerMask

CL = torch.channels_last


@pytest.mark.parametrize("pattern", [IntraPattern(0, 1), IntraPattern(3, 1)])  # 2×3 blocks: top rows, bottom rows
def test_one_image_compact_layers_equal_the_masked_conv_and_count_kept_taps(pattern):
    conv = nn.Conv2d(6, 4, 3, padding=1)
    patterns = [pattern] * 6
    keep = torch.zeros(4, 6, dtype=torch.bool)
    keep[:2, :3] = keep[2:, 3:] = True  # two blocks: one grouped convolution
    layers = [IntraKernelConv2d.from_conv(conv, patterns), KernelSparseConv2d.from_conv(conv, keep, patterns)]
    masks = [LayerMask(shape=(4, 6, 3, 3), intra=patterns).weight_mask(),
             LayerMask(shape=(4, 6, 3, 3), keep_kernel=keep, intra=patterns).weight_mask()]
    x = torch.randn(1, 6, 8, 7).contiguous(memory_format=CL)
    for layer, mask in zip(layers, masks, strict=True):
        with torch.no_grad():
            y = layer(x)
            ref = F.conv2d(x, conv.weight * mask, conv.bias, 1, 1)
            with FlopCounterMode(display=False) as counter:
                layer(x)
        assert y.shape == ref.shape and torch.allclose(y, ref, atol=1e-5)
        assert y.is_contiguous(memory_format=CL)
        kept = int(mask.sum())
        assert counter.get_total_flops() == 2 * 8 * 7 * kept
