"""What every scale of mask selection shares: its configuration, unit counts, ranking, and the kernels alive.

SelectionConfig is the one typed form of a selection's options (method, scope, kernel form, rounding, intra
choices). keep_top / global_keep rank units per layer or network-wide (scores divided by their layer's mean);
alive_kernels is what earlier masks left of a conv's kernels. The scales themselves: selection.py (channels,
kernels, the entry points) and intra_selection.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from structprune.errors import StructpruneError
from structprune.sparsity.channel_groups import ChannelGroups
from structprune.sparsity.granularity import IntraPattern, KernelForm, require_kernel_form, require_patterns
from structprune.sparsity.masks import NetworkMask
from structprune.sparsity.method import ONE_SHOT_METHODS, Method, require_method

SCOPES = ("layer", "global")
FEW_INPUT_MAPS = 3  # with intra_fast, a convolution reading this many maps or fewer (the first one) keeps its kernels


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


def check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio < 1.0:
        raise StructpruneError(f"pruning ratio {ratio} must be in [0, 1)")


def keep_count(size: int, ratio: float) -> int:
    """Units kept of `size` at pruning ratio `ratio` (rounded to nearest, at least one)."""
    return max(1, min(size, math.floor((1.0 - ratio) * size + 0.5)))


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def keep_top(scores: torch.Tensor, alive: torch.Tensor, count: int) -> torch.Tensor:
    """bool mask (shape of `alive`) keeping the `count` best-scored alive units (never more than are alive)."""
    ranked = scores.masked_fill(~alive, -math.inf).flatten()
    flat = torch.zeros(alive.numel(), dtype=torch.bool)
    flat[torch.topk(ranked, min(count, int(alive.sum()))).indices] = True
    return flat.view_as(alive)


def global_keep(scores: dict[str, torch.Tensor], alive: dict[str, torch.Tensor], ratio: float,
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


def unit_scores(weights: torch.Tensor, cfg: SelectionConfig, gen: torch.Generator) -> torch.Tensor:
    """L1 magnitude (summed over the trailing dims already reduced by the caller) or uniform noise."""
    return weights if cfg.method is Method.L1 else torch.rand(weights.shape, generator=gen)


# ---------------------------------------------------------------------------------------------- kernels alive
def kernel_region(name: str, conv: nn.Conv2d, mask: NetworkMask, groups: ChannelGroups | None) -> torch.Tensor:
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


def alive_kernels(name: str, conv: nn.Conv2d, mask: NetworkMask, groups: ChannelGroups | None) -> torch.Tensor:
    """bool [O, I]: kernels that still carry weight after channel masks and earlier kernel masks."""
    alive = kernel_region(name, conv, mask, groups)
    layer = mask.layers.get(name)
    if layer is not None and layer.keep_kernel is not None:
        alive &= layer.keep_kernel
    return alive


def kernels_left(name: str, conv: nn.Conv2d, mask: NetworkMask, groups: ChannelGroups | None) -> torch.Tensor:
    """bool [O, I]: the kernels of conv `name` that `mask` leaves (between kept channels, not pruned as kernels)."""
    return alive_kernels(name, conv, mask, groups)
