"""What a network search is asked to do: SearchConfig (method, scales, ladder, budget, retraining, scope)."""

from __future__ import annotations

from dataclasses import dataclass, field

from structprune.errors import StructpruneError
from structprune.search.particle_filter import PFConfig
from structprune.sparsity.granularity import (
    Granularity,
    IntraPattern,
    KernelForm,
    KernelStructure,
    require_kernel_form,
    require_patterns,
)
from structprune.sparsity.method import SEARCH_METHODS, Method, require_method

DEFAULT_LADDER = (0.25, 0.5, 0.625, 0.75, 0.8125, 0.875, 0.9375)


@dataclass(frozen=True)
class SearchConfig:
    """A network search. `tolerance` is an MCR fraction (0.002 = 0.2 points); `ratio=None` means --max."""

    method: Method = Method.PF  # one of SEARCH_METHODS
    granularities: tuple[Granularity, ...] = (Granularity.CHANNEL,)  # searched in this order
    tolerance: float = 0.002
    ratio: float | None = None
    ladder: tuple[float, ...] = DEFAULT_LADDER
    particles: int = 8
    generations: int = 3
    temperature: float = 0.002
    seed_with_l1: bool = True
    score_images: int = 1000
    check_images: int = 1000
    tie: float = 1e-3
    bn_batches: int = 0  # re-estimate batch-norm statistics per candidate on this many training batches of 64
    step_epochs: int = 1
    step_images: int | None = 10000  # training images per retraining between steps (None: all)
    final_epochs: int = 1
    final_images: int | None = None  # training images for the final retraining (None: all)
    lr: float = 0.01
    layers: tuple[str, ...] | None = None  # convolutions to prune (None: all)
    kernel: KernelForm = field(default_factory=KernelForm)  # free, structured:G (G >= 1) or blocks:2 (half the kernels)
    intra_shared: bool = False  # intra scale: one pattern for the whole layer instead of one per input map
    intra_patterns: tuple[IntraPattern, ...] | None = None  # intra scale: the choices (None: all)
    intra_fast: bool = False  # intra scale: only one-rectangle patterns (one smaller convolution), none on layers
    # reading 3 or fewer maps (sparsity.granularity.fast_patterns, selection_base.FEW_INPUT_MAPS)
    scope: str = "layer"  # "layer": one layer at a time; "global": one channel search over every layer at once
    latency_weight: float = 0.0  # λ, MCR per millisecond of predicted conv latency (see latency.py)
    latency_table: str | None = None  # a saved table (JSON); measured into the output folder when absent
    backend: str = "inprocess"
    workers: int = 2
    seed: int = 0
    round_to: int = 1  # kept maps per channel rung rounded up to a multiple of this (x2 with kernel blocks)

    def __post_init__(self) -> None:
        require_method(self.method, SEARCH_METHODS, "search method")
        if not self.granularities or not all(isinstance(g, Granularity) for g in self.granularities):
            raise StructpruneError(f"granularities must be a non-empty tuple of Granularity (e.g. "
                                   f"tuple(Granularity.parse_list('channel,intra'))), not {self.granularities!r}")
        if not 0.0 <= self.tolerance < 1.0:
            raise StructpruneError(f"tolerance {self.tolerance * 100:g} points is out of range (0 to 100 points)")
        if self.ratio is not None and not 0.0 < self.ratio < 1.0:
            raise StructpruneError(f"pruning ratio {self.ratio} must be between 0 and 1 (exclusive)")
        if not self.ladder or any(not 0.0 < r < 1.0 for r in self.ladder):
            raise StructpruneError("ladder ratios must lie between 0 and 1 (exclusive)")
        if self.score_images < 1 or self.check_images < 1:
            raise StructpruneError("score and check subsets need at least one image each")
        if self.step_epochs < 0 or self.final_epochs < 0:
            raise StructpruneError("retraining epochs must be >= 0")
        PFConfig(particles=self.particles, generations=self.generations, temperature=self.temperature)
        if self.scope not in ("layer", "global"):
            raise StructpruneError(f"unknown scope {self.scope!r}; choose layer or global")
        if self.scope == "global" and (self.ratio is None or tuple(self.granularities) != (Granularity.CHANNEL,)):
            raise StructpruneError("the global search takes --granularity channel and a --ratio")
        if self.bn_batches < 0:
            raise StructpruneError("batch-norm recalibration batches must be >= 0")
        if self.latency_weight < 0:
            raise StructpruneError(f"latency weight {self.latency_weight} must be >= 0")
        if self.round_to < 1:
            raise StructpruneError("round_to must be at least 1")
        require_kernel_form(self.kernel)
        require_patterns(self.intra_patterns)
        if self.intra_fast and self.intra_patterns is not None:
            raise StructpruneError("intra_fast chooses among the fast patterns: give it or intra_patterns, not both")
        if self.kernel.structure is KernelStructure.BLOCKS and self.kernel.groups != 2:
            raise StructpruneError(f"the search chooses 2 kernel blocks per layer, not {self.kernel.groups}")

    @property
    def budget(self) -> int:
        """Candidates scored per rung by random best-of-N: the particle filter's budget."""
        return self.particles * self.generations

    @property
    def grans(self) -> list[Granularity]:
        return list(self.granularities)

    @property
    def channel_multiple(self) -> int:
        """Kept maps of a channel rung are rounded up to this: round_to, per block with kernel blocks (as selection
        does; with round_to 1 the counts are left alone, and a block rung needs an even count of maps)."""
        blocks = self.kernel.structure is KernelStructure.BLOCKS and Granularity.KERNEL in self.grans
        return self.round_to * (self.kernel.groups if blocks and self.round_to > 1 else 1)
