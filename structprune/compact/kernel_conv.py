"""Kernel-level sparsity run for real: pruned kernels are neither stored nor multiplied.

Output maps that keep the same set of input maps form a row group.  When all row groups have the
same size and keep the same number of input maps (the *structured* kernel sparsity that
`structured_kernel_mask` produces), the layer is one channel gather plus one grouped convolution:

    keep_kernel [O=4, I=4]        gathered input      grouped conv (groups=2)
    out 0,1 keep inputs {0, 2} -> x[:, [0, 2, 1, 3]] -> weight [4, 2, kh, kw]
    out 2,3 keep inputs {1, 3}

Otherwise (or above MAX_GROUPS groups, where oneDNN's grouped convolution is the slower choice) each row
group is its own convolution over its gathered inputs, and the outputs are put back in order with one
channel permutation (none when the groups are consecutive output maps, as structured_kernel_mask makes
them).  Input maps with every kernel pruned are never read;
output maps with every kernel pruned are the bias alone.  Intra-kernel patterns (one per input map)
can be combined: each convolution then runs as the block convolutions of `intra_conv`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from structprune.arch import register_module_type
from structprune.compact.conv_ops import Pair, gather_channels, one_channel_fix
from structprune.compact.conv_source import check_zero_padded_conv, take_weights_from
from structprune.compact.intra_conv import BlockConvs, _pair, check_patterns, plan_pieces
from structprune.errors import StructpruneError
from structprune.sparsity.granularity import IntraPattern

# Above this many groups, separate convolutions (one per group, outputs concatenated) ran faster than one
# grouped convolution in oneDNN on this CPU; up to it, the grouped one is as fast or faster.
MAX_GROUPS = 4


def structured_kernel_mask(weight: torch.Tensor, groups: int, keep_fraction: float,
                           scores: torch.Tensor | None = None) -> torch.Tensor:
    """bool [O, I]: output maps split into `groups` consecutive groups, each keeping the same number of
    input maps (round(keep_fraction · I), at least 1), those with the largest summed score in the group.

    scores [O, I] default to the L1 norm of each kernel.  Example: O=128, groups=4, keep_fraction=0.5
    -> 4 groups of 32 output maps, each reading its own 64 input maps (50% of the kernels kept).
    """
    out_ch, in_ch = weight.shape[:2]
    if groups < 1 or out_ch % groups:
        raise StructpruneError(f"kernel groups={groups} must divide the {out_ch} output maps")
    if not 0.0 < keep_fraction <= 1.0:
        raise StructpruneError(f"kernel keep fraction {keep_fraction} must lie in (0, 1]")
    if scores is None:
        scores = weight.detach().abs().sum(dim=(2, 3))  # [O, I]
    if tuple(scores.shape) != (out_ch, in_ch):
        raise StructpruneError(f"kernel scores are {tuple(scores.shape)}, need ({out_ch}, {in_ch})")
    keep = max(1, round(keep_fraction * in_ch))
    per_group = scores.reshape(groups, out_ch // groups, in_ch).sum(dim=1)  # [groups, I]
    chosen = per_group.topk(keep, dim=1).indices  # [groups, keep]
    mask = torch.zeros(groups, in_ch, dtype=torch.bool)
    mask.scatter_(1, chosen, True)
    return mask.repeat_interleave(out_ch // groups, dim=0)  # [O, I]


def _row_groups(keep: torch.Tensor) -> tuple[list[tuple[list[int], list[int]]], list[int]]:
    """([(output maps, kept input maps)] for each distinct non-empty row, output maps with no kernel)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    empty: list[int] = []
    for o, row in enumerate(keep.tolist()):
        kept = tuple(i for i, b in enumerate(row) if b)
        (groups.setdefault(kept, []) if kept else empty).append(o)
    return [(outs, list(ins)) for ins, outs in groups.items()], empty


def _pattern_key(patterns: list[IntraPattern | None], maps: list[int]) -> list[tuple[int, int]]:
    return sorted((p.start, p.stride) if p else (0, 1) for p in (patterns[i] for i in maps))


