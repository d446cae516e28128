"""Tensor helpers shared by the compact layers: oneDNN-friendly convolution, channel gather, crop and pad."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import conv_flop_count, flop_registry, register_flop_formula

Pair = tuple[int, int]

if torch.ops.aten.mkldnn_convolution not in flop_registry:  # FlopCounterMode must count conv2d()'s direct oneDNN calls
    @register_flop_formula(torch.ops.aten.mkldnn_convolution)
    def _mkldnn_conv_flop(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
        return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


def eager() -> bool:
    """True outside ONNX export, tracing and compiling: plain eager execution."""
    return not (torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.compiler.is_compiling())


def one_channel_fix(t: torch.Tensor) -> torch.Tensor:
    """A [N, 1, H, W] tensor laid out densely gets the plain strides (H·W, H·W, W, 1).

    With one channel, strides like (H·W, 1, W, 1) describe the same memory, but PyTorch 2.13's oneDNN
    convolution computes wrong outputs from them (e.g. stride (1, 2), 5×5 kernel).  A free re-view."""
    if t.dim() == 4 and t.shape[1] == 1 and t.is_contiguous() and not torch.onnx.is_in_onnx_export():
        h, w = t.shape[2:]
        return t.as_strided(t.shape, (h * w, h * w, w, 1))
    return t


def gather_channels(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[:, index] for a channels_last x, as a channels_last tensor (one row gather of the [N·H·W, C]
    matrix; `x.index_select(1, ...)` would return NCHW and run 4× slower)."""
    n, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view when x is channels_last
    return rows.index_select(1, index).view(n, h, w, -1).permute(0, 3, 1, 2)


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Pair, padding: Pair,
           dilation: Pair, groups: int) -> torch.Tensor:
    """F.conv2d, except that a dilated float32 CPU convolution in inference runs on oneDNN directly: for one
    image on small maps PyTorch picks its reference `slow_conv_dilated2d` there, a per-channel loop that is
    much slower. Export, tracing, compiling and autograd always take F.conv2d."""
    if (dilation != (1, 1) and x.device.type == "cpu" and x.dtype == torch.float32
            and torch.backends.mkldnn.is_available() and not torch.is_grad_enabled() and eager()):
        return torch.mkldnn_convolution(x, weight, bias, padding, stride, dilation, groups)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


def crop_and_pad(x: torch.Tensor, crop: tuple[int, int, int, int], pad: tuple[int, int, int, int]) -> torch.Tensor:
    """x[:, :, r0:r1, c0:c1] (crop), then zeros added around it (pad, in F.pad order); no copy when neither is needed."""
    r0, r1, c0, c1 = crop
    if (r0, r1, c0, c1) != (0, x.shape[2], 0, x.shape[3]):
        x = x[:, :, r0:r1, c0:c1]
    if any(pad):
        x = F.pad(x, pad)
    return x
