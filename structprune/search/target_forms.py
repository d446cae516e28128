"""The fast forms a target search may choose per convolution, besides how many maps each channel group keeps.

  blocks  kernel blocks G in {1, 2, 4} (structprune.sparsity.kernel_blocks): the layer compacts into one grouped
          convolution and keeps 1/G of its kernels. Offered on an ungrouped conv whose input maps all come from
          one channel group made by one earlier ungrouped conv alone (not the first conv, which reads the image,
          nor a conv after a residual add or a concatenation); applied where the kept input and output maps
          both divide by G (else the largest offered G that does).
  intra   one intra-kernel pattern shared by the layer, of a shape kh×kw whose taps form one rectangle of the
          3×3 kernel (structprune.sparsity.granularity.fast_patterns: one smaller dense convolution): 2×3, 3×1
          or 1×3 (3×2 has no (start, stride) pattern). Which rectangle of that shape: the one keeping the most L1
          (intra_selection.shared_pattern). Offered on ungrouped 3×3 convs reading more than a few maps (not the first).

A layer that cannot take a form is told once, in one log line, when the choices are made (`layer_choices`).
The masks are those one-shot pruning makes for the same forms: block-diagonal keep_kernel and shared intra
patterns, chosen by L1 (`apply_forms`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

from structprune.errors import StructpruneError
from structprune.sparsity.channel_groups import ChannelGroups
from structprune.sparsity.granularity import IntraPattern, fast_patterns
from structprune.sparsity.intra_selection import shared_pattern
from structprune.sparsity.kernel_blocks import group_producers, producing_layers, select_layer_blocks
from structprune.sparsity.masks import NetworkMask
from structprune.sparsity.selection import kernel_l1
from structprune.sparsity.selection_base import FEW_INPUT_MAPS, conv_layers, kernels_left

log = logging.getLogger("structprune.search")

FORM_NAMES = ("channel", "blocks", "intra")
BLOCK_COUNTS = (1, 2, 4)  # kernel blocks offered (1: none)
TAP_SHAPES = ((2, 3), (3, 2), (3, 1), (1, 3))  # intra shapes offered where a fast pattern has them, most taps first
INTRA_KERNEL = (3, 3)

Shape = tuple[int, int]


def parse_forms(text: str | Sequence[str]) -> tuple[str, ...]:
    """'channel' or 'channel,blocks,intra' (any order, channel always in) -> the forms, in FORM_NAMES order."""
    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else [str(p).strip() for p in text]
    parts = [p for p in parts if p]
    unknown = [p for p in parts if p not in FORM_NAMES]
    if unknown or not parts:
        raise StructpruneError(f"target forms {','.join(parts) or '(none)'!r}: give a comma-separated list of "
                               f"{', '.join(FORM_NAMES)} (channel always searched)")
    return tuple(f for f in FORM_NAMES if f in parts or f == "channel")


def pattern_shape(pattern: IntraPattern, kernel_size: Shape) -> Shape:
    """(rows, cols) of the rectangle a fast pattern keeps."""
    taps = pattern.taps(kernel_size[0] * kernel_size[1])
    return len({t // kernel_size[1] for t in taps}), len({t % kernel_size[1] for t in taps})


@dataclass
class LayerChoices:
    """What one conv may take: kernel block counts (1 first) and intra shapes (None, the full kernel, first)."""

    blocks: list[int] = field(default_factory=lambda: [1])
    shapes: list[Shape | None] = field(default_factory=lambda: [None])
    patterns: dict[Shape, list[IntraPattern]] = field(default_factory=dict)  # the fast patterns of each shape


@dataclass(frozen=True)
class FormChoice:
    """A conv's forms under a particle: kernel blocks G (1: none), intra shape (None: full kernel)."""

    groups: int = 1
    shape: Shape | None = None

    @property
    def trivial(self) -> bool:
        return self.groups == 1 and self.shape is None


