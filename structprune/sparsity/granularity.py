"""The three scales of structured sparsity, as typed values.

For a convolution with weight [O, I, kh, kw] (I = input maps per group):
  FeatureMap   one bit per output map      -> O groups   (a pruned map leaves with everything coupled)
  Kernel       one bit per (out, in) pair  -> O×I groups (the kh×kw kernel joining two maps)
  IntraKernel  one (start, stride) pattern per *input* map, shared by every kernel reading that map:
               keep flattened positions start, start+stride, ... < kh·kw. In im2col form the dropped
               positions are whole rows of the feature matrix and columns of the kernel matrix.
               Example: 3×3, IntraPattern(0, 3) keeps positions 0, 3, 6 (the left column).

How the kernel scale's masks are shaped is a KernelForm: free, structured in output-map groups, or blocks.
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

    @classmethod
    def parse_list(cls, text: str) -> tuple[IntraPattern, ...]:
        """'1:3,0:2' (START:STRIDE, the command line's spelling) -> (IntraPattern(1, 3), IntraPattern(0, 2))"""
        try:
            pairs = [part.split(":") for part in text.split(",") if part.strip()]
            numbers = [(int(a), int(b)) for a, b in pairs]
        except ValueError:
            raise StructpruneError(f"{text!r} is not a comma-separated list of START:STRIDE") from None
        if not numbers:
            raise StructpruneError("no pattern given")
        if len(set(numbers)) != len(numbers):
            raise StructpruneError(f"{text!r} lists a pattern twice")
        return tuple(cls(a, b) for a, b in numbers)

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


# ---- the fast intra patterns: one rectangle of taps compacts into one smaller dense convolution
def is_one_block(pattern: IntraPattern, kernel_size: tuple[int, int]) -> bool:
    """Whether the pattern's kept taps fill one rectangle of the kernel (unit steps): one smaller dense convolution."""
    kh, kw = kernel_size
    taps = pattern.taps(kh * kw)
    if not taps:
        return False
    rows, cols = {t // kw for t in taps}, {t % kw for t in taps}
    contiguous = max(rows) - min(rows) + 1 == len(rows) and max(cols) - min(cols) + 1 == len(cols)
    return contiguous and len(taps) == len(rows) * len(cols)


def fast_patterns(kernel_size: tuple[int, int]) -> list[IntraPattern]:
    """Every pattern of a kh×kw kernel that compacts into one smaller dense convolution (the full kernel included)."""
    return [p for p in IntraPattern.all_patterns(kernel_size[0] * kernel_size[1]) if is_one_block(p, kernel_size)]


def fast_tap_count(kernel_size: tuple[int, int], ratio: float) -> int:
    """The tap count of a fast pattern nearest to (1 - ratio)·kh·kw (ties: the larger count)."""
    want = (1.0 - ratio) * kernel_size[0] * kernel_size[1]
    counts = {len(p.taps(kernel_size[0] * kernel_size[1])) for p in fast_patterns(kernel_size)}
    return min(counts, key=lambda c: (abs(c - want), -c))


class KernelStructure(StrEnum):
    UNSTRUCTURED = "unstructured"
    STRUCTURED = "structured"
    BLOCKS = "blocks"


KERNEL_STRUCTURES = tuple(KernelStructure)


@dataclass(frozen=True)
class KernelForm:
    """How masks at the kernel scale are shaped, with its number of groups:

      unstructured  any (output map, input map) kernel may go (groups is 1)
      structured    each layer's output maps fall into `groups` groups; every map of a group keeps the same input maps
      blocks        each layer's maps fall into `groups` blocks (at least 2) that follow the producing layer's; an
                    output map reads only its own block's input maps (structprune.sparsity.kernel_blocks), so the
                    layer compacts into one grouped convolution and 1 - 1/groups of its kernels go

    As text: "unstructured", "structured:G" or "blocks:G".

    >>> KernelForm.parse("blocks:2") == KernelForm(KernelStructure.BLOCKS, 2)
    True
    >>> str(KernelForm("structured", 4))
    'structured:4'
    """

    structure: KernelStructure = KernelStructure.UNSTRUCTURED  # its text ("blocks") is taken too
    groups: int = 1

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "structure", KernelStructure(self.structure))
        except ValueError:
            raise StructpruneError(f"unknown kernel structure {self.structure!r}; choose from "
                                   f"{', '.join(KERNEL_STRUCTURES)}") from None
        if isinstance(self.groups, bool) or not isinstance(self.groups, int) or self.groups < 1:
            raise StructpruneError(f"kernel groups {self.groups!r} must be a whole number >= 1")
        if self.structure is KernelStructure.UNSTRUCTURED and self.groups != 1:
            raise StructpruneError(f"unstructured kernels take no groups (got {self.groups}); use structured:{self.groups} "
                                   f"or blocks:{self.groups}")
        if self.structure is KernelStructure.BLOCKS and self.groups < 2:
            raise StructpruneError("kernel blocks need at least 2 blocks per layer (one block prunes nothing)")

    @classmethod
    def parse(cls, text: str) -> KernelForm:
        """'unstructured', 'structured:G' or 'blocks:G' -> KernelForm."""
        name, sep, count = text.strip().partition(":")
        if name == KernelStructure.UNSTRUCTURED and not sep:
            return cls()
        if name in KERNEL_STRUCTURES and name != KernelStructure.UNSTRUCTURED and count.strip().isdigit():
            return cls(KernelStructure(name), int(count))
        raise StructpruneError(f"kernel form {text!r}: write unstructured, structured:G or blocks:G (G a whole number)")

    def __str__(self) -> str:
        return self.structure.value if self.structure is KernelStructure.UNSTRUCTURED else f"{self.structure.value}:{self.groups}"


def require_kernel_form(kernel: object) -> None:
    """A config's `kernel` field holds a KernelForm (text is parsed at the edge, with KernelForm.parse)."""
    if not isinstance(kernel, KernelForm):
        raise StructpruneError(f"kernel must be a KernelForm (e.g. KernelForm.parse('structured:2')), not {kernel!r}")


def require_patterns(patterns: object) -> None:
    """A config's `intra_patterns` field holds None (every pattern) or a tuple of IntraPattern."""
    if patterns is not None and (not isinstance(patterns, tuple) or not all(isinstance(p, IntraPattern) for p in patterns)):
        raise StructpruneError(f"intra patterns must be None or a tuple of IntraPattern, not {patterns!r}")
