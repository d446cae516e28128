"""Eager shortcuts of the compact layers' convolution helpers equal the plain padded convolution."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from structprune.compact import IntraKernelConv2d, KernelSparseConv2d
from structprune.compact.conv_ops import conv_rows_padded, zero_pad
from structprune.sparsity.granularity import IntraPattern
from structprune.sparsity.masks import LayerMask

CL = torch.channels_last


@pytest.mark.parametrize("pad", [(0, 0, 1, 0), (2, 1, 0, 3), (1, 1, 1, 1), (0, 2, 0, 0)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_zero_pad_equals_f_pad_in_the_input_layout(pad, layout):
    x = torch.randn(3, 4, 5, 6)
    if layout == "channels_last":
        x = x.contiguous(memory_format=CL)
    with torch.no_grad():
        y = zero_pad(x, pad)
    assert torch.equal(y, F.pad(x, pad))
    assert y.is_contiguous(memory_format=CL if layout == "channels_last" else torch.contiguous_format)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("pad", [(0, 0, 1, 0), (0, 0, 0, 2), (0, 0, 2, 1), (0, 0, 1, 2)])
def test_one_image_rows_padded_by_the_conv_equals_padding_the_input(pad, stride):
    x = torch.randn(1, 6, 9, 7).contiguous(memory_format=CL)
    w = torch.randn(4, 3, 2, 3)
    crop = (1, 8, 0, 7)
    with torch.no_grad():
        y = conv_rows_padded(x, w, None, (stride, 1), crop, pad, (1, 1), (1, 1), 2)
        ref = F.conv2d(F.pad(x[:, :, 1:8], pad), w, None, (stride, 1), (1, 1), 1, 2)
    if pad == (0, 0, 1, 2) and stride == 2:  # one extra top row is not a whole output row: not used
        assert y is None
        return
    assert y is not None and y.shape == ref.shape
    assert torch.allclose(y, ref, atol=1e-5)
    assert y.is_contiguous(memory_format=CL)


def test_rows_padding_shortcut_applies_only_to_one_channels_last_image():
    w = torch.randn(4, 6, 2, 3)
    args = (w, None, (1, 1), (0, 5, 0, 5), (0, 0, 1, 0), (0, 1), (1, 1), 1)
    assert conv_rows_padded(torch.randn(2, 6, 5, 5).contiguous(memory_format=CL), *args) is None  # two images
    assert conv_rows_padded(torch.randn(1, 6, 5, 5), *args) is None  # NCHW
    cols = (w, None, (1, 1), (0, 5, 0, 5), (1, 0, 0, 0), (0, 1), (1, 1), 1)
    assert conv_rows_padded(torch.randn(1, 6, 5, 5).contiguous(memory_format=CL), *cols) is None  # a column pad
    with FlopCounterMode(display=False):  # counting MACs: the exact form, no extra rows
        assert conv_rows_padded(torch.randn(1, 6, 5, 5).contiguous(memory_format=CL), *args) is None


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
