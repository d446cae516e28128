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
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from structprune.arch import example_input
from structprune.errors import StructpruneError
from structprune.sparsity.channel_groups import ChannelGroup, ChannelGroups, find_channel_groups
from structprune.sparsity.granularity import (
    Granularity,
    IntraPattern,
    KernelForm,
    KernelStructure,
    fast_patterns,
    fast_tap_count,
    require_kernel_form,
    require_patterns,
)
from structprune.sparsity.kernel_blocks import select_kernel_blocks
from structprune.sparsity.masks import NetworkMask
from structprune.sparsity.method import ONE_SHOT_METHODS, Method, require_method
from structprune.sparsity.tp_selection import tp_group_l2_keep

SCOPES = ("layer", "global")
FEW_INPUT_MAPS = 3  # with intra_fast, a convolution reading this many maps or fewer (the first one) keeps its kernels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelectionConfig:
    method: Method = Method.L1  # L1 or RANDOM
    scope: str = "layer"  # "layer" | "global"
    seed: int = 0
    kernel: KernelForm = field(default_factory=KernelForm)  # kernel scale: unstructured, structured:G or blocks:G
    round_to: int = 1  # kept maps (channel scale; per block with kernel blocks) and kept input maps per group
    # (structured kernels) rounded up to a multiple: 8 suits CPU kernels, 16 ONNX Runtime's with AVX-512
    intra_shared: bool = False  # one intra pattern for the whole layer
    intra_patterns: tuple[IntraPattern, ...] | None = None  # restrict intra patterns (e.g. pad-free ones)
    intra_fast: bool = False  # intra: only patterns that compact into one smaller convolution (granularity.fast_patterns),
    # at the tap count of those nearest the ratio's; convolutions reading <= 3 maps keep their kernels
    linear_ratio: float = 0.0  # fraction of the hidden units of fully connected layers pruned (channel scale)

    def __post_init__(self) -> None:
        require_method(self.method, ONE_SHOT_METHODS, "selection method")
        if self.scope not in SCOPES:
            raise StructpruneError(f"unknown scope {self.scope!r}; choose from {', '.join(SCOPES)}")
        require_kernel_form(self.kernel)
        require_patterns(self.intra_patterns)
        if self.round_to < 1:
            raise StructpruneError("round_to must be at least 1")
        if not 0.0 <= self.linear_ratio < 1.0:
            raise StructpruneError(f"linear ratio {self.linear_ratio} must be in [0, 1)")
        if self.intra_fast and self.intra_patterns is not None:
            raise StructpruneError("intra_fast chooses among the fast patterns: give it or intra_patterns, not both")


def _check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio < 1.0:
        raise StructpruneError(f"pruning ratio {ratio} must be in [0, 1)")


def keep_count(size: int, ratio: float) -> int:
    """Units kept of `size` at pruning ratio `ratio` (rounded to nearest, at least one)."""
    return max(1, min(size, math.floor((1.0 - ratio) * size + 0.5)))


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


# ---------------------------------------------------------------------------------------------- ranking
def _keep_top(scores: torch.Tensor, alive: torch.Tensor, count: int) -> torch.Tensor:
    """bool mask (shape of `alive`) keeping the `count` best-scored alive units (never more than are alive)."""
    ranked = scores.masked_fill(~alive, -math.inf).flatten()
    flat = torch.zeros(alive.numel(), dtype=torch.bool)
    flat[torch.topk(ranked, min(count, int(alive.sum()))).indices] = True
    return flat.view_as(alive)


