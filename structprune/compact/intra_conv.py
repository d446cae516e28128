"""Intra-kernel strided sparsity run as a few small dense convolutions that never touch dropped taps.

A (start, stride) pattern on the flattened kh×kw grid is a union of few rectangular, possibly dilated,
sub-grids ("blocks").  On a 3×3 kernel:
  taps 0,3,6   -> one 3×1 block (the left column)
  taps 0,2,6,8 -> one 2×2 block with step 2 (a dilated 2×2 conv)
  taps 0,2,4,6,8 -> that block plus a 1×1 block at the centre
Each block of each pattern becomes one dense convolution over the input maps that use it, with kernel
[O, maps, rows, cols], dilation = block step × conv dilation, and the input shifted to the block's
corner.  Input maps whose patterns share a block (same corner and shape) share that convolution.
The outputs are summed.  Only kept taps are stored as weights and multiplied: the MACs of the layer
are exactly those of the kept taps (torch.utils.flop_counter sees ordinary convolutions).

Inputs are computed in channels_last (oneDNN's fast layout on CPU); the output has the layout of the
input, NCHW or channels_last.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from structprune.arch import register_module_type
from structprune.compact.conv_ops import Pair, conv2d, crop_and_pad, one_channel_fix
from structprune.compact.conv_source import check_zero_padded_conv, take_weights_from
from structprune.errors import StructpruneError
from structprune.sparsity.granularity import IntraPattern


def _pair(value: int | tuple[int, ...] | list[int], name: str) -> Pair:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, str) or len(value) != 2:
        raise StructpruneError(f"{name} must be an int or a pair of ints, not {value!r}")
    return (int(value[0]), int(value[1]))


@dataclass(frozen=True, order=True)
class Block:
    """A dilated rectangle of kernel taps: rows row, row+row_step, ... (rows of them); same for cols."""

    row: int
    col: int
    rows: int
    cols: int
    row_step: int = 1
    col_step: int = 1

    @property
    def last_row(self) -> int:
        return self.row + (self.rows - 1) * self.row_step

    @property
    def last_col(self) -> int:
        return self.col + (self.cols - 1) * self.col_step

    def cells(self) -> list[Pair]:
        """(row, col) of each tap, row-major, the order of the block's weight."""
        return [(self.row + a * self.row_step, self.col + b * self.col_step)
                for a in range(self.rows) for b in range(self.cols)]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.rows, self.cols, self.row_step, self.col_step)


