"""Intra-kernel selection: per input map of a conv (or one per layer) the (start, stride) pattern with the
requested tap count that keeps the most L1 over the kernels reading that map; random patterns; a global tap
budget; the fast shared patterns that compact into one smaller convolution (module doc of selection.py).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from structprune.errors import StructpruneError
from structprune.sparsity.channel_groups import ChannelGroups
from structprune.sparsity.granularity import IntraPattern, fast_patterns, fast_tap_count
from structprune.sparsity.masks import NetworkMask
from structprune.sparsity.method import Method
from structprune.sparsity.selection_base import FEW_INPUT_MAPS, SelectionConfig, alive_kernels, conv_layers, keep_count

log = logging.getLogger("structprune.sparsity.selection")


def tap_count(kernel_positions: int, ratio: float) -> int:
    return keep_count(kernel_positions, ratio)


def tap_l1(conv: nn.Conv2d, alive: torch.Tensor) -> torch.Tensor:
    """float [I, k²]: per input map and kernel position, the L1 of the alive kernels (bool [O, I])."""
    return (conv.weight.detach().cpu().abs().flatten(2) * alive.unsqueeze(-1)).sum(0)


def pattern_l1(conv: nn.Conv2d, alive: torch.Tensor, patterns: list[IntraPattern]) -> torch.Tensor:
    """float [I, patterns]: the L1 each pattern keeps of the alive kernels reading each input map."""
    positions = conv.weight.shape[2] * conv.weight.shape[3]
    return _patternunit_scores(tap_l1(conv, alive), patterns, positions)


def shared_pattern(conv: nn.Conv2d, alive: torch.Tensor, patterns: list[IntraPattern]) -> IntraPattern:
    """The one pattern of `patterns` (shared by every input map) that keeps the most L1 of the alive kernels
    (bool [O, I]): what select_intra chooses with intra_shared."""
    return patterns[int(pattern_l1(conv, alive, patterns).sum(0).argmax())]


def _patternunit_scores(weight_l1: torch.Tensor, patterns: list[IntraPattern], positions: int) -> torch.Tensor:
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
        alive = alive_kernels(name, conv, mask, groups)  # [O, I]
        l1 = tap_l1(conv, alive)  # [I, k²]
        if cfg.method is Method.L1:
            table = _patternunit_scores(l1, patterns, positions)  # [I, P]
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
        alive = alive_kernels(name, conv, mask, groups)
        l1 = tap_l1(conv, alive)  # [I, k²]
        total = float(l1.sum()) or 1.0
        best_kept[name] = [0.0] + [
            float(_patternunit_scores(l1, IntraPattern.with_taps(positions, t), positions).max(1).values.sum()) / total
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
