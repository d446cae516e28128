"""Applying a NetworkMask to a model in place, cheaply: no copy of the model per mask.

`mask_factors` turns a mask into one 0/1 multiplier per affected parameter. A channel mask silences its
whole group: output slices of every conv, batch norm and linear layer in the group (weight and bias) and
the consumers' input weights, so a zeroed map is exactly zero everywhere it would have flowed, batch norms
after a concatenation included. Kernel and intra-kernel masks multiply the conv weight.

    applier = MaskApplier(model)            # finds the channel groups once
    with applier.applied(mask):             # writes masked weights, restores the originals on exit
        mcr = evaluate(model, split)
    applier.apply_(mask)                    # permanent: the pruned weights become zeros
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from structprune.arch import example_input
from structprune.errors import StructpruneError
from structprune.sparsity.channel_groups import ChannelGroups, find_channel_groups
from structprune.sparsity.masks import NetworkMask


def _slice_factor(param: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """A multiplier of `param`'s shape that is 0 at `index` along `dim`, 1 elsewhere."""
    factor = torch.ones_like(param)
    return factor.index_fill_(dim, index.to(param.device), 0.0)


def channel_factor_targets(
    module: nn.Module, role: str, dead: torch.Tensor
) -> list[tuple[str, int, torch.Tensor]]:
    """(parameter name, dim, indices) to zero so that channels `dead` of `module` carry nothing."""
    if isinstance(module, nn.Conv2d):
        depthwise = module.groups > 1 and module.groups == module.in_channels
        if role == "out" or depthwise:
            targets = [("weight", 0, dead)]
            if module.bias is not None:
                targets.append(("bias", 0, dead))
            return targets
        return [("weight", 1, dead)]
    if isinstance(module, nn.BatchNorm2d):
        return [(p, 0, dead) for p in ("weight", "bias") if getattr(module, p, None) is not None]
    if isinstance(module, nn.Linear):
        if role == "out":
            return [("weight", 0, dead)] + ([("bias", 0, dead)] if module.bias is not None else [])
        return [("weight", 1, dead)]
    raise StructpruneError(f"layer type {type(module).__name__} is not supported for channel pruning")


def check_channel_roots(mask: NetworkMask, groups: ChannelGroups) -> None:
    """Every keep_out must sit on the root conv of a prunable group."""
    for name, layer in mask:
        if layer.keep_out is None:
            continue
        root = groups.root_of(name)
        if root is None:
            raise StructpruneError(f"{name}: its output channels cannot be pruned (not part of a prunable channel group)")
        if root != name:
            raise StructpruneError(f"{name}: its output channels are coupled to {root}; put the channel mask on {root}")


def mask_factors(model: nn.Module, mask: NetworkMask, groups: ChannelGroups | None) -> dict[str, torch.Tensor]:
    """One 0/1 multiplier per affected parameter (keyed by its full name, e.g. 'features.0.weight')."""
    mask.validate(model)
    factors: dict[str, torch.Tensor] = {}

    def multiply(name: str, factor: torch.Tensor) -> None:
        factors[name] = factor if name not in factors else factors[name] * factor

    for name, layer in mask:
        if layer.keep_kernel is not None or layer.intra is not None:
            conv = model.get_submodule(name)
            multiply(f"{name}.weight", layer.weight_mask().to(conv.weight))
    has_channels = any(layer.keep_out is not None for _, layer in mask)
    if has_channels:
        if groups is None:
            raise StructpruneError("channel masks need the model's channel groups")
        check_channel_roots(mask, groups)
        for name, layer in mask:
            if layer.keep_out is None or bool(layer.keep_out.all()):
                continue
            for member in groups[name].members:
                dead = member.index[~layer.keep_out[member.root]]
                if dead.numel() == 0:
                    continue
                module = model.get_submodule(member.name)
                for pname, dim, idx in channel_factor_targets(module, member.role, dead):
                    param = getattr(module, pname)
                    multiply(f"{member.name}.{pname}", _slice_factor(param.detach(), dim, idx))
    return factors


class MaskApplier:
    """Applies masks to one model in place. The channel groups are found once, at construction."""

    def __init__(self, model: nn.Module, groups: ChannelGroups | None = None, sample: torch.Tensor | None = None):
        self.model = model
        self._groups = groups
        self._sample = sample
        self._params = dict(model.named_parameters())

    @property
    def groups(self) -> ChannelGroups:
        if self._groups is None:
            sample = self._sample if self._sample is not None else example_input(self.model)
            self._groups = find_channel_groups(self.model, sample)
        return self._groups

    def factors(self, mask: NetworkMask) -> dict[str, torch.Tensor]:
        needs_groups = any(layer.keep_out is not None for _, layer in mask)
        return mask_factors(self.model, mask, self.groups if needs_groups else None)

    @torch.no_grad()
    def apply_(self, mask: NetworkMask) -> dict[str, torch.Tensor]:
        """Zero the pruned weights for good; returns the factors (reuse them to re-zero after steps)."""
        factors = self.factors(mask)
        multiply_(self._params, factors)
        return factors

    @contextmanager
    def applied(self, mask: NetworkMask) -> Iterator[nn.Module]:
        """Inside the block the model computes the masked network; the weights are restored on exit."""
        with self.multiplied(self.factors(mask)):
            yield self.model

    @contextmanager
    def multiplied(self, factors: dict[str, torch.Tensor]) -> Iterator[nn.Module]:
        """Inside the block the parameters are multiplied by `factors` (see `factors`); restored on exit."""
        with torch.no_grad():
            saved = {name: self._params[name].detach().clone() for name in factors}
            multiply_(self._params, factors)
        try:
            yield self.model
        finally:
            with torch.no_grad():
                for name, original in saved.items():
                    self._params[name].copy_(original)


@torch.no_grad()
def multiply_(params: dict[str, torch.Tensor], factors: dict[str, torch.Tensor]) -> None:
    """params[name] *= factors[name], in place, for every factor."""
    for name, factor in factors.items():
        params[name].mul_(factor)


def apply_mask_(model: nn.Module, mask: NetworkMask, groups: ChannelGroups | None = None) -> nn.Module:
    """Zero `model`'s pruned weights in place (all three scales); returns the model."""
    MaskApplier(model, groups).apply_(mask)
    return model