def _global_keep(scores: dict[str, torch.Tensor], alive: dict[str, torch.Tensor], ratio: float,
                 region: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Prune the lowest `ratio` of all units network-wide (scores normalised per layer), >= 1 kept per layer.

    Units outside `region` (default: none) are not counted; units not `alive` are pruned already."""
    names = list(scores)
    normalised = []
    for name in names:
        s, a = scores[name].flatten(), alive[name].flatten()
        mean = s[a].mean() if bool(a.any()) and float(s[a].mean()) > 0 else torch.tensor(1.0)
        normalised.append((s / mean).masked_fill(~a, -math.inf))
    sizes = [scores[n].numel() for n in names]
    offsets = [0, *torch.cumsum(torch.tensor(sizes), 0).tolist()]
    for k, name in enumerate(names):  # each layer's best alive unit is never pruned
        if bool(alive[name].any()):
            normalised[k][int(normalised[k].argmax())] = math.inf
    flat = torch.cat(normalised)  # -inf: pruned already (ranked first), +inf: protected
    counted = sum(int(region[n].sum()) for n in names) if region is not None else sum(sizes)
    prune_target = counted - keep_count(counted, ratio) + (sum(sizes) - counted)
    prunable = int((flat != math.inf).sum())
    keep = torch.ones(sum(sizes), dtype=torch.bool)
    keep[torch.argsort(flat, stable=True)[: min(prune_target, prunable)]] = False
    return {name: keep[offsets[k] : offsets[k + 1]].view_as(scores[name]) & alive[name] for k, name in enumerate(names)}


def _scores(weights: torch.Tensor, cfg: SelectionConfig, gen: torch.Generator) -> torch.Tensor:
    """L1 magnitude (summed over the trailing dims already reduced by the caller) or uniform noise."""
    return weights if cfg.method is Method.L1 else torch.rand(weights.shape, generator=gen)


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
        scores[group.root] = _scores(l1, cfg, gen)
    if cfg.scope == "global":
        keeps = _global_keep(scores, alive, ratio)
    else:
        keeps = {r: _keep_top(scores[r], alive[r], keep_count(groups[r].size, ratio)) for r in scores}
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
    return _keep_top(scores.masked_fill(keep, math.inf), alive, target)


# ---------------------------------------------------------------------------------------------- kernels
def _kernel_region(name: str, conv: nn.Conv2d, mask: NetworkMask, groups: ChannelGroups | None) -> torch.Tensor:
    """bool [O, I]: kernels between the channels that channel masks keep."""
    out_ch, in_per_group = conv.weight.shape[:2]
    region = torch.ones(out_ch, in_per_group, dtype=torch.bool)
    keep = {n: lm.keep_out for n, lm in mask if lm.keep_out is not None}
    if groups is not None and keep:
        rows = torch.zeros(out_ch, dtype=torch.bool)
        rows[groups.kept_indices(name, "out", keep, out_ch)] = True
        region &= rows.unsqueeze(1)
        if conv.groups == 1:
            cols = torch.zeros(in_per_group, dtype=torch.bool)
            cols[groups.kept_indices(name, "in", keep, in_per_group)] = True
            region &= cols.unsqueeze(0)
    return region


def _alive_kernels(name: str, conv: nn.Conv2d, mask: NetworkMask, groups: ChannelGroups | None) -> torch.Tensor:
    """bool [O, I]: kernels that still carry weight after channel masks and earlier kernel masks."""
    alive = _kernel_region(name, conv, mask, groups)
    layer = mask.layers.get(name)
    if layer is not None and layer.keep_kernel is not None:
        alive &= layer.keep_kernel
    return alive


def kernels_left(name: str, conv: nn.Conv2d, mask: NetworkMask, groups: ChannelGroups | None) -> torch.Tensor:
    """bool [O, I]: the kernels of conv `name` that `mask` leaves (between kept channels, not pruned as kernels)."""
    return _alive_kernels(name, conv, mask, groups)


def select_kernels(model: nn.Module, groups: ChannelGroups | None, ratio: float, cfg: SelectionConfig,
                   mask: NetworkMask, gen: torch.Generator) -> None:
    """Set keep_kernel on every ungrouped conv of `mask` (in place). The ratio counts the kernels between
    kept channels; kernels an earlier mask pruned stay pruned."""
    convs = {n: c for n, c in conv_layers(model).items() if c.groups == 1}
    scores, alive, region = {}, {}, {}
    for name, conv in convs.items():
        region[name] = _kernel_region(name, conv, mask, groups)
        alive[name] = _alive_kernels(name, conv, mask, groups)
        scores[name] = _scores(kernel_l1(conv), cfg, gen)  # [O, I]
    if cfg.kernel.structure is KernelStructure.BLOCKS:
        if abs(ratio - (1 - 1 / cfg.kernel.groups)) > 1e-3:
            raise StructpruneError(f"kernel blocks: {cfg.kernel.groups} blocks remove {1 - 1 / cfg.kernel.groups:.4g} of "
                                   f"each layer's kernels; give that kernel ratio, not {ratio:g}")
        select_kernel_blocks(model, convs, groups, cfg.kernel.groups, alive, scores, mask)
        return
    if cfg.scope == "global":
        keeps = _global_keep(scores, alive, ratio, region)
    else:
        keeps = {n: _keep_top(scores[n], alive[n], keep_count(int(region[n].sum()), ratio)) for n in convs}
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


# ---------------------------------------------------------------------------------------------- intra
def tap_count(kernel_positions: int, ratio: float) -> int:
    return keep_count(kernel_positions, ratio)


def tap_l1(conv: nn.Conv2d, alive: torch.Tensor) -> torch.Tensor:
    """float [I, k²]: per input map and kernel position, the L1 of the alive kernels (bool [O, I])."""
    return (conv.weight.detach().cpu().abs().flatten(2) * alive.unsqueeze(-1)).sum(0)


def pattern_l1(conv: nn.Conv2d, alive: torch.Tensor, patterns: list[IntraPattern]) -> torch.Tensor:
    """float [I, patterns]: the L1 each pattern keeps of the alive kernels reading each input map."""
    positions = conv.weight.shape[2] * conv.weight.shape[3]
    return _pattern_scores(tap_l1(conv, alive), patterns, positions)


def shared_pattern(conv: nn.Conv2d, alive: torch.Tensor, patterns: list[IntraPattern]) -> IntraPattern:
    """The one pattern of `patterns` (shared by every input map) that keeps the most L1 of the alive kernels
    (bool [O, I]): what select_intra chooses with intra_shared."""
    return patterns[int(pattern_l1(conv, alive, patterns).sum(0).argmax())]


def _pattern_scores(weight_l1: torch.Tensor, patterns: list[IntraPattern], positions: int) -> torch.Tensor:
    """[I, P]: L1 each pattern keeps, per input map. weight_l1: [I, k²] summed over alive kernels."""
    onehot = torch.zeros(len(patterns), positions)
    for p, pattern in enumerate(patterns):
        onehot[p, list(pattern.taps(positions))] = 1.0
    return weight_l1 @ onehot.T


def select_intra(model: nn.Module, groups: ChannelGroups | None, ratio: float, cfg: SelectionConfig,
                 mask: NetworkMask, gen: torch.Generator) -> None:
    """Set one intra-kernel pattern per input map (or per layer) of every conv larger than 1×1 (in place)."""
    convs = {n: c for n, c in conv_layers(model).items() if c.weight.shape[2] * c.weight.shape[3] > 1}
    if cfg.intra_fast:
        few = [n for n, c in convs.items() if c.in_channels <= FEW_INPUT_MAPS]
        if few:
            log.info("intra scale: %s read %d or fewer maps and keep their kernels (patterns there run slower than "
                     "dense)", ", ".join(few), FEW_INPUT_MAPS)
        convs = {n: c for n, c in convs.items() if n not in few}
    taps = {n: tap_count(c.weight.shape[2] * c.weight.shape[3], ratio) for n, c in convs.items()}
    if cfg.scope == "global" and cfg.method is Method.L1:
        taps = _global_tap_counts(convs, mask, groups, ratio)
    for name, conv in convs.items():
        positions = conv.weight.shape[2] * conv.weight.shape[3]
        if cfg.intra_fast:
            size = (conv.weight.shape[2], conv.weight.shape[3])
            taps[name] = fast_tap_count(size, 1.0 - taps[name] / positions if cfg.scope == "global" else ratio)
        patterns = _candidates(name, (conv.weight.shape[2], conv.weight.shape[3]), taps[name], cfg)
        alive = _alive_kernels(name, conv, mask, groups)  # [O, I]
        l1 = tap_l1(conv, alive)  # [I, k²]
        if cfg.method is Method.L1:
            table = _pattern_scores(l1, patterns, positions)  # [I, P]
        else:
            table = torch.rand(l1.shape[0], len(patterns), generator=gen)
        if cfg.intra_shared:
            chosen = [patterns[int(table.sum(0).argmax())]] * l1.shape[0]
        else:
            chosen = [patterns[int(i)] for i in table.argmax(1)]
        full = taps[name] == positions
        mask.layer(name, conv).intra = None if full else chosen


def _candidates(name: str, kernel_size: tuple[int, int], taps: int, cfg: SelectionConfig) -> list[IntraPattern]:
    """The patterns with `taps` kept positions, limited to the fast ones or to cfg.intra_patterns when given."""
    positions = kernel_size[0] * kernel_size[1]
    patterns = IntraPattern.with_taps(positions, taps)
    if cfg.intra_fast:
        return [p for p in patterns if p in fast_patterns(kernel_size)]
    if cfg.intra_patterns is not None:
        allowed = {p.taps(positions) for p in cfg.intra_patterns}
        patterns = [p for p in patterns if p.taps(positions) in allowed]
        if not patterns:
            raise StructpruneError(f"{name}: no allowed intra-kernel pattern keeps {taps} of {positions} positions")
    return patterns


def _global_tap_counts(convs: dict[str, nn.Conv2d], mask: NetworkMask, groups: ChannelGroups | None,
                       ratio: float) -> dict[str, int]:
    """Tap count per layer: greedily drop the tap whose loss of L1 (as a fraction of the layer's) per share of
    the network's weights is smallest, until the kept weights reach 1 - ratio of the total."""
    best_kept: dict[str, list[float]] = {}
    weights: dict[str, int] = {}
    for name, conv in convs.items():
        positions = conv.weight.shape[2] * conv.weight.shape[3]
        alive = _alive_kernels(name, conv, mask, groups)
        l1 = tap_l1(conv, alive)  # [I, k²]
        total = float(l1.sum()) or 1.0
        best_kept[name] = [0.0] + [
            float(_pattern_scores(l1, IntraPattern.with_taps(positions, t), positions).max(1).values.sum()) / total
            for t in range(1, positions + 1)
        ]
        weights[name] = int(alive.sum())
    taps = {n: len(v) - 1 for n, v in best_kept.items()}
    grand = sum(weights[n] * taps[n] for n in taps) or 1
    kept = grand
    target = (1.0 - ratio) * grand
    while kept > target:
        candidates = [n for n in taps if taps[n] > 1 and weights[n] > 0]
        if not candidates:
            break

        def cost(n: str) -> float:
            loss = best_kept[n][taps[n]] - best_kept[n][taps[n] - 1]
            return loss / (weights[n] / grand)

        name = min(candidates, key=cost)
        taps[name] -= 1
        kept -= weights[name]
    return taps


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
        _check_ratio(r)
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