def decompose_taps(taps: tuple[int, ...], kernel_size: Pair) -> list[Block]:
    """Cover a set of flattened taps exactly by few blocks (greedy: the largest block first).

    Example, 3×3: (0, 2, 4, 6, 8) -> [Block(0, 0, 2, 2, 2, 2), Block(1, 1, 1, 1)].
    """
    kh, kw = kernel_size
    left = {(t // kw, t % kw) for t in taps}
    blocks: list[Block] = []
    while left:
        best: Block | None = None
        for (r, c) in sorted(left):
            for rs, cs in itertools.product(range(1, max(kh, 2)), range(1, max(kw, 2))):
                for rows in range(1, (kh - 1 - r) // rs + 2):
                    for cols in range(1, (kw - 1 - c) // cs + 2):
                        cand = Block(r, c, rows, cols, rs if rows > 1 else 1, cs if cols > 1 else 1)
                        if best is not None and rows * cols <= best.rows * best.cols:
                            continue
                        if all(cell in left for cell in cand.cells()):
                            best = cand
        assert best is not None  # a single tap is always a 1×1 block
        blocks.append(best)
        left -= set(best.cells())
    return sorted(blocks)


@dataclass(frozen=True)
class Piece:
    """One dense convolution of the compact layer: a block applied to some input maps of each group."""

    block: Block
    maps: tuple[int, ...]  # input maps (index within a group) that read this block


def plan_pieces(patterns: list[IntraPattern | None], kernel_size: Pair) -> list[Piece]:
    """Blocks of every pattern, input maps sharing a block merged into one piece."""
    kh, kw = kernel_size
    full = IntraPattern(0, 1)
    users: dict[Block, list[int]] = {}
    by_taps: dict[tuple[int, ...], list[Block]] = {}
    for i, pattern in enumerate(patterns):
        taps = (pattern or full).taps(kh * kw)
        if taps not in by_taps:
            by_taps[taps] = decompose_taps(taps, kernel_size)
        for block in by_taps[taps]:
            users.setdefault(block, []).append(i)
    return [Piece(block, tuple(maps)) for block, maps in sorted(users.items())]


def check_patterns(patterns: Any, in_per_group: int, kernel_size: Pair, where: str) -> list[IntraPattern | None]:
    """Validate one pattern (or None) per input map of a group."""
    if not isinstance(patterns, list | tuple):
        raise StructpruneError(f"{where}: intra-kernel patterns must be a list, one per input map")
    if len(patterns) != in_per_group:
        raise StructpruneError(f"{where}: {len(patterns)} intra-kernel patterns, layer has {in_per_group} input maps per group")
    out: list[IntraPattern | None] = []
    for p in patterns:
        if p is not None and not isinstance(p, IntraPattern):
            p = IntraPattern(int(p[0]), int(p[1]))
        if p is not None:
            p.validate(kernel_size[0] * kernel_size[1], where=where)
        out.append(p)
    return out


class DirectConv(NamedTuple):
    """A layer that is one convolution of its input, at one input size: crop, zero-pad, convolve."""

    crop: tuple[int, int, int, int]  # input rows r0:r1 and columns c0:c1 that the block reads
    pad: tuple[int, int, int, int]  # zeros added around them, in F.pad order: left, right, top, bottom
    padding: Pair  # the convolution's own symmetric padding
    dilation: Pair


class BlockConvs(nn.Module):
    """The engine: the sum of one dense convolution per block *shape*.  Used by the compact layers.

    The pieces (block, input maps) of one shape, e.g. every 3×1 column whatever its column, share one
    convolution over a lowered input: the shifted input maps of every piece side by side, convolved
    with padding 0.  The lowered input is built from the padded input either by concatenating shifted
    views (when every piece reads all input maps) or by a single index_select (its index depends only
    on the input size and is cached).  A shape with one piece that reads every input map skips the
    lowering and convolves the input itself.  Input maps are numbered within a group; a piece reads
    the same maps of every group.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Pair, stride: Pair, padding: Pair,
                 dilation: Pair, groups: int, pieces: list[Piece]):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        shapes: dict[tuple[int, int, int, int], list[Piece]] = {}
        for piece in pieces:
            shapes.setdefault(piece.block.shape, []).append(piece)
        self.plan = list(shapes.values())  # the pieces of each convolution
        in_per_group = in_channels // groups
        every_map = tuple(range(in_per_group))
        self._direct = [len(ps) == 1 and ps[0].maps == every_map for ps in self.plan]
        self._by_views = [groups == 1 and all(p.maps == every_map for p in ps) for ps in self.plan]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(out_channels, sum(len(p.maps) for p in ps), ps[0].block.rows, ps[0].block.cols))
            for ps in self.plan
        )
        kh, kw = kernel_size
        dense_index: list[torch.Tensor] = []  # where each weight entry sits in the dense [O, I/g * kh * kw]
        for ps in self.plan:
            for piece in ps:
                cells = torch.tensor([r * kw + c for r, c in piece.block.cells()])  # [rows*cols]
                dense_index.append((torch.tensor(piece.maps)[:, None] * (kh * kw) + cells[None, :]).flatten())
        self.register_buffer("dense_index", torch.cat(dense_index), persistent=False)
        self._gather_index: dict[tuple[int, int, int, torch.device], list[torch.Tensor | None]] = {}
        self._direct_plans: dict[Pair, DirectConv | None] = {}

    @torch.no_grad()
    def load_dense(self, weight: torch.Tensor) -> None:
        """Copy the kept taps out of a dense weight [O, I/groups, kh, kw]."""
        flat = weight.reshape(weight.shape[0], -1)
        start = 0
        for w in self.weights:
            n = w[0].numel()
            w.copy_(flat[:, self.dense_index[start:start + n]].view_as(w))
            start += n

    def dense_weight(self) -> torch.Tensor:
        """The equivalent dense weight [O, I/groups, kh, kw], dropped taps zero (differentiable)."""
        o, kh, kw = self.out_channels, *self.kernel_size
        flat = torch.cat([w.reshape(o, -1) for w in self.weights], dim=1)  # [O, kept taps]
        dense = flat.new_zeros(o, self.in_channels // self.groups * kh * kw)
        return dense.index_copy(1, self.dense_index, flat).view(o, -1, kh, kw)

    def output_size(self, h: int, w: int) -> Pair:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1

    def _axis_plan(self, block: Block, size: int, axis: int) -> tuple[int, int, int, int, int]:
        """For one spatial axis of a block read directly: (crop start, crop end, pad before, pad after,
        conv padding).  Output o reads input o*stride - padding + tap*dilation of the original conv, for
        the block's taps only; the input is cropped/padded to exactly that extent."""
        k = self.kernel_size[axis]
        s, p, d = self.stride[axis], self.padding[axis], self.dilation[axis]
        first, last = (block.row, block.last_row) if axis == 0 else (block.col, block.last_col)
        out = (size + 2 * p - d * (k - 1) - 1) // s + 1
        before = p - first * d  # output 0 reads input index -before
        after = (out - 1) * s - p + last * d - (size - 1)  # the last output reads index size-1+after
        inner = max(0, min(before, after))  # symmetric part, left to the convolution itself
        before, after = before - inner, after - inner
        return max(0, -before), size + min(0, after), max(0, before), max(0, after), inner

    def _reads_input(self, block: Block, h: int, w: int) -> bool:
        """False when, at this input size, a block reads only zero padding (then it is gathered)."""
        r0, r1, *_ = self._axis_plan(block, h, 0)
        c0, c1, *_ = self._axis_plan(block, w, 1)
        return r1 > r0 and c1 > c0

    def _direct_input(self, x: torch.Tensor, block: Block) -> tuple[torch.Tensor, Pair]:
        """The input cropped/padded for a block read directly, and the conv padding left."""
        _, _, h, w = x.shape
        r0, r1, top, bottom, ph = self._axis_plan(block, h, 0)
        c0, c1, left, right, pw = self._axis_plan(block, w, 1)
        return crop_and_pad(x, (r0, r1, c0, c1), (left, right, top, bottom)), (ph, pw)

    def direct_conv(self, h: int, w: int) -> DirectConv | None:
        """How the layer runs as one convolution of its input at this input size (one block shape read by
        every input map): the input cropped and zero-padded to what the block reads, then convolved. None when
        the layer is not one convolution, or its block reads only padding at this size."""
        if (h, w) not in self._direct_plans:
            plan = None
            if len(self.plan) == 1 and self._direct[0] and self._reads_input(self.plan[0][0].block, h, w):
                block = self.plan[0][0].block
                r0, r1, top, bottom, ph = self._axis_plan(block, h, 0)
                c0, c1, left, right, pw = self._axis_plan(block, w, 1)
                plan = DirectConv((r0, r1, c0, c1), (left, right, top, bottom), (ph, pw),
                                  (block.row_step * self.dilation[0], block.col_step * self.dilation[1]))
            self._direct_plans[(h, w)] = plan
        return self._direct_plans[(h, w)]

    def direct_forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
        """The layer run as its one convolution (direct_conv) on x as it comes, in x's memory layout, or None
        when it is not one convolution at this input size. Skips the general path's layout changes."""
        plan = self.direct_conv(x.shape[2], x.shape[3])
        if plan is None:
            return None
        x = crop_and_pad(x, plan.crop, plan.pad)
        return one_channel_fix(conv2d(one_channel_fix(x), self.weights[0], bias, self.stride, plan.padding,
                                      plan.dilation, self.groups))

    def _lowered_size(self, block: Block, h: int, w: int) -> Pair:
        """Spatial size of the lowered input of a block shape: exactly what its convolution reads."""
        ho, wo = self.output_size(h, w)
        (sh, sw), (dh, dw) = self.stride, self.dilation
        return ((ho - 1) * sh + (block.rows - 1) * block.row_step * dh + 1,
                (wo - 1) * sw + (block.cols - 1) * block.col_step * dw + 1)

    def _gather_indices(self, h: int, w: int, device: torch.device) -> list[torch.Tensor | None]:
        """Per convolution, the flat index of each lowered element in the padded channels_last input."""
        key = (h, w, self.in_channels, device)
        if key not in self._gather_index:
            pw, (dh, dw) = self.padding[1], self.dilation
            wp, c, in_per_group = w + 2 * pw, self.in_channels, self.in_channels // self.groups
            indices: list[torch.Tensor | None] = []
            for ps, by_views in zip(self.plan, self._by_views, strict=True):
                if by_views:
                    indices.append(None)
                    continue
                hs, ws = self._lowered_size(ps[0].block, h, w)
                # lowered channel j: input map ch_j read at kernel offset (row_j, col_j); group-major order
                offsets = [((p.block.row * dh) * wp + p.block.col * dw) * c + g * in_per_group + m
                           for g in range(self.groups) for p in ps for m in p.maps]
                base = (torch.arange(hs)[:, None] * wp + torch.arange(ws)[None, :]) * c  # [hs, ws]
                indices.append((base[:, :, None] + torch.tensor(offsets)).flatten().to(device))  # [hs*ws*C']
            if len(self._gather_index) >= 4:
                self._gather_index.clear()
            self._gather_index[key] = indices
        return self._gather_index[key]

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x channels_last [N, I, H, W] -> [N, O, H', W'] channels_last."""
        n, _, h, w = x.shape
        indices = self._gather_indices(h, w, x.device)
        padded: torch.Tensor | None = None
        out: torch.Tensor | None = None
        for ps, weight, index, direct in zip(self.plan, self.weights, indices, self._direct, strict=True):
            block = ps[0].block
            dilation = (block.row_step * self.dilation[0], block.col_step * self.dilation[1])
            if direct and self._reads_input(block, h, w):
                xin, padding = self._direct_input(x, block)
            else:
                if padded is None:
                    ph, pw = self.padding
                    padded = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x  # [N, I, Hp, Wp] CL
                hs, ws = self._lowered_size(block, h, w)
                if index is None:  # shifted views of every input map, side by side
                    (dh, dw) = self.dilation
                    xin = torch.cat([padded[:, :, p.block.row * dh:p.block.row * dh + hs,
                                            p.block.col * dw:p.block.col * dw + ws] for p in ps], dim=1)
                else:
                    flat = padded.permute(0, 2, 3, 1).reshape(n, -1)  # [N, Hp*Wp*I] channels_last order
                    xin = flat.index_select(1, index).view(n, hs, ws, -1).permute(0, 3, 1, 2)  # [N, C', hs, ws] CL
                padding = (0, 0)
            xin = one_channel_fix(xin)
            y = conv2d(xin, weight, bias if out is None else None, self.stride, padding, dilation, self.groups)
            if out is None:
                out = y
            else:
                out.add_(y)
            # free the temporaries now: fresh large buffers cost page faults (up to 2x the time here)
            del xin, y
        assert out is not None
        return out


@register_module_type
class IntraKernelConv2d(nn.Module):
    """A conv whose kernels keep, per input map, the taps of an (start, stride) pattern; see module doc."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Pair, stride: int | Pair = 1,
                 padding: int | Pair = 0, dilation: int | Pair = 1, groups: int = 1, bias: bool = True,
                 patterns: list[IntraPattern | None] | None = None):
        super().__init__()
        kernel_size, stride = _pair(kernel_size, "kernel_size"), _pair(stride, "stride")
        padding, dilation = _pair(padding, "padding"), _pair(dilation, "dilation")
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise StructpruneError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        in_per_group = in_channels // groups
        if patterns is None:
            patterns = [None] * in_per_group
        self.patterns = check_patterns(patterns, in_per_group, kernel_size, "IntraKernelConv2d")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.blocks = BlockConvs(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                                plan_pieces(self.patterns, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, patterns: list[IntraPattern | None]) -> IntraKernelConv2d:
        """The compact form of `conv` with `patterns[i]` applied to input map i of every group."""
        check_zero_padded_conv(conv, "intra-kernel")
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, patterns)
        take_weights_from(layer, conv)
        return layer

    def dense_weight(self) -> torch.Tensor:
        """[O, I/groups, kh, kw]: the masked dense weight this layer computes with."""
        return self.blocks.dense_weight()

    @torch.no_grad()
    def load_dense_weight(self, weight: torch.Tensor) -> None:
        """Take the kept taps from a dense weight [O, I/groups, kh, kw] (e.g. after quantizing dense_weight())."""
        self.blocks.load_dense(weight.to(self.blocks.weights[0].dtype))

    def kept_taps(self) -> int:
        """Number of weights stored (per output map, summed over input maps of a group)."""
        return sum(w[0].numel() for w in self.blocks.weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, O, H', W'], layout kept
        if (y := self.blocks.direct_forward(x, self.bias)) is not None:  # one smaller dense conv: no layout change
            return y
        nchw = x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last)  # ambiguous: NCHW
        x = x.contiguous(memory_format=torch.channels_last)
        y = self.blocks(x, self.bias)
        return one_channel_fix(y.contiguous() if nchw else y.contiguous(memory_format=torch.channels_last))

    def to_spec(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels, "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding),
            "dilation": list(self.dilation), "groups": self.groups, "bias": self.bias is not None,
            "patterns": [None if p is None else [p.start, p.stride] for p in self.patterns],
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> IntraKernelConv2d:
        return cls(**spec)

    def extra_repr(self) -> str:
        kh, kw = self.kernel_size
        kept = self.kept_taps()
        full = self.in_channels // self.groups * kh * kw
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"taps={kept}/{full} ({math.floor(100 * kept / full)}%), convs={len(self.blocks.plan)}")
