"""Simple mask selection at a pruning ratio: L1 magnitude (Li et al. 2017) and random, per layer or global.

  channel  per channel group: score = sum of |w| of the group's conv filters producing that map; with
           `linear_ratio`, also the hidden units of fully connected layers (score: the unit's weight row)
  kernel   per (out, in) kernel: score = sum of |w| of the k×k kernel; unstructured, structured
           (output maps in groups sharing their kept input maps, B1's `structured_kernel_mask`), or blocks
           (each output map reads only the input maps of its own block: structprune.sparsity.kernel_blocks)
  intra    per input map of a conv: the (start, stride) pattern with the requested tap count that keeps
           the most L1 over the kernels reading that map (or, `intra_shared`, one pattern per layer)

`ratio` is the fraction of units pruned, counted on the original layer. Selection starts from `base`:
units it already pruned stay pruned and rank first, so raising the ratio nests the masks. Global scope
ranks every layer's units together after dividing each score by its layer's mean score; random uses
uniform scores. Every layer keeps at least one unit.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import torch
from torch import nn

from structprune.arch import example_input
from structprune.errors import StructpruneError
from structprune.sparsity.channel_groups import ChannelGroup, ChannelGroups, find_channel_groups
from structprune.sparsity.granularity import Granularity, KernelStructure
from structprune.sparsity.intra_selection import select_intra
from structprune.sparsity.kernel_blocks import select_kernel_blocks
from structprune.sparsity.masks import NetworkMask
from structprune.sparsity.method import ONE_SHOT_METHODS, Method
from structprune.sparsity.selection_base import (
    SelectionConfig,
    alive_kernels,
    check_ratio,
    conv_layers,
    global_keep,
    keep_count,
    keep_top,
    kernel_region,
    unit_scores,
)
from structprune.sparsity.tp_selection import tp_group_l2_keep

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- channels
def select_channels(model: nn.Module, groups: ChannelGroups, ratio: float, cfg: SelectionConfig,
                    mask: NetworkMask, gen: torch.Generator, linear: bool = False, multiple: int | None = None) -> None:
    """Set keep_out on the root of each conv-rooted group (`linear`: of each hidden fully connected layer's
    group) of `mask` (in place)."""
    if cfg.method is Method.TP_L2:
        if linear:
            raise StructpruneError("--method tp-l2 prunes conv channels only; hidden units (--linear-ratio) take l1")
        for root, keep in tp_group_l2_keep(model, groups, example_input(model), ratio, cfg.scope,
                                           multiple or cfg.round_to).items():
            base = mask.layers.get(root)
            if base is not None and base.keep_out is not None:
                keep = keep & base.keep_out
            if not bool(keep.all()):
                mask.layer(root, model.get_submodule(root)).keep_out = keep
        return
    scores, alive = {}, {}
    for group in groups:
        if group.linear != linear:
            continue
        l1 = channel_l1(model, group)
        base = mask.layers.get(group.root)
        alive[group.root] = base.keep_out.clone() if base is not None and base.keep_out is not None else torch.ones(
            group.size, dtype=torch.bool)
        scores[group.root] = unit_scores(l1, cfg, gen)
    if cfg.scope == "global":
        keeps = global_keep(scores, alive, ratio)
    else:
        keeps = {r: keep_top(scores[r], alive[r], keep_count(groups[r].size, ratio)) for r in scores}
    for root, keep in keeps.items():
        keep = _round_up(keep, scores[root], alive[root], multiple or cfg.round_to)
        mask.layer(root, model.get_submodule(root)).keep_out = keep


def channel_l1(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """float [group size]: per root channel, the L1 of the filters of every conv / linear layer producing it."""
    l1 = torch.zeros(group.size)
    for member in group.members:
        module = model.get_submodule(member.name)
        if member.role == "out" and isinstance(module, nn.Conv2d | nn.Linear):
            per_map = module.weight.detach().cpu().abs().flatten(1).sum(1)  # [O_member]
            l1.index_add_(0, member.root, per_map[member.index])
    return l1


def kernel_l1(conv: nn.Conv2d) -> torch.Tensor:
    """float [O, I]: the L1 of each k×k kernel."""
    return conv.weight.detach().cpu().abs().sum((2, 3))


def _round_up(keep: torch.Tensor, scores: torch.Tensor, alive: torch.Tensor, multiple: int) -> torch.Tensor:
    """Add the best-scored pruned-but-alive units until the kept count is a multiple of `multiple`."""
    if multiple <= 1:
        return keep
    target = min(int(alive.sum()), math.ceil(int(keep.sum()) / multiple) * multiple)
    return keep_top(scores.masked_fill(keep, math.inf), alive, target)


# ---------------------------------------------------------------------------------------------- kernels
def select_kernels(model: nn.Module, groups: ChannelGroups | None, ratio: float, cfg: SelectionConfig,
                   mask: NetworkMask, gen: torch.Generator) -> None:
    """Set keep_kernel on every ungrouped conv of `mask` (in place). The ratio counts the kernels between
    kept channels; kernels an earlier mask pruned stay pruned."""
    convs = {n: c for n, c in conv_layers(model).items() if c.groups == 1}
    scores, alive, region = {}, {}, {}
    for name, conv in convs.items():
        region[name] = kernel_region(name, conv, mask, groups)
        alive[name] = alive_kernels(name, conv, mask, groups)
        scores[name] = unit_scores(kernel_l1(conv), cfg, gen)  # [O, I]
    if cfg.kernel.structure is KernelStructure.BLOCKS:
        if abs(ratio - (1 - 1 / cfg.kernel.groups)) > 1e-3:
            raise StructpruneError(f"kernel blocks: {cfg.kernel.groups} blocks remove {1 - 1 / cfg.kernel.groups:.4g} of "
                                   f"each layer's kernels; give that kernel ratio, not {ratio:g}")
        select_kernel_blocks(model, convs, groups, cfg.kernel.groups, alive, scores, mask)
        return
    if cfg.scope == "global":
        keeps = global_keep(scores, alive, ratio, region)
    else:
        keeps = {n: keep_top(scores[n], alive[n], keep_count(int(region[n].sum()), ratio)) for n in convs}
    for name, keep in keeps.items():
        if cfg.kernel.structure is KernelStructure.STRUCTURED:
            fraction = int(keep.sum()) / max(int(alive[name].sum()), 1)
            keep = _structured(convs[name], alive[name], scores[name], fraction, cfg.kernel.groups, cfg.round_to)
        mask.layer(name, convs[name]).keep_kernel = keep


def _structured(conv: nn.Conv2d, alive: torch.Tensor, scores: torch.Tensor, fraction: float, out_groups: int,
                round_to: int = 1) -> torch.Tensor:
    """B1's structured kernel mask on the alive sub-matrix, scattered back to [O, I]; each group's count of kept
    input maps rounded up to a multiple of `round_to` (at most all of them)."""
    from structprune.compact.kernel_conv import structured_kernel_mask

    rows = torch.nonzero(alive.any(1)).flatten()
    cols = torch.nonzero(alive.any(0)).flatten()
    if round_to > 1 and len(cols):
        kept = min(len(cols), math.ceil(max(1, round(fraction * len(cols))) / round_to) * round_to)
        fraction = kept / len(cols)
    weight = conv.weight.detach().cpu()[rows][:, cols]  # [O', I', kh, kw]
    sub_scores = scores[rows][:, cols]
    groups = max(d for d in range(1, min(out_groups, len(rows)) + 1) if len(rows) % d == 0)  # must divide O'
    sub = structured_kernel_mask(weight, groups, fraction, scores=sub_scores)
    keep = torch.zeros_like(alive)
    keep[rows.unsqueeze(1), cols.unsqueeze(0)] = sub.to(torch.bool)
    return keep & alive


# ---------------------------------------------------------------------------------------------- entry
def selects_kernel_blocks(granularities: list[Granularity], cfg: SelectionConfig) -> bool:
    """Whether the kernel scale is selected as kernel blocks (which need the model's channel groups)."""
    return Granularity.KERNEL in granularities and cfg.kernel.structure is KernelStructure.BLOCKS


def _channel_multiple(granularities: list[Granularity], cfg: SelectionConfig) -> int:
    """Kept maps per layer are rounded up to this. With kernel blocks, a multiple of round_to per block: the
    blocks then come out equal (one grouped convolution, not a convolution per block) and each holds a multiple
    of round_to maps (CPU kernels that work in channel blocks run every group at full speed)."""
    return cfg.round_to * (cfg.kernel.groups if selects_kernel_blocks(granularities, cfg) else 1)


def select(
    model: nn.Module,
    granularities: list[Granularity],
    ratios: list[float],
    cfg: SelectionConfig,
    groups: ChannelGroups | None = None,
    base: NetworkMask | None = None,
) -> NetworkMask:
    """Masks at each granularity in turn (channel before kernel before intra, as given), starting from `base`."""
    if len(ratios) == 1:
        ratios = ratios * len(granularities)
    if len(ratios) != len(granularities):
        raise StructpruneError(f"{len(ratios)} ratios given for {len(granularities)} granularities")
    for r in ratios:
        check_ratio(r)
    if cfg.method is Method.TP_L2 and any(g != Granularity.CHANNEL for g in granularities):
        raise StructpruneError("--method tp-l2 (Torch-Pruning's group L2) chooses channels only; use "
                               "--granularity channel, or l1 for the kernel and intra scales")
    mask = copy.deepcopy(base) if base is not None else NetworkMask()
    if base is not None:
        base.validate(model)
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.linear_ratio > 0:
        if groups is None:
            raise StructpruneError("pruning hidden units needs the model's channel groups")
        if not any(group.linear for group in groups):
            raise StructpruneError("the network has no hidden fully connected layer to prune (its only linear layer "
                                   "is the classifier)")
        select_channels(model, groups, cfg.linear_ratio, cfg, mask, gen, linear=True)
    order = {Granularity.CHANNEL: 0, Granularity.KERNEL: 1, Granularity.INTRA: 2}
    for g, r in sorted(zip(granularities, ratios, strict=True), key=lambda gr: order[gr[0]]):
        if g == Granularity.CHANNEL:
            if groups is None:
                raise StructpruneError("channel selection needs the model's channel groups")
            select_channels(model, groups, r, cfg, mask, gen, multiple=_channel_multiple(granularities, cfg))
        elif g == Granularity.KERNEL:
            select_kernels(model, groups, r, cfg, mask, gen)
        else:
            select_intra(model, groups, r, cfg, mask, gen)
    mask.validate(model)
    return mask


def select_masks(
    model: nn.Module,
    granularities: list[Granularity] | str,
    ratio: float | list[float],
    method: Method | str = Method.L1,
    scope: str = "layer",
    seed: int = 0,
    groups: ChannelGroups | None = None,
    base: NetworkMask | None = None,
    **options: Any,
) -> NetworkMask:
    """Masks at `ratio` (one, or one per granularity) by L1 magnitude or at random (`method`: a Method or its text).

    `options` are further SelectionConfig fields (kernel: a KernelForm, round_to, intra_shared, intra_patterns,
    linear_ratio).
    `base`: an earlier mask to nest in (its pruned units stay pruned).
    """
    grans = Granularity.parse_list(granularities) if isinstance(granularities, str) else list(granularities)
    ratios = list(ratio) if isinstance(ratio, list | tuple) else [float(ratio)]
    cfg = SelectionConfig(method=Method.parse(method, ONE_SHOT_METHODS, "selection method"), scope=scope, seed=seed, **options)
    if groups is None and (Granularity.CHANNEL in grans or base is not None or cfg.linear_ratio > 0
                           or selects_kernel_blocks(grans, cfg)):
        groups = channel_groups_of(model)
    return select(model, grans, ratios, cfg, groups=groups, base=base)


def channel_groups_of(model: nn.Module) -> ChannelGroups:
    return find_channel_groups(model, example_input(model))
