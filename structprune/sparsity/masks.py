"""Pruning masks: what each convolution keeps at each scale, composable, saved as masks.json.

A hidden fully connected layer (weight [O, I]) takes a channel mask only: keep_out over its O units.

Indices always refer to the *original* (unpruned) layer, so channel, kernel and intra-kernel masks
compose freely and survive compaction.  A `LayerMask` for a conv with weight [O, I, kh, kw]:
  keep_out     bool [O]     feature maps kept (channel scale); None = all kept
  keep_kernel  bool [O, I]  kernels kept (kernel scale);       None = all kept
  intra        per input map (of the I per group) an IntraPattern or None (= full kernel); None = all full
masks.json:
  {"format": "structprune-masks/1",
   "input_shape": [C, H, W],                                               # optional
   "layers": {"features.0": {"shape": [O, I, kh, kw], "groups": 1,
                              "keep_out": [0, 3, ...] | null,
                              "keep_kernel": ["0110...", ...] | null,     # one bit string per output map
                              "intra": [[start, stride] | null, ...] | null}}}
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from structprune.errors import StructpruneError
from structprune.runfiles import MASKS_FILE
from structprune.sparsity.granularity import IntraPattern

MASKS_FORMAT = "structprune-masks/1"


@dataclass
class LayerMask:
    """What one convolution (or one linear layer: channel scale only) keeps, in its original index space."""

    shape: tuple[int, ...]  # weight shape [O, I/groups, kh, kw] (a linear layer: [O, I])
    groups: int = 1
    keep_out: torch.Tensor | None = None  # bool [O]
    keep_kernel: torch.Tensor | None = None  # bool [O, I/groups]
    intra: list[IntraPattern | None] | None = None  # one per input map of a group (I/groups)

    @property
    def kernel_positions(self) -> int:
        return self.shape[2] * self.shape[3]

    @property
    def linear(self) -> bool:
        return len(self.shape) == 2

    def validate(self, name: str) -> None:
        out_ch, in_per_group = self.shape[:2]
        if out_ch % self.groups:
            raise StructpruneError(f"{name}: {out_ch} output maps do not split into {self.groups} groups")
        if self.linear and (self.keep_kernel is not None or self.intra is not None):
            raise StructpruneError(f"{name}: a fully connected layer takes channel masks only, not kernel or intra-kernel ones")
        if self.keep_out is not None:
            if self.keep_out.shape != (out_ch,):
                raise StructpruneError(f"{name}: keep_out has {tuple(self.keep_out.shape)} entries, layer has {out_ch} maps")
            if not bool(self.keep_out.any()):
                raise StructpruneError(f"{name}: mask removes every feature map of the layer")
        if self.keep_kernel is not None:
            if self.keep_kernel.shape != (out_ch, in_per_group):
                raise StructpruneError(
                    f"{name}: kernel mask is {tuple(self.keep_kernel.shape)}, layer needs ({out_ch}, {in_per_group})"
                )
            if not bool(self.keep_kernel.any()):
                raise StructpruneError(f"{name}: mask removes every kernel of the layer")
        if self.intra is not None:
            if len(self.intra) != in_per_group:
                raise StructpruneError(f"{name}: {len(self.intra)} intra-kernel patterns, layer has {in_per_group} input maps")
            for pattern in self.intra:
                if pattern is not None:
                    pattern.validate(self.kernel_positions, where=name)

    def weight_mask(self) -> torch.Tensor:
        """Float [O, I/groups, kh, kw] mask of the weight, all three scales combined ([O, I] for a linear layer)."""
        if self.linear:
            mask = torch.ones(self.shape)
            return mask if self.keep_out is None else mask * self.keep_out.to(mask.dtype).unsqueeze(1)
        out_ch, in_per_group, kh, kw = self.shape
        mask = torch.ones(out_ch, in_per_group, kh * kw)
        if self.intra is not None:
            for i, pattern in enumerate(self.intra):
                if pattern is not None:
                    row = torch.zeros(kh * kw)
                    row[list(pattern.taps(kh * kw))] = 1.0
                    mask[:, i, :] = row
        if self.keep_kernel is not None:
            mask *= self.keep_kernel.to(mask.dtype).unsqueeze(-1)
        if self.keep_out is not None:
            mask *= self.keep_out.to(mask.dtype).view(-1, 1, 1)
        return mask.view(out_ch, in_per_group, kh, kw)

    def to_json(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "groups": self.groups,
            "keep_out": None if self.keep_out is None else torch.nonzero(self.keep_out).flatten().tolist(),
            "keep_kernel": None
            if self.keep_kernel is None
            else ["".join("1" if b else "0" for b in row) for row in self.keep_kernel.tolist()],
            "intra": None
            if self.intra is None
            else [None if p is None else [p.start, p.stride] for p in self.intra],
        }

    @classmethod
    def from_json(cls, data: Any, name: str) -> LayerMask:
        """One layer of masks.json, checked strictly: index lists are lists of distinct integers in range, bit
        strings hold only 0 and 1, patterns are [start, stride] integer pairs, every length fits `shape`."""
        try:
            if not isinstance(data, dict):
                raise ValueError(f"expected an object, got {type(data).__name__}")
            shape = data.get("shape")
            if not isinstance(shape, list) or len(shape) not in (2, 4) or not all(_is_int(v, 1) for v in shape):
                raise ValueError("shape needs 4 positive integers (a convolution) or 2 (a linear layer)")
            shape = tuple(shape)
            groups = data.get("groups", 1)
            if not _is_int(groups, 1):
                raise ValueError(f"groups must be a positive integer (got {groups!r})")
            keep_out = None
            if data.get("keep_out") is not None:
                idx = _index_list(data["keep_out"], shape[0], "keep_out")
                keep_out = torch.zeros(shape[0], dtype=torch.bool)
                keep_out[idx] = True
            keep_kernel = None
            if data.get("keep_kernel") is not None:
                rows = data["keep_kernel"]
                if len(shape) != 4:
                    raise ValueError("a fully connected layer takes channel masks only, not kernel ones")
                if not isinstance(rows, list) or len(rows) != shape[0]:
                    raise ValueError(f"keep_kernel must list {shape[0]} bit strings, one per output map")
                if any(not isinstance(r, str) or len(r) != shape[1] or set(r) - {"0", "1"} for r in rows):
                    raise ValueError(f"keep_kernel rows must be strings of {shape[1]} characters 0 and 1")
                keep_kernel = torch.tensor([[c == "1" for c in r] for r in rows], dtype=torch.bool)
            intra = None
            if data.get("intra") is not None:
                patterns = data["intra"]
                if not isinstance(patterns, list):
                    raise ValueError("intra must be a list of [start, stride] pairs or nulls")
                intra = [None if p is None else _pattern(p) for p in patterns]
            mask = cls(shape=shape, groups=groups, keep_out=keep_out, keep_kernel=keep_kernel, intra=intra)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise StructpruneError(f"{MASKS_FILE}: layer {name!r}: malformed mask ({exc})") from None
        mask.validate(name)
        return mask


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _index_list(values: Any, size: int, what: str) -> list[int]:
    """A list of distinct integers in 0..size-1."""
    if not isinstance(values, list) or not all(_is_int(v, 0) for v in values):
        raise ValueError(f"{what} must be a list of integer indices (got {values!r:.60})")
    if any(v >= size for v in values):
        raise ValueError(f"{what} index outside 0..{size - 1}")
    if len(set(values)) != len(values):
        raise ValueError(f"{what} lists an index twice")
    return values


def _pattern(value: Any) -> IntraPattern:
    if not isinstance(value, list) or len(value) != 2 or not _is_int(value[0], 0) or not _is_int(value[1], 1):
        raise ValueError(f"an intra-kernel pattern must be [start, stride], integers >= 0 and >= 1 (got {value!r:.60})")
    return IntraPattern(value[0], value[1])


@dataclass
class NetworkMask:
    """Masks of a whole network, keyed by the layer's module name (convolutions; linear layers' hidden units)."""

    layers: dict[str, LayerMask] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None  # (C, H, W) of one input, when known (tracing and compaction use it)

    def __iter__(self) -> Iterator[tuple[str, LayerMask]]:
        return iter(self.layers.items())

    def layer(self, name: str, conv: nn.Conv2d | nn.Linear) -> LayerMask:
        """The mask of `name`, created all-kept if absent."""
        if name not in self.layers:
            self.layers[name] = LayerMask(shape=tuple(conv.weight.shape), groups=getattr(conv, "groups", 1))
        return self.layers[name]

    def validate(self, model: nn.Module) -> None:
        """Check every layer mask against the model: names, types and shapes."""
        for name, lm in self.layers.items():
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise StructpruneError(f"mask names layer {name!r}, which the model does not have") from None
            if not isinstance(module, nn.Conv2d | nn.Linear):
                raise StructpruneError(f"{name}: masks apply to Conv2d and Linear layers, not {type(module).__name__}")
            if tuple(module.weight.shape) != tuple(lm.shape):
                raise StructpruneError(
                    f"{name}: mask is for weight {list(lm.shape)}, layer has {list(module.weight.shape)}"
                )
            lm.validate(name)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": MASKS_FORMAT, "layers": {n: m.to_json() for n, m in self.layers.items()}}
        if self.input_shape is not None:
            out["input_shape"] = list(self.input_shape)
        return out

    @classmethod
    def from_json(cls, data: Any) -> NetworkMask:
        if not isinstance(data, dict) or data.get("format") != MASKS_FORMAT or not isinstance(data.get("layers"), dict):
            raise StructpruneError(f"{MASKS_FILE}: not a structprune masks file (format {MASKS_FORMAT!r})")
        shape = data.get("input_shape")
        if shape is not None and (not isinstance(shape, list) or not all(isinstance(v, int) and v > 0 for v in shape)):
            raise StructpruneError(f"{MASKS_FILE}: input_shape must be a list of positive integers, not {shape!r}")
        return cls({name: LayerMask.from_json(d, name) for name, d in data["layers"].items()},
                   input_shape=None if shape is None else tuple(shape))
