"""What every compact layer's `from_conv` shares: checking the source conv and taking its weights."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from structprune.errors import StructpruneError


class DenseLoadable(Protocol):
    bias: nn.Parameter | None

    def to(self, *args, **kwargs): ...
    def load_dense_weight(self, weight: torch.Tensor) -> None: ...


def check_zero_padded_conv(conv: nn.Module, what: str) -> None:
    """One clear line unless `conv` is an nn.Conv2d with numeric zero padding."""
    if not isinstance(conv, nn.Conv2d) or isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        raise StructpruneError(f"{what} compaction needs an nn.Conv2d with numeric zero padding, not {conv!r}")


@torch.no_grad()
def take_weights_from(layer: DenseLoadable, conv: nn.Conv2d) -> None:
    """Move `layer` to conv's device and dtype and copy conv's (kept) weights and bias into it."""
    layer.to(device=conv.weight.device, dtype=conv.weight.dtype)
    layer.load_dense_weight(conv.weight.detach())
    if conv.bias is not None:
        layer.bias.data.copy_(conv.bias.detach())
