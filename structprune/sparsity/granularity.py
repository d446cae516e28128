"""The three scales of structured sparsity, as typed values.

For a convolution with weight [O, I, kh, kw] (I = input maps per group):
  FeatureMap   one bit per output map      -> O groups   (a pruned map leaves with everything coupled)
  Kernel       one bit per (out, in) pair  -> O×I groups (the kh×kw kernel joining two maps)
  IntraKernel  one (start, stride) pattern per *input* map, shared by every kernel reading that map:
               keep flattened positions start, start+stride, ... < kh·kw. In im2col form the dropped
               positions are whole rows of the feature matrix and columns of the kernel matrix.
               Example: 3×3, IntraPattern(0, 3) keeps positions 0, 3, 6 (the left column).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from structprune.errors import StructpruneError


class Granularity(StrEnum):
    CHANNEL = "channel"
    KERNEL = "kernel"
    INTRA = "intra"

    @classmethod
    def parse_list(cls, text: str) -> list[Granularity]:
        """'channel,intra' -> [CHANNEL, INTRA], in the order given, without repeats."""
        out: list[Granularity] = []
        for part in (p.strip() for p in text.split(",") if p.strip()):
            try:
                g = cls(part)
            except ValueError:
                names = ", ".join(x.value for x in cls)
                raise StructpruneError(f"unknown granularity {part!r}; choose from {names}") from None
            if g not in out:
                out.append(g)
        if not out:
            raise StructpruneError("no granularity given")
        return out


@dataclass(frozen=True, order=True)
class IntraPattern:
    """Keep flattened kernel positions start, start+stride, ... below kh·kw."""

    start: int
    stride: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.stride < 1:
            raise StructpruneError(f"intra-kernel pattern (start={self.start}, stride={self.stride}): start must be "
                                   ">= 0 and stride >= 1")

    def taps(self, kernel_positions: int) -> tuple[int, ...]:
        return tuple(range(self.start, kernel_positions, self.stride))

    def validate(self, kernel_positions: int, where: str = "") -> None:
        if self.stride < 1 or not 0 <= self.start < kernel_positions:
            raise StructpruneError(
                f"{where}: intra-kernel pattern (start={self.start}, stride={self.stride}) lies outside a "
                f"kernel of {kernel_positions} positions"
            )

    @staticmethod
    def all_patterns(kernel_positions: int) -> list[IntraPattern]:
        """Every distinct (start, stride) pattern of a kernel, the full kernel (0, 1) included."""
        seen: dict[tuple[int, ...], IntraPattern] = {}
        for stride in range(1, kernel_positions + 1):
            for start in range(kernel_positions):
                p = IntraPattern(start, stride)
                seen.setdefault(p.taps(kernel_positions), p)
        return sorted(seen.values(), key=lambda p: (-len(p.taps(kernel_positions)), p))

    @staticmethod
    def with_taps(kernel_positions: int, count: int) -> list[IntraPattern]:
        """The patterns of a kernel that keep exactly `count` positions."""
        return [p for p in IntraPattern.all_patterns(kernel_positions) if len(p.taps(kernel_positions)) == count]
