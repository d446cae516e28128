"""The structures a target search chooses among: one rung of a ladder per channel group.

A particle is a vector of choice numbers, one per conv-rooted channel group (the coupled groups of
structprune.sparsity.channel_groups, so the same code serves chains, residual adds, depthwise convs and
concatenation). Each group has its own ladder of kept-map counts: its size, then the multiples of `round_to`
below it, down to the floor (`min_keep` of its maps; never fewer than `round_to`, nor than one map). Choice c
of k picks the rung at the same *fraction* of the group's ladder (rung round(c·(L-1)/(k-1)) of L), so one
choice number means about the same keep fraction in every group and a uniform particle is a uniform
network. Which maps of a group go is decided by an importance per map: L1 (selection's `channel_l1`) unless
`importance` gives the group's scores (e.g. Torch-Pruning's group L2, `map_importance`).

From the kept maps of every group follow the kept input and output maps of every conv and linear layer
(`layer_counts`), which the cost models read.

With the fast forms (target_forms.py) the particle goes on: one choice of kernel blocks per conv that may take
them, then one choice of intra shape per conv that may take one. Choice c of k picks option c·m // k of a
layer's m options (0: none), so choice 0 is the dense form everywhere and k-1 the most pruned (`layer_forms`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from structprune.errors import StructpruneError
from structprune.search.target_forms import FormChoice, LayerChoices, apply_forms, layer_choices
from structprune.sparsity.channel_groups import ChannelGroups
from structprune.sparsity.masks import NetworkMask
from structprune.sparsity.selection import channel_l1

DEFAULT_MIN_KEEP = 0.25  # the ladder's floor: a group keeps at least this fraction of its maps
MAP_IMPORTANCE = ("l1", "tp-l2")  # how the maps within a group are ranked (map_importance)
DEFAULT_MAP_IMPORTANCE = "tp-l2"  # measured ahead of L1 after retraining (docs/results.md, the schedule comparison)


def check_importance(kind: str) -> None:
    """One line when `kind` is not a map importance (MAP_IMPORTANCE)."""
    if kind not in MAP_IMPORTANCE:
        raise StructpruneError(f"unknown map importance {kind!r}; choose {', '.join(MAP_IMPORTANCE)}")


def map_importance(kind: str, model: nn.Module, groups: ChannelGroups,
                   example: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """The per-map importance of every conv-rooted group for `kind`: None for "l1" (TargetSpace's own), Torch-Pruning's
    group L2 for "tp-l2" (the producing filters, batch norms and consumers' input weights of each coupled group)."""
    check_importance(kind)
    if kind == "l1":
        return None
    from structprune.sparsity.tp_selection import tp_group_l2_importance

    return tp_group_l2_importance(model, groups, example)


def ladder(size: int, round_to: int, min_keep: float) -> list[int]:
    """Kept-map counts of one group, most first: `size`, then the multiples of `round_to` below it down to the
    floor ceil(min_keep·size) (rounded up to a multiple of round_to; one rung at least)."""
    floor = max(1, math.ceil(min_keep * size - 1e-9))
    floor = min(size, math.ceil(floor / round_to) * round_to)
    below = range((size - 1) // round_to * round_to, floor - 1, -round_to)
    return [size, *[c for c in below if 0 < c < size]]


@dataclass(frozen=True)
class LayerCounts:
    """One conv or linear layer under a structure: kept input and output maps, and the dense counts."""

    kept_in: int
    kept_out: int
    dense_in: int
    dense_out: int
    groups: int  # the layer's groups (1 for linear layers)
    depthwise: bool  # a depthwise conv: one input map per group, kept_in == kept_out


class TargetSpace:
    """The particle space of a target search over `model`'s channel groups (and, with `forms`, the fast forms of
    its convs), and what a particle means."""

    def __init__(self, model: nn.Module, groups: ChannelGroups, round_to: int, min_keep: float,
                 forms: Sequence[str] = ("channel",), importance: dict[str, torch.Tensor] | None = None):
        if round_to < 1:
            raise StructpruneError(f"round_to must be at least 1, got {round_to}")
        if not 0.0 < min_keep <= 1.0:
            raise StructpruneError(f"the ladder's floor (minimum keep fraction) {min_keep} must be in (0, 1]")
        self.model, self.groups = model, groups
        self.roots = [g.root for g in groups if not g.linear]
        if not self.roots:
            raise StructpruneError(f"{type(model).__name__} has no prunable convolution channel group")
        self.ladders = {r: ladder(groups[r].size, round_to, min_keep) for r in self.roots}
        given = importance or {}
        self.importance = {r: given[r] if r in given else channel_l1(model, groups[r]) for r in self.roots}
        self.order = {r: torch.argsort(self.importance[r], descending=True, stable=True) for r in self.roots}
        self.layers = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        self._slices = self._member_slices()
        self._shapes = self._layer_shapes()
        self.choices: dict[str, LayerChoices] = layer_choices(model, groups, forms)
        self._set_dims()

    def _set_dims(self) -> None:
        self.block_layers = [n for n, c in self.choices.items() if len(c.blocks) > 1]
        self.tap_layers = [n for n, c in self.choices.items() if len(c.shapes) > 1]
        options = [len(c.blocks) for c in self.choices.values()] + [len(c.shapes) for c in self.choices.values()]
        self.k = max([len(v) for v in self.ladders.values()] + options)

    def withdraw(self, name: str, groups: int | None = None, shape: tuple[int, int] | None = None) -> None:
        """Stop offering kernel blocks `groups` or intra `shape` on conv `name` (a cost model cannot price it);
        before a search starts (the particle's length may change)."""
        choice = self.choices[name]
        if groups is not None and groups in choice.blocks[1:]:
            choice.blocks.remove(groups)
        if shape is not None and shape in choice.shapes[1:]:
            choice.shapes.remove(shape)
        self._set_dims()

    @property
    def n(self) -> int:
        return len(self.roots) + len(self.block_layers) + len(self.tap_layers)

    @property
    def channel_dims(self) -> int:
        """The particle's first dims: one per channel group (the rest choose forms)."""
        return len(self.roots)

    def _member_slices(self) -> dict[tuple[str, str], list[tuple[str, np.ndarray, np.ndarray]]]:
        """(layer, role) -> [(group root, the layer's indices, the L1 rank of their root channels)] for the
        searched groups: under a structure keeping c maps of a root, an index is kept where its rank is below c."""
        out: dict[tuple[str, str], list[tuple[str, np.ndarray, np.ndarray]]] = {}
        for root in self.roots:
            rank = np.empty(self.groups[root].size, dtype=np.int64)
            rank[self.order[root].numpy()] = np.arange(self.groups[root].size)
            for member in self.groups[root].members:
                out.setdefault((member.name, member.role), []).append(
                    (root, member.index.numpy(), rank[member.root.numpy()]))
        return out

    def _layer_shapes(self) -> dict[str, tuple[int, int, int, bool]]:
        """Per conv and linear layer: dense input maps (all groups), dense output maps, groups, depthwise."""
        out = {}
        for name in self.layers:
            module = self.model.get_submodule(name)
            groups = getattr(module, "groups", 1)
            depthwise = groups > 1 and groups == getattr(module, "in_channels", 0)
            out[name] = (module.weight.shape[1] * groups, module.weight.shape[0], groups, depthwise)
        return out

    def form_options(self) -> list[int]:
        """The option count of each form dim, in particle order (after the channel dims)."""
        return ([len(self.choices[n].blocks) for n in self.block_layers]
                + [len(self.choices[n].shapes) for n in self.tap_layers])

    def rung(self, root: str, choice: int) -> int:
        """The ladder position of `choice` (0..k-1) in `root`'s ladder."""
        steps = len(self.ladders[root]) - 1
        return 0 if self.k == 1 else round(int(choice) * steps / (self.k - 1))

    def counts(self, particle: np.ndarray) -> dict[str, int]:
        """Kept maps per group root."""
        chosen = particle[: len(self.roots)].tolist()
        return {r: self.ladders[r][self.rung(r, c)] for r, c in zip(self.roots, chosen, strict=True)}

    def option(self, choice: int, options: int) -> int:
        """The option (0..options-1) that form choice `choice` (0..k-1) picks."""
        return min(options - 1, int(choice) * options // self.k)

    def form_choice(self, option: int, options: int) -> int:
        """The smallest choice that picks `option` of `options` (the inverse of `option`)."""
        return -(-option * self.k // options)

    def layer_forms(self, particle: np.ndarray, counts: dict[str, LayerCounts] | None = None) -> dict[str, FormChoice]:
        """Per conv offered a form, its forms under the particle (kernel blocks: the largest offered G up to the
        chosen one that divides its kept input and output maps)."""
        if not self.choices:
            return {}
        counts = counts if counts is not None else self.layer_counts(particle)
        g = len(self.roots)
        blocks = dict(zip(self.block_layers, particle[g: g + len(self.block_layers)].tolist(), strict=True))
        taps = dict(zip(self.tap_layers, particle[g + len(self.block_layers):].tolist(), strict=True))
        out = {}
        for name, choice in self.choices.items():
            chosen = choice.blocks[self.option(blocks[name], len(choice.blocks))] if name in blocks else 1
            c = counts[name]
            fits = [b for b in choice.blocks if b <= chosen and c.kept_in % b == 0 and c.kept_out % b == 0]
            shape = choice.shapes[self.option(taps[name], len(choice.shapes))] if name in taps else None
            out[name] = FormChoice(max(fits), shape)
        return out

    def keeps(self, counts: dict[str, int]) -> dict[str, torch.Tensor]:
        """bool keep vector per group root: its `counts[root]` maps of highest L1."""
        out = {}
        for root, count in counts.items():
            keep = torch.zeros(self.groups[root].size, dtype=torch.bool)
            keep[self.order[root][:count]] = True
            out[root] = keep
        return out

    def mask(self, particle: np.ndarray) -> NetworkMask:
        """The masks of a particle: channels (roots keeping every map are left out), then its forms."""
        mask = NetworkMask()
        for root, keep in self.keeps(self.counts(particle)).items():
            if not bool(keep.all()):
                mask.layer(root, self.model.get_submodule(root)).keep_out = keep
        forms = {n: f for n, f in self.layer_forms(particle).items() if not f.trivial}
        if forms:
            apply_forms(self.model, self.groups, mask, forms, self.choices)
        return mask

    def _alive(self, name: str, role: str, size: int, counts: dict[str, int]) -> int:
        slices = self._slices.get((name, role), [])
        if len(slices) == 1 and len(slices[0][1]) == size:  # one group covers the layer (the common case)
            root, _, ranks = slices[0]
            return int((ranks < counts[root]).sum())
        alive = np.ones(size, dtype=bool)
        for root, index, ranks in slices:
            alive[index] &= ranks < counts[root]
        return int(alive.sum())

    def layer_counts(self, particle: np.ndarray) -> dict[str, LayerCounts]:
        """Kept input/output maps of every conv and linear layer under the particle."""
        counts = self.counts(particle)
        out = {}
        for name, (dense_in, dense_out, groups, depthwise) in self._shapes.items():
            kept_out = self._alive(name, "out", dense_out, counts)
            kept_in = kept_out if depthwise else self._alive(name, "in", dense_in, counts)
            out[name] = LayerCounts(kept_in, kept_out, dense_in, dense_out, groups, depthwise)
        return out

    def uniform(self, choice: int) -> np.ndarray:
        """Every dim at `choice`: uniform(k - 1) is the cheapest structure."""
        return np.full(self.n, choice, dtype=np.int16)

    def with_forms(self, channel_choice: int, groups: int = 1, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Every group at `channel_choice`; kernel blocks `groups` and intra `shape` on every conv offering them
        (none elsewhere)."""
        particle = np.zeros(self.n, dtype=np.int16)
        particle[: len(self.roots)] = channel_choice
        g = len(self.roots)
        for i, name in enumerate(self.block_layers):
            offered = self.choices[name].blocks
            if groups in offered:
                particle[g + i] = self.form_choice(offered.index(groups), len(offered))
        g += len(self.block_layers)
        for i, name in enumerate(self.tap_layers):
            shapes = self.choices[name].shapes
            if shape in shapes:
                particle[g + i] = self.form_choice(shapes.index(shape), len(shapes))
        return particle

    def describe(self, particle: np.ndarray) -> dict[str, dict[str, int]]:
        """Per group root: kept and total maps (the record of a chosen structure)."""
        return {r: {"kept": c, "maps": self.groups[r].size} for r, c in self.counts(particle).items()}

    def describe_forms(self, particle: np.ndarray) -> dict[str, dict[str, int | str]]:
        """Per conv in a fast form: its kernel blocks and intra shape (e.g. {"blocks": 2, "taps": "2x3"})."""
        out: dict[str, dict[str, int | str]] = {}
        for name, form in self.layer_forms(particle).items():
            if not form.trivial:
                out[name] = {"blocks": form.groups, "taps": "full" if form.shape is None else
                             f"{form.shape[0]}x{form.shape[1]}"}
        return out
