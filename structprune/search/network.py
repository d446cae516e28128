"""The network a search works on, seen through its coupled channel groups: what a mask leaves alive, MACs.

`SearchNet` holds the model and its channel groups (the ones selection, masking and compaction use, found
once by Torch-Pruning's dependency graph). Channel units are group roots; a conv's alive input maps are the
ones every group feeding it keeps, its alive output maps the ones its own group keeps, so the same code
serves chains, residual adds, depthwise convs and concatenation.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import torch
from torch import fx, nn

from structprune.errors import StructpruneError
from structprune.search.fx_graph import trace
from structprune.search.scoring import as_chain
from structprune.sparsity.channel_groups import ChannelGroups
from structprune.sparsity.masking import MaskApplier
from structprune.sparsity.masks import LayerMask, NetworkMask


def conv_names(model: nn.Module) -> list[str]:
    """Every Conv2d of the model, in module order."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


class SearchNet:
    """A model, its mask applier (whose channel groups are found on first use), whether it is a chain, and its
    traced graph (on first use)."""

    def __init__(self, model: nn.Module, applier: MaskApplier | None = None):
        self.model = model
        self.applier = applier or MaskApplier(model)
        try:
            self.chain: list[tuple[str, nn.Module]] | None = as_chain(model)
        except StructpruneError:
            self.chain = None
        self._traced: fx.GraphModule | str | None = None  # the graph, or why tracing failed
        self._macs: dict[tuple[int, ...], dict[str, int]] = {}
        self.said: set[str] = set()  # fallback reasons already logged

    def traced(self) -> fx.GraphModule:
        """The model's torch.fx graph (fx_graph.trace), traced once; StructpruneError saying why it cannot be."""
        if self._traced is None:
            try:
                self._traced = trace(self.model)
            except StructpruneError as exc:
                self._traced = str(exc)
        if isinstance(self._traced, str):
            raise StructpruneError(self._traced)
        return self._traced

    def layer_macs(self, input_shape: tuple[int, ...]) -> dict[str, int]:
        """Dense multiply–accumulates of every conv for one image of `input_shape` (from one pass of zeros in eval
        mode, the modules' modes restored; found once per shape)."""
        if input_shape not in self._macs:
            modes = {m: m.training for m in self.model.modules()}
            self.model.eval()
            try:
                sizes = conv_output_sizes(self.model, input_shape)
            finally:
                for m, training in modes.items():
                    m.training = training
            self._macs[input_shape] = {n: sizes.get(n, 0) * self.conv(n).weight.numel() for n in conv_names(self.model)}
        return self._macs[input_shape]

    @property
    def groups(self) -> ChannelGroups:
        return self.applier.groups

    def conv(self, name: str) -> nn.Conv2d:
        return self.model.get_submodule(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.conv(name).weight.shape)

    @staticmethod
    def _keeps(mask: NetworkMask) -> dict[str, torch.Tensor]:
        return {n: lm.keep_out for n, lm in mask if lm.keep_out is not None}

    def alive_inputs(self, mask: NetworkMask, layer: str) -> torch.Tensor:
        """bool [I per group]: input maps of `layer` that the channel masks keep."""
        conv = self.conv(layer)
        size = conv.weight.shape[1]
        keep = self._keeps(mask)
        if not keep or conv.groups != 1:  # a depthwise conv's inputs are its outputs
            return torch.ones(size, dtype=torch.bool)
        alive = torch.zeros(size, dtype=torch.bool)
        alive[self.groups.kept_indices(layer, "in", keep, size)] = True
        return alive

    def alive_outputs(self, mask: NetworkMask, layer: str) -> torch.Tensor:
        """bool [O]: output maps of `layer` that the channel masks keep."""
        conv = self.conv(layer)
        lm = mask.layers.get(layer)
        if lm is not None and lm.keep_out is not None:  # a root: its own mask
            return lm.keep_out.clone()
        keep = self._keeps(mask)
        if not keep:
            return torch.ones(conv.out_channels, dtype=torch.bool)
        alive = torch.zeros(conv.out_channels, dtype=torch.bool)
        alive[self.groups.kept_indices(layer, "out", keep, conv.out_channels)] = True
        return alive

    def alive_kernels(self, mask: NetworkMask, layer: str) -> torch.Tensor:
        """bool [O, I]: kernels not yet pruned at any scale."""
        alive = self.alive_outputs(mask, layer)[:, None] & self.alive_inputs(mask, layer)[None, :]
        lm = mask.layers.get(layer)
        if lm is not None and lm.keep_kernel is not None:
            alive &= lm.keep_kernel
        return alive

    def kept_weight_fraction(self, mask: NetworkMask, layer: str) -> float:
        """Fraction of the layer's conv weights (and so its MACs) that the mask keeps."""
        conv = self.conv(layer)
        lm = mask.layers.get(layer) or LayerMask(shape=tuple(conv.weight.shape), groups=conv.groups)
        weight = lm.weight_mask() * self.alive_inputs(mask, layer).float().view(1, -1, 1, 1)
        weight = weight * self.alive_outputs(mask, layer).float().view(-1, 1, 1, 1)
        return float(weight.mean())

    def with_layer(self, mask: NetworkMask, layer: str, **fields: Any) -> NetworkMask:
        """A copy of `mask` with fields of `layer`'s mask replaced."""
        out = copy.deepcopy(mask)
        conv = self.conv(layer)
        lm = out.layers.get(layer) or LayerMask(shape=tuple(conv.weight.shape), groups=conv.groups)
        out.layers[layer] = replace(lm, **fields)
        return out


def conv_output_sizes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Output pixels (H·W) of every conv, from one forward pass."""
    sizes: dict[str, int] = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda _m, _i, out, n=n: sizes.__setitem__(n, out.shape[-1] * out.shape[-2])) for n in conv_names(model)]
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    for h in hooks:
        h.remove()
    return sizes


def conv_macs(model: nn.Module, mask: NetworkMask, input_shape: tuple[int, ...],
              net: SearchNet | None = None) -> tuple[int, int]:
    """(masked, dense) multiply–accumulates of the convolutions for one image."""
    net = net or SearchNet(model)
    sizes = conv_output_sizes(model, input_shape)
    masked = dense = 0
    for name in conv_names(model):
        w = model.get_submodule(name).weight
        dense += sizes[name] * w.numel()
        masked += round(sizes[name] * w.numel() * net.kept_weight_fraction(mask, name))
    return masked, dense
