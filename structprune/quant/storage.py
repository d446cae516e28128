"""Storage a hardware designer would count: kept weights at their word lengths plus sparsity indices.

Per layer with a quantized weight:
  weight bits  stored weights × word length (32 for float). A compact layer stores only its kept
               weights; a masked dense conv (not yet compacted) is counted at its mask's kept weights.
  index bits   what locating the kept weights needs, from masks.json (a compact layer's own patterns
               take precedence):
                 kept-channel list  min(O-bit map, k·⌈log2 O⌉-bit index list) for O maps, k kept
                 kernel mask        one bit per (kept output map, input map) pair
                 intra-kernel       one (start, stride) per input map with a pattern, ⌈log2 K⌉ bits
                                    each for a K-position kernel (3×3: 4 + 4 bits)
  float bits   every other tensor of the layer (biases, batch-norm) at 32 bits.
Totals are compared with the dense 32-bit original: every parameter of the unpruned network × 32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from structprune.arch import factory_of
from structprune.quant.targets import quantized_weights
from structprune.sparsity.masks import LayerMask, NetworkMask

FLOAT_BITS = 32


@dataclass
class LayerStorage:
    layer: str
    stored_weights: int
    word_bits: int
    weight_bits: int
    channel_index_bits: int = 0
    kernel_index_bits: int = 0
    intra_index_bits: int = 0
    float_bits: int = 0

    @property
    def index_bits(self) -> int:
        return self.channel_index_bits + self.kernel_index_bits + self.intra_index_bits

    @property
    def total_bits(self) -> int:
        return self.weight_bits + self.index_bits + self.float_bits


@dataclass
class StorageReport:
    layers: list[LayerStorage]
    other_float_bits: int  # tensors outside any quantized layer (e.g. batch norm), at 32 bits
    dense_bits: int  # the unpruned network, all parameters at 32 bits

    @property
    def total_bits(self) -> int:
        return sum(r.total_bits for r in self.layers) + self.other_float_bits

    @property
    def total_bytes(self) -> int:
        return math.ceil(self.total_bits / 8)

    @property
    def compression(self) -> float:
        """Dense 32-bit size / this size."""
        return self.dense_bits / max(self.total_bits, 1)

    def to_json(self) -> dict[str, Any]:
        rows = [{**asdict(r), "index_bits": r.index_bits, "total_bits": r.total_bits} for r in self.layers]
        return {"layers": rows, "other_float_bits": self.other_float_bits, "total_bits": self.total_bits,
                "total_bytes": self.total_bytes, "dense_bits": self.dense_bits,
                "dense_bytes": math.ceil(self.dense_bits / 8), "compression": self.compression}


def index_width(n: int) -> int:
    """Bits of an index into n items (at least 1)."""
    return max(1, math.ceil(math.log2(n))) if n > 1 else 1


def dense_original_bits(model: nn.Module) -> int:
    """All parameters of the unpruned registered network at 32 bits."""
    from structprune.models import create

    info = factory_of(model)
    original = create(info["name"], **info["kwargs"])
    return FLOAT_BITS * sum(p.numel() for p in original.parameters())


def _stored_weights(param: nn.Parameter, mask: LayerMask | None) -> int:
    if mask is not None and tuple(param.shape) == tuple(mask.shape):  # masked dense conv, not compacted
        return int(mask.weight_mask().sum())
    return param.numel()


def _in_maps(module: nn.Module, mask: LayerMask | None) -> int:
    if hasattr(module, "in_channels"):
        return int(module.in_channels) // max(int(getattr(module, "groups", 1)), 1)
    return mask.shape[1] if mask is not None else 0


def _index_bits(module: nn.Module, mask: LayerMask | None) -> tuple[int, int, int]:
    """(channel, kernel, intra) index bits of one layer. A compact layer's own patterns take precedence."""
    channel = kernel = intra = 0
    in_maps = _in_maps(module, mask)
    patterns = getattr(module, "patterns", None)  # IntraKernelConv2d: one pattern per kept input map
    if isinstance(patterns, list | tuple):
        positions = math.prod(getattr(module, "kernel_size", (1, 1)))
        intra = sum(p is not None for p in patterns) * 2 * index_width(positions)
    own_kernels = getattr(module, "keep_kernel", None)  # KernelSparseConv2d: bool [O, I] of the compact layer
    if isinstance(own_kernels, torch.Tensor):
        kernel = own_kernels.numel()
    if mask is None:
        return channel, kernel, intra
    out_maps = mask.shape[0]
    kept_out = int(mask.keep_out.sum()) if mask.keep_out is not None else out_maps
    if kept_out < out_maps:
        channel = min(out_maps, kept_out * index_width(out_maps))
    if not isinstance(own_kernels, torch.Tensor) and mask.keep_kernel is not None and not bool(mask.keep_kernel.all()):
        kernel = kept_out * in_maps
    if mask.intra is not None and not isinstance(patterns, list | tuple):
        patterned = min(sum(p is not None for p in mask.intra), in_maps)
        intra = patterned * 2 * index_width(mask.kernel_positions)
    return channel, kernel, intra


def storage_report(
    model: nn.Module,
    word_bits: Mapping[str, int] | None = None,
    masks: NetworkMask | None = None,
    dense_bits: int | None = None,
) -> StorageReport:
    """Storage of `model` with `word_bits` (weight name or layer name -> bits; missing or None = float32).

    `masks` supplies index costs (and kept-weight counts of masked dense layers); `dense_bits` defaults
    to the registered original network at 32 bits.
    """
    word_bits = dict(word_bits or {})
    targets = quantized_weights(model)
    params = dict(model.named_parameters())
    layer_masks = masks.layers if masks is not None else {}
    rows: dict[str, LayerStorage] = {}
    for name, layer in targets.items():
        module = model.get_submodule(layer)
        mask = layer_masks.get(layer)
        bits = int(word_bits.get(name, word_bits.get(layer, FLOAT_BITS)))
        n = _stored_weights(params[name], mask)
        row = rows.get(layer)
        if row is None:
            channel, kernel, intra = _index_bits(module, mask)
            row = rows[layer] = LayerStorage(layer, 0, bits, 0, channel, kernel, intra)
        row.stored_weights += n
        row.weight_bits += n * bits
    other = 0
    for name, tensor in model.state_dict().items():
        if name in targets or not tensor.is_floating_point():
            continue
        owner = next((layer for layer in rows if name.startswith(layer + ".")), None)
        bits = tensor.numel() * FLOAT_BITS
        if owner is None:
            other += bits
        else:
            rows[owner].float_bits += bits
    return StorageReport(list(rows.values()), other, dense_bits if dense_bits is not None else dense_original_bits(model))
