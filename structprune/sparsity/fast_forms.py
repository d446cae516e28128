"""The fast forms of each scale, and how the edge (`structprune prune`, `structprune.prune`) resolves its defaults
into them.

  kernel  blocks: G in {2, 4, 8}, the one whose share of removed kernels 1 - 1/G is nearest the kernel ratio
          (each layer compacts into one grouped convolution)
  intra   one shared pattern per layer among those whose kept taps form one rectangle (a column, a row, a block
          of rows: one smaller dense convolution), with the tap count nearest (1 - r)·k² (ties: more taps);
          layers reading 3 or fewer maps (the first convolution) keep their kernels
  channel kept maps rounded up to a multiple of this CPU's channel block (default_round_to: 16 with AVX-512,
          else 8)

The library's SelectionConfig keeps its own defaults (free kernels, every intra pattern, exact counts): recipes
and recorded runs rely on them. Explicit options always win.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from structprune.errors import StructpruneError
from structprune.sparsity.granularity import Granularity, IntraPattern, KernelForm, KernelStructure
from structprune.sparsity.method import Method
from structprune.sparsity.selection import SelectionConfig

log = logging.getLogger(__name__)

BLOCK_COUNTS = (2, 4, 8)  # kernel blocks the default chooses among
ROUND_TO_AVX512 = 16  # fp32 lanes of an AVX-512 register: oneDNN's channel block there
ROUND_TO_OTHER = 8  # AVX2 and narrower


def default_round_to() -> int:
    """Kept maps are a multiple of this by default: the channel block of this CPU's convolution kernels (oneDNN
    and ONNX Runtime work in blocks of 16 fp32 channels with AVX-512, 8 with AVX2). Measured with AVX-512
    (benchmarks/channel_step.py): a network 16k + 8 maps wide ran slower in ONNX Runtime than one
    16k + 16 wide in 14 of 16 comparisons (by 3-18%), so rounding to 8 there removes maps for no speed."""
    return ROUND_TO_AVX512 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else ROUND_TO_OTHER


def round_to_or_default(round_to: int | None) -> int:
    """`round_to` when given, else this CPU's channel block (default_round_to)."""
    return default_round_to() if round_to is None else round_to


def blocks_for_ratio(ratio: float) -> int:
    """The G in BLOCK_COUNTS whose 1 - 1/G is nearest `ratio` (ties: the smaller G, fewer kernels removed)."""
    return min(BLOCK_COUNTS, key=lambda g: (abs(1 - 1 / g - ratio), g))


@dataclass(frozen=True)
class EdgeOptions:
    """The selection options as a user gave them: None where not given (the fast default then applies)."""

    kernel: KernelForm | None = None  # an explicit kernel form
    kernel_structure: KernelStructure | None = None  # or its parts, as the command line gives them
    kernel_groups: int | None = None
    round_to: int | None = None
    intra_shared: bool = False
    intra_patterns: tuple[IntraPattern, ...] | None = None
    intra_free: bool = False  # per-input-map patterns, any pattern (the library's own default)


def _kernel(options: EdgeOptions, kernel_ratio: float | None) -> KernelForm:
    if options.kernel is not None:
        return options.kernel
    structure, groups = options.kernel_structure, options.kernel_groups
    if structure is KernelStructure.UNSTRUCTURED:
        if groups is not None:
            raise StructpruneError("--kernel-groups applies to --kernel-structure structured or blocks")
        return KernelForm()
    if structure is KernelStructure.STRUCTURED:
        return KernelForm(structure, 4 if groups is None else groups)
    if groups is None:
        groups = blocks_for_ratio(kernel_ratio) if kernel_ratio is not None else 2
    return KernelForm(KernelStructure.BLOCKS, groups)


def resolve(granularities: list[Granularity], ratios: list[float], method: Method, options: EdgeOptions,
            **fields: Any) -> tuple[list[float], SelectionConfig]:
    """The ratios (one per granularity) and SelectionConfig the edge runs with: the fast forms unless `options` say
    otherwise. With kernel blocks, the kernel ratio becomes 1 - 1/G (logged where that differs from the one asked).
    `fields`: further SelectionConfig fields (scope, seed, linear_ratio)."""
    ratios = list(ratios) * (len(granularities) if len(ratios) == 1 else 1)
    pruned = dict(zip(granularities, ratios, strict=True))
    kernel = KernelForm()
    if Granularity.KERNEL in pruned:
        kernel = _kernel(options, pruned[Granularity.KERNEL])
        if kernel.structure is KernelStructure.BLOCKS:
            removed = 1 - 1 / kernel.groups
            if abs(removed - pruned[Granularity.KERNEL]) > 1e-3:
                log.info("kernel scale: %d blocks per layer remove %.4g of each layer's kernels (asked for %g)",
                         kernel.groups, removed, pruned[Granularity.KERNEL])
            ratios[granularities.index(Granularity.KERNEL)] = removed
    elif options.kernel_structure is not None or options.kernel_groups is not None or options.kernel is not None:
        _kernel(options, None)  # still checked
    if options.intra_free and options.intra_patterns is not None:
        raise StructpruneError("--intra-free chooses among every pattern; drop it or --intra-patterns")
    fast_intra = not options.intra_free and options.intra_patterns is None
    cfg = SelectionConfig(method=method, kernel=kernel,
                          round_to=round_to_or_default(options.round_to),
                          intra_shared=options.intra_shared or fast_intra, intra_patterns=options.intra_patterns,
                          intra_fast=fast_intra, **fields)
    return ratios, cfg


def describe(granularities: list[Granularity], cfg: SelectionConfig) -> str:
    """One line on the forms used, e.g. 'kernel blocks:2; intra one shared fast pattern per layer; round-to 8'."""
    parts = []
    if Granularity.KERNEL in granularities:
        parts.append(f"kernel {cfg.kernel}")
    if Granularity.INTRA in granularities:
        if cfg.intra_fast:
            parts.append("intra one shared fast pattern per layer (first layer kept)")
        else:
            which = "any pattern" if cfg.intra_patterns is None else \
                "patterns " + ",".join(f"{p.start}:{p.stride}" for p in cfg.intra_patterns)
            parts.append(f"intra {'one per layer' if cfg.intra_shared else 'one per input map'}, {which}")
    parts.append(f"round-to {cfg.round_to}")
    return "; ".join(parts)
