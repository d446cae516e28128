"""Channels reordered block by block, so that block-diagonal kernel masks (structprune.sparsity.kernel_blocks) compact
into grouped convolutions that read their input as it comes.

A channel group whose consumer convs keep their kernels in disjoint blocks of input maps is permuted so that
each block's maps are consecutive: the producing layers' output maps, batch norms and the consumers' input
maps (a linear layer after a flatten moves its columns map by map), together with the masks that index them.
The network computes the same function; `compact` then finds every blocked layer to be one grouped
convolution without a gather (KernelSparseConv2d), and no output permutation either, since the producer's
output blocks are its consumers' input blocks. Groups with a layer that cannot be permuted here (grouped or
depthwise convs) keep their order; their layers still compact, through gathers.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from structprune.sparsity.channel_groups import ChannelGroup, ChannelGroups
from structprune.sparsity.kernel_blocks import group_producers, input_blocks, producing_layers
from structprune.sparsity.masks import NetworkMask

log = logging.getLogger(__name__)


def _permutable(module: nn.Module, role: str) -> bool:
    if isinstance(module, nn.Conv2d):
        return module.groups == 1
    return isinstance(module, nn.BatchNorm2d) or (isinstance(module, nn.Linear) and role == "in")


def _root_keys(group: ChannelGroup, mask: NetworkMask, layers: set[str]) -> torch.Tensor | None:
    """long [root channels]: a sort key per channel that puts each block's channels together (-1: a channel no
    kernel uses); None when no layer of the group keeps its kernels in blocks, or its consumers disagree.

    When the group's one producer is itself blocked, a channel's key is the first input map its kernels read
    (its input maps, ordered before, come block by block): output blocks then follow input blocks, so the
    grouped convolution reads its input in order. Otherwise the consumers' input blocks decide."""
    producers = group_producers(group, layers)
    if len(producers) == 1:
        layer = mask.layers.get(producers[0].name)
        if layer is not None and layer.keep_kernel is not None and input_blocks(layer.keep_kernel) is not None:
            kept = layer.keep_kernel
            first = torch.where(kept.any(1), kept.to(torch.uint8).argmax(1), -1)  # first input map each output reads
            keys = torch.full((group.size,), -1, dtype=torch.long)
            keys[producers[0].root] = first[producers[0].index]
            return keys
    found: torch.Tensor | None = None
    for member in group.members:
        layer = mask.layers.get(member.name)
        if member.role != "in" or layer is None or layer.keep_kernel is None:
            continue
        blocks = input_blocks(layer.keep_kernel)
        if blocks is None:
            continue
        per_root = torch.full((group.size,), -1, dtype=torch.long)
        per_root[member.root] = blocks[member.index]
        if found is not None and not torch.equal(found, per_root):
            log.info("group of %s: its consumers disagree on blocks; its order is kept", group.root)
            return None
        found = per_root
    return found


def _new_order(member_index: torch.Tensor, member_root: torch.Tensor, position: torch.Tensor, size: int) -> torch.Tensor:
    """long [size]: which old channel of the member's dimension lands at each place, the group's channels moved
    to their root channels' new positions (channels of one root channel keep their order)."""
    moved = member_index[torch.argsort(position[member_root], stable=True)]
    order = torch.arange(size)
    order[torch.sort(member_index).values] = moved
    return order


def _dim_size(module: nn.Module, role: str) -> int:
    if isinstance(module, nn.Conv2d | nn.Linear):
        return module.weight.shape[1 if role == "in" else 0]
    return module.num_features  # batch norm


@torch.no_grad()
def _permute_member_(module: nn.Module, role: str, order: torch.Tensor) -> None:
    if isinstance(module, nn.Conv2d | nn.Linear) and role == "in":
        module.weight.copy_(module.weight[:, order])
        return
    for tensor in (getattr(module, name, None) for name in ("weight", "bias", "running_mean", "running_var")):
        if tensor is not None:
            tensor.copy_(tensor[order])


def order_blocks_(model: nn.Module, mask: NetworkMask, groups: ChannelGroups) -> tuple[NetworkMask, bool]:
    """Permute `model`'s channels in place so that blocked kernel masks have consecutive blocks; returns the
    masks re-indexed alike (a copy) and whether any channel moved."""
    mask = copy.deepcopy(mask)
    layers = producing_layers(model)
    moved = False
    for group in groups:
        keys = _root_keys(group, mask, layers)
        if keys is None:
            continue
        if not all(_permutable(model.get_submodule(m.name), m.role) for m in group.members):
            log.info("group of %s: a layer in it cannot be reordered; its blocks compact through gathers", group.root)
            continue
        perm = torch.argsort(torch.where(keys < 0, torch.iinfo(torch.long).max, keys), stable=True)  # place -> old channel
        if torch.equal(perm, torch.arange(group.size)):
            continue
        position = torch.empty_like(perm)
        position[perm] = torch.arange(group.size)
        for member in group.members:
            module = model.get_submodule(member.name)
            order = _new_order(member.index, member.root, position, _dim_size(module, member.role))
            _permute_member_(module, member.role, order)
            layer = mask.layers.get(member.name)
            if layer is None or not isinstance(module, nn.Conv2d):
                continue
            if member.role == "out":
                if layer.keep_out is not None:
                    layer.keep_out = layer.keep_out[order]
                if layer.keep_kernel is not None:
                    layer.keep_kernel = layer.keep_kernel[order]
            else:
                if layer.keep_kernel is not None:
                    layer.keep_kernel = layer.keep_kernel[:, order]
                if layer.intra is not None:
                    layer.intra = [layer.intra[int(i)] for i in order]
        moved = True
    return mask, moved