@register_module_type
class KernelSparseConv2d(nn.Module):
    """A groups=1 conv with kernels pruned (keep_kernel bool [O, I]) and optional intra patterns."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Pair, keep_kernel: torch.Tensor | list[str],
                 stride: int | Pair = 1, padding: int | Pair = 0, dilation: int | Pair = 1, bias: bool = True,
                 patterns: list[IntraPattern | None] | None = None):
        super().__init__()
        kernel_size, stride = _pair(kernel_size, "kernel_size"), _pair(stride, "stride")
        padding, dilation = _pair(padding, "padding"), _pair(dilation, "dilation")
        if not isinstance(keep_kernel, torch.Tensor):
            if any(set(r) - {"0", "1"} for r in keep_kernel):
                raise StructpruneError("keep_kernel rows must be strings of 0 and 1")
            keep_kernel = torch.tensor([[c == "1" for c in r] for r in keep_kernel], dtype=torch.bool)
        keep_kernel = keep_kernel.to(device="cpu", dtype=torch.bool)
        if tuple(keep_kernel.shape) != (out_channels, in_channels):
            raise StructpruneError(
                f"kernel mask is {tuple(keep_kernel.shape)}, layer needs ({out_channels}, {in_channels})")
        if not bool(keep_kernel.any()):
            raise StructpruneError("kernel mask removes every kernel of the layer")
        self.patterns = None if patterns is None else check_patterns(patterns, in_channels, kernel_size, "KernelSparseConv2d")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.keep_kernel = keep_kernel
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self._build(*_row_groups(keep_kernel))

    def _build(self, rows: list[tuple[list[int], list[int]]], empty: list[int]) -> None:
        """Branches: (output maps, input maps, groups) each run as one BlockConvs; see module doc."""
        branches = self._structured(rows) or [(outs, ins, 1) for outs, ins in rows]
        self.empty_outputs = empty
        self.branches = nn.ModuleList()
        self._gather: list[bool] = []
        order: list[int] = []
        dense_index: list[torch.Tensor] = []
        for k, (outs, ins, groups) in enumerate(branches):
            in_per_group = len(ins) // groups
            local = [self.patterns[i] for i in ins[:in_per_group]] if self.patterns else [None] * in_per_group
            self.branches.append(BlockConvs(len(ins), len(outs), self.kernel_size, self.stride, self.padding,
                                            self.dilation, groups, plan_pieces(local, self.kernel_size)))
            self.register_buffer(f"inputs_{k}", torch.tensor(ins), persistent=False)
            self._gather.append(ins != list(range(self.in_channels)))
            self.register_buffer(f"outputs_{k}", torch.tensor(outs), persistent=False)
            out_per_group = len(outs) // groups
            # row of each branch weight entry [len(outs), in_per_group] in the dense [O * I] kernel table
            o = torch.tensor(outs)[:, None]  # [outs, 1]
            i = torch.tensor(ins).view(groups, in_per_group).repeat_interleave(out_per_group, dim=0)  # [outs, ipg]
            dense_index.append((o * self.in_channels + i).flatten())
            order += outs
        order += empty
        self.register_buffer("dense_index", torch.cat(dense_index), persistent=False)
        self._permute = order != list(range(self.out_channels))
        self.register_buffer("inverse_order", torch.tensor(order).argsort(), persistent=False)
        self.register_buffer("empty_index", torch.tensor(empty, dtype=torch.long), persistent=False)
        # one branch reading every input map in order, every output map in order: the layer may be one conv
        self._single = len(self.branches) == 1 and not self._gather[0] and not self._permute and not empty

    def _structured(self, rows: list[tuple[list[int], list[int]]]) -> list[tuple[list[int], list[int], int]] | None:
        """One grouped branch when every row group can be cut into equal groups with equal input counts."""
        if len({len(ins) for _, ins in rows}) != 1:
            return None
        size = math.gcd(*(len(outs) for outs, _ in rows))
        if self.patterns is not None:  # a grouped conv shares patterns by position within a group
            rows = [(outs, sorted(ins, key=lambda i: _pattern_key(self.patterns, [i]))) for outs, ins in rows]
            if len({tuple(_pattern_key(self.patterns, ins)) for _, ins in rows}) != 1:
                return None
        outs_all: list[int] = []
        ins_all: list[int] = []
        for outs, ins in rows:
            for start in range(0, len(outs), size):
                outs_all += outs[start:start + size]
                ins_all += ins
        groups = len(outs_all) // size
        if groups > 2 * len(rows):  # each split repeats the gather of its inputs: per-row-group convs win
            return None
        if groups > MAX_GROUPS:
            return None
        return [(outs_all, ins_all, groups)]

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, keep_kernel: torch.Tensor,
                  patterns: list[IntraPattern | None] | None = None) -> KernelSparseConv2d:
        """The compact form of `conv` with the kernels where keep_kernel is False removed."""
        check_zero_padded_conv(conv, "kernel")
        if conv.groups != 1:
            raise StructpruneError(f"kernel-level compaction supports groups=1 convolutions only, not groups={conv.groups}")
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, keep_kernel, conv.stride, conv.padding,
                    conv.dilation, conv.bias is not None, patterns)
        take_weights_from(layer, conv)
        return layer

    @torch.no_grad()
    def load_dense_weight(self, weight: torch.Tensor) -> None:
        """Take the kept kernels from a dense weight [O, I, kh, kw] (e.g. after quantizing dense_weight())."""
        kh, kw = self.kernel_size
        table = weight.reshape(-1, kh, kw)  # [O * I, kh, kw]
        start = 0
        for branch in self.branches:
            n = branch.out_channels * branch.in_channels // branch.groups
            branch.load_dense(table[self.dense_index[start:start + n]].view(branch.out_channels, -1, kh, kw))
            start += n

    def dense_weight(self) -> torch.Tensor:
        """[O, I, kh, kw]: the masked dense weight this layer computes with (differentiable)."""
        kh, kw = self.kernel_size
        parts = torch.cat([b.dense_weight().reshape(-1, kh * kw) for b in self.branches])  # [kept kernels, kh*kw]
        table = parts.new_zeros(self.out_channels * self.in_channels, kh * kw)
        return table.index_copy(0, self.dense_index, parts).view(self.out_channels, self.in_channels, kh, kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, I, H, W] -> [N, O, H', W'], layout kept
        if self._single and (y := self.branches[0].direct_forward(x, self.bias)) is not None:
            return y  # one smaller dense convolution: no gather, no layout change
        nchw = x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last)  # ambiguous: NCHW
        x = x.contiguous(memory_format=torch.channels_last)
        outs = []
        for k, branch in enumerate(self.branches):
            bias = None if self.bias is None else self.bias[getattr(self, f"outputs_{k}")]
            xin = gather_channels(x, getattr(self, f"inputs_{k}")) if self._gather[k] else x
            outs.append(branch(xin, bias))
        if self.empty_outputs:
            h, w = self.branches[0].output_size(x.shape[2], x.shape[3])
            fill = x.new_zeros(x.shape[0], len(self.empty_outputs), h, w)
            if self.bias is not None:
                fill = fill + self.bias[self.empty_index].view(1, -1, 1, 1)
            outs.append(fill)
        y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        if self._permute:
            y = gather_channels(y.contiguous(memory_format=torch.channels_last), self.inverse_order)
        return one_channel_fix(y.contiguous() if nchw else y.contiguous(memory_format=torch.channels_last))

    def kept_kernels(self) -> int:
        return int(self.keep_kernel.sum())

    @property
    def moves_maps(self) -> bool:
        """True when the layer gathers a subset of its input maps for some branch or permutes its outputs
        (data movement beside the convolutions; a kernel-block layer after block ordering does neither)."""
        return any(self._gather) or self._permute

    def to_spec(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels, "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding),
            "dilation": list(self.dilation), "bias": self.bias is not None,
            "keep_kernel": ["".join("1" if b else "0" for b in row) for row in self.keep_kernel.tolist()],
            "patterns": None if self.patterns is None else [None if p is None else [p.start, p.stride] for p in self.patterns],
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> KernelSparseConv2d:
        return cls(**spec)

    def extra_repr(self) -> str:
        groups = [b.groups for b in self.branches]
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, kernels={self.kept_kernels()}/"
                f"{self.in_channels * self.out_channels}, branches={len(self.branches)} (groups {groups})")
