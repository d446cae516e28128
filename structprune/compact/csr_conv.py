"""The same sparsity run as *unstructured* sparse: im2col + a CSR sparse × dense matrix product.

This is the reference the paper argues against: the zeros are skipped, but the access pattern is
irregular.  Benchmarks compare every structured compact layer with it at equal nonzeros.

  weight [O, I/g, kh, kw], mask  ->  CSR matrix [O, I·kh·kw] (block-diagonal for groups > 1)
  x [N, I, H, W] --unfold--> [N, I·kh·kw, L] --> [I·kh·kw, N·L];  CSR @ it -> [O, N·L] -> [N, O, H', W']

During `torch.onnx.export` (ONNX has no sparse product) the layer runs as the equivalent dense conv.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import register_flop_formula

from structprune.arch import register_module_type
from structprune.compact.conv_ops import Pair, one_channel_fix
from structprune.compact.conv_source import check_zero_padded_conv, take_weights_from
from structprune.compact.intra_conv import _pair
from structprune.errors import StructpruneError


@torch.library.custom_op("structprune::csr_matmul", mutates_args=())
def csr_matmul(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, dense: torch.Tensor, rows: int) -> torch.Tensor:
    """CSR [rows, K] (crow, col, values) @ dense [K, M] -> [rows, M].  An op of its own so that
    torch.utils.flop_counter counts its real work (2 · nonzeros · M FLOPs), not that of a dense product."""
    sparse = torch.sparse_csr_tensor(crow, col, values, (rows, dense.shape[0]), check_invariants=False)
    return sparse @ dense


@csr_matmul.register_fake
def _(crow, col, values, dense, rows):
    return dense.new_empty(rows, dense.shape[1])


def _csr_matmul_backward(ctx, grad: torch.Tensor):
    crow, col, values, dense = ctx.saved_tensors
    row = torch.repeat_interleave(torch.arange(ctx.rows, device=crow.device), crow.diff())  # row of each nonzero
    grad_values = (grad[row] * dense[col]).sum(dim=1)  # [nnz]
    sparse = torch.sparse_csr_tensor(crow, col, values, (ctx.rows, dense.shape[0]), check_invariants=False)
    grad_dense = sparse.to_dense().t() @ grad  # [K, M]
    return None, None, grad_values, grad_dense, None


def _csr_matmul_setup(ctx, inputs, output):
    crow, col, values, dense, rows = inputs
    ctx.save_for_backward(crow, col, values, dense)
    ctx.rows = rows


csr_matmul.register_autograd(_csr_matmul_backward, setup_context=_csr_matmul_setup)


@register_flop_formula(torch.ops.structprune.csr_matmul)
def _csr_matmul_flops(crow_shape, col_shape, values_shape, dense_shape, rows, *args, **kwargs) -> int:
    return 2 * values_shape[0] * dense_shape[1]


@register_module_type
class CsrConv2d(nn.Module):
    """A conv whose kept weights (mask bits) are stored and multiplied as a CSR sparse matrix."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Pair, keep: torch.Tensor | list[str],
                 stride: int | Pair = 1, padding: int | Pair = 0, dilation: int | Pair = 1, groups: int = 1,
                 bias: bool = True):
        super().__init__()
        kernel_size, stride = _pair(kernel_size, "kernel_size"), _pair(stride, "stride")
        padding, dilation = _pair(padding, "padding"), _pair(dilation, "dilation")
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise StructpruneError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        kh, kw = kernel_size
        in_per_group = in_channels // groups
        if not isinstance(keep, torch.Tensor):
            if any(set(r) - {"0", "1"} for r in keep):
                raise StructpruneError("CSR keep rows must be strings of 0 and 1")
            keep = torch.tensor([[c == "1" for c in r] for r in keep], dtype=torch.bool)
        keep = keep.to(device="cpu").bool()
        if keep.dim() == 4:  # [O, I/g, kh, kw]
            keep = keep.reshape(keep.shape[0], -1)
        if tuple(keep.shape) != (out_channels, in_per_group * kh * kw):
            raise StructpruneError(
                f"weight mask has {tuple(keep.shape)} entries per output, layer needs ({out_channels}, {in_per_group * kh * kw})")
        if not bool(keep.any()):
            raise StructpruneError("weight mask removes every weight of the layer")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.keep = keep  # bool [O, I/g * kh * kw]
        rows, cols = keep.nonzero(as_tuple=True)  # row-major, as CSR needs
        group_offset = (rows // (out_channels // groups)) * in_per_group * kh * kw
        counts = keep.sum(dim=1)
        self.register_buffer("crow_indices", torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]),
                             persistent=False)
        self.register_buffer("col_indices", cols + group_offset, persistent=False)  # column in [O, I*kh*kw]
        self.register_buffer("dense_index", rows * keep.shape[1] + cols, persistent=False)  # in [O, I/g*kh*kw]
        self.values = nn.Parameter(torch.zeros(int(counts.sum())))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, weight_mask: torch.Tensor) -> CsrConv2d:
        """`conv` with the weights where weight_mask [O, I/g, kh, kw] is 0 removed, run as CSR."""
        check_zero_padded_conv(conv, "CSR")
        if tuple(weight_mask.shape) != tuple(conv.weight.shape):
            raise StructpruneError(f"weight mask is {tuple(weight_mask.shape)}, conv weight is {tuple(conv.weight.shape)}")
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, weight_mask.reshape(conv.out_channels, -1) != 0,
                    conv.stride, conv.padding, conv.dilation, conv.groups, conv.bias is not None)
        take_weights_from(layer, conv)
        return layer

    @torch.no_grad()
    def load_dense_weight(self, weight: torch.Tensor) -> None:
        """Take the kept weights from a dense weight [O, I/g, kh, kw]."""
        self.values.copy_(weight.reshape(-1)[self.dense_index])

    def dense_weight(self) -> torch.Tensor:
        """[O, I/g, kh, kw]: the masked dense weight (differentiable)."""
        o, (kh, kw) = self.out_channels, self.kernel_size
        dense = self.values.new_zeros(o * self.keep.shape[1])
        return dense.index_copy(0, self.dense_index, self.values).view(o, -1, kh, kw)

    def sparse_weight(self) -> torch.Tensor:
        """The CSR matrix [O, I·kh·kw]."""
        kh, kw = self.kernel_size
        return torch.sparse_csr_tensor(self.crow_indices, self.col_indices, self.values,
                                       (self.out_channels, self.in_channels * kh * kw), check_invariants=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, I, H, W] -> [N, O, H', W'], layout kept
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        if torch.onnx.is_in_onnx_export():
            return F.conv2d(x, self.dense_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)
        n, _, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        out_h, out_w = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # [N, I*kh*kw, L]
        cols = cols.transpose(0, 1).reshape(cols.shape[1], -1)  # [I*kh*kw, N*L]
        y = csr_matmul(self.crow_indices, self.col_indices, self.values, cols, self.out_channels)  # [O, N*L]
        y = y.view(self.out_channels, n, out_h, out_w).transpose(0, 1)  # [N, O, H', W']
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return one_channel_fix(y.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format))

    def to_spec(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels, "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding),
            "dilation": list(self.dilation), "groups": self.groups, "bias": self.bias is not None,
            "keep": ["".join("1" if b else "0" for b in row) for row in self.keep.tolist()],
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> CsrConv2d:
        return cls(**spec)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"nonzeros={self.values.numel()}/{self.keep.numel()}")