def _block_reason(name: str, conv: nn.Conv2d, groups: ChannelGroups, layers: set[str], made: set[str]) -> str | None:
    """Why `conv` cannot take kernel blocks (None: it can). `made`: groups whose maps an earlier ungrouped conv
    alone makes (their blocks are known when this conv's are chosen)."""
    if conv.groups != 1:
        return "a grouped or depthwise conv"
    feeding = [(g, m) for g in groups for m in g.members if m.name == name and m.role == "in"]
    if not feeding:
        return "it reads the network's input"
    if len(feeding) != 1 or len(feeding[0][1].index) != conv.in_channels or feeding[0][0].root not in made:
        return "its input maps come from a residual add, a concatenation or several layers"
    return None


def _intra_reason(conv: nn.Conv2d, reads_input: bool) -> str | None:
    if conv.groups != 1:
        return "a grouped or depthwise conv"
    if tuple(conv.kernel_size) != INTRA_KERNEL:
        return f"a {conv.kernel_size[0]}×{conv.kernel_size[1]} kernel; patterns are offered on 3×3 kernels"
    if reads_input or conv.in_channels <= FEW_INPUT_MAPS:
        return "it reads the network's input, where patterns run slower than dense"
    return None


def layer_choices(model: nn.Module, groups: ChannelGroups, forms: Sequence[str]) -> dict[str, LayerChoices]:
    """The forms each conv may take (convs taking none are left out); one log line per conv that cannot take a
    form asked for, saying why."""
    if "blocks" not in forms and "intra" not in forms:
        return {}
    layers = producing_layers(model)
    shape_patterns: dict[Shape, list[IntraPattern]] = {}
    for pattern in fast_patterns(INTRA_KERNEL):
        shape_patterns.setdefault(pattern_shape(pattern, INTRA_KERNEL), []).append(pattern)
    shapes = [s for s in TAP_SHAPES if s in shape_patterns]
    made: set[str] = set()  # group roots whose maps one earlier ungrouped conv alone makes
    out: dict[str, LayerChoices] = {}
    for name, conv in conv_layers(model).items():
        reasons = []
        choice = LayerChoices()
        block_reason = _block_reason(name, conv, groups, layers, made)
        if "blocks" in forms:
            if block_reason is None:
                choice.blocks = list(BLOCK_COUNTS)
            else:
                reasons.append(f"no kernel blocks ({block_reason})")
        if "intra" in forms:
            intra_reason = _intra_reason(conv, block_reason == "it reads the network's input")
            if intra_reason is None:
                choice.shapes = [None, *shapes]
                choice.patterns = {s: shape_patterns[s] for s in shapes}
            else:
                reasons.append(f"no intra patterns ({intra_reason})")
        if reasons:
            log.info("target forms: %s: %s", name, "; ".join(reasons))
        if len(choice.blocks) > 1 or len(choice.shapes) > 1:
            out[name] = choice
        root = groups.root_of(name)
        if conv.groups == 1 and root is not None:
            producers = group_producers(groups[root], layers)
            if [m.name for m in producers] == [name] and all(m.name != name or m.role == "out"
                                                             for m in groups[root].members):
                made.add(root)
    return out


def apply_forms(model: nn.Module, groups: ChannelGroups, mask: NetworkMask, forms: dict[str, FormChoice],
                choices: dict[str, LayerChoices]) -> None:
    """Add to a channel `mask` (in place) the kernel blocks and intra patterns of `forms`, chosen by L1 among the
    kernels the channels leave, as one-shot pruning chooses them."""
    convs = {n: c for n, c in conv_layers(model).items() if c.groups == 1}
    blocks = {n: f.groups for n, f in forms.items() if f.groups > 1}
    if blocks:
        alive = {n: kernels_left(n, c, mask, groups) for n, c in convs.items()}
        scores = {n: kernel_l1(c) for n, c in convs.items()}
        blocked = select_layer_blocks(model, convs, groups, blocks, alive, scores, mask, quiet=True)
        if blocked != set(blocks):
            raise StructpruneError(f"kernel blocks could not be set on {', '.join(sorted(set(blocks) - blocked))}")
    for name, form in forms.items():
        if form.shape is not None:
            conv = convs[name]
            pattern = shared_pattern(conv, kernels_left(name, conv, mask, groups), choices[name].patterns[form.shape])
            mask.layer(name, conv).intra = [pattern] * conv.weight.shape[1]
