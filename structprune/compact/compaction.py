"""Compaction: a masked network turned into a smaller one that computes the same function.

1. Channels: on a copy, every pruned group is removed with Torch-Pruning (its dependency graph couples
   batch norms, consumers' inputs, residual partners, concatenation slices, depthwise convs and the first
   linear layer after a flatten).
2. Kernels and intra-kernel patterns: each conv's masks, re-indexed to the channels that remain, turn the
   conv into a KernelSparseConv2d (kernel masks, optionally with patterns) or an IntraKernelConv2d. Before
   the channels go, kernel masks in disjoint blocks have their channels ordered block by block
   (block_order), so each such layer becomes one grouped convolution.
The result is an ordinary nn.Module whose arch.json (structprune.arch.describe) rebuilds it.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from structprune.arch import example_input
from structprune.compact.block_order import order_blocks_
from structprune.errors import StructpruneError
from structprune.sparsity.channel_groups import ChannelGroups, build_dependency_graph, find_channel_groups
from structprune.sparsity.masking import MaskApplier, check_channel_roots
from structprune.sparsity.masks import LayerMask, NetworkMask

log = logging.getLogger(__name__)


def _sample_for(model: nn.Module, sample: torch.Tensor | None) -> torch.Tensor:
    return sample[:1] if sample is not None else example_input(model)


def remove_channels_(model: nn.Module, mask: NetworkMask, sample: torch.Tensor) -> None:
    """Remove every pruned channel group from `model` in place (indices in the original numbering)."""
    roots = [(name, layer.keep_out) for name, layer in mask if layer.keep_out is not None and not bool(layer.keep_out.all())]
    if not roots:
        return
    graph = build_dependency_graph(model, sample)
    # Each group owns its own channels, so pruning one group leaves the others' numbering intact.
    for name, keep_out in roots:
        conv = model.get_submodule(name)
        pruner = graph.get_pruner_of_module(conv)
        dead = torch.nonzero(~keep_out).flatten().tolist()
        group = graph.get_pruning_group(conv, pruner.prune_out_channels, dead)
        group.prune(record_history=False)


def _reindexed(name: str, layer: LayerMask, conv: nn.Conv2d, groups: ChannelGroups | None,
               keep: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, list | None]:
    """The layer's kernel mask and intra patterns restricted to the conv's surviving channels."""
    out_ch, in_per_group = layer.shape[0], layer.shape[1]
    kept_out, kept_in = torch.arange(out_ch), torch.arange(in_per_group)
    if groups is not None:
        kept_out = groups.kept_indices(name, "out", keep, out_ch)
        if conv.groups == 1:  # depthwise convs keep their one input map per group
            kept_in = groups.kept_indices(name, "in", keep, in_per_group)
    if len(kept_out) != conv.out_channels or len(kept_in) != conv.weight.shape[1]:
        raise StructpruneError(
            f"{name}: after channel removal the layer has weight {list(conv.weight.shape)}, "
            f"masks expect {len(kept_out)}×{len(kept_in)}"
        )
    keep_kernel = None
    if layer.keep_kernel is not None:
        keep_kernel = layer.keep_kernel[kept_out][:, kept_in]  # bool [O', I']
        if not bool(keep_kernel.any()):
            raise StructpruneError(f"{name}: no kernel of this layer survives channel pruning")
    intra = None
    if layer.intra is not None:
        intra = [layer.intra[int(i)] for i in kept_in]
        if all(p is None for p in intra):
            intra = None
    return keep_kernel, intra


IRREGULAR_BRANCHES = 8  # more branches than this in a kernel-sparse layer: warn that it may be slower than dense


def _compact_conv(name: str, conv: nn.Conv2d, keep_kernel: torch.Tensor | None, intra: list | None) -> nn.Module:
    from structprune.compact.intra_conv import IntraKernelConv2d

    if keep_kernel is not None:
        from structprune.compact.kernel_conv import KernelSparseConv2d

        if conv.groups != 1:
            log.warning("%s: kernel masks on a grouped conv stay as zeros in a dense conv", name)
            return conv
        if bool(keep_kernel.all()) and intra is None:
            return conv
        layer = KernelSparseConv2d.from_conv(conv, keep_kernel, intra)
        if len(layer.branches) > IRREGULAR_BRANCHES:
            log.warning("%s: its kernel masks differ from output map to output map and compact into %d convolutions, "
                        "which can run slower than the dense layer; masks chosen with --kernel-structure structured "
                        "compact into one or a few", name, len(layer.branches))
        return layer
    if intra is not None:
        return IntraKernelConv2d.from_conv(conv, intra)
    return conv


def unread_channels(model: nn.Module, mask: NetworkMask, groups: ChannelGroups) -> NetworkMask:
    """`mask` plus the channels no kept kernel reads: a map whose consumers all pruned its kernels leaves the
    network with its producer. Applies to groups whose every consumer is an ungrouped conv with a kernel mask.
    (Equivalence is checked by `compact` itself.)"""
    out = copy.deepcopy(mask)
    keep = {name: lm.keep_out for name, lm in mask if lm.keep_out is not None}
    for group in groups:
        consumers = [m for m in group.members if m.role == "in"]
        if not consumers:
            continue
        read = torch.zeros(group.size, dtype=torch.bool)
        for member in consumers:
            conv = model.get_submodule(member.name)
            lm = mask.layers.get(member.name)
            if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or lm is None or lm.keep_kernel is None:
                read[:] = True
                break
            rows = torch.zeros(lm.shape[0], dtype=torch.bool)
            rows[groups.kept_indices(member.name, "out", keep, lm.shape[0])] = True
            used = (lm.keep_kernel & rows.unsqueeze(1)).any(0)  # [I]: input maps some kept kernel reads
            read[member.root[used[member.index]]] = True
        current = keep.get(group.root, torch.ones(group.size, dtype=torch.bool))
        new = current & read
        if bool(new.any()) and not torch.equal(new, current):
            out.layer(group.root, model.get_submodule(group.root)).keep_out = new
    return out


def _keeps_a_kernel_everywhere(mask: NetworkMask, groups: ChannelGroups) -> bool:
    """Every kernel-masked layer keeps at least one kernel between its surviving output and input maps."""
    keep = {name: lm.keep_out for name, lm in mask if lm.keep_out is not None}
    for name, lm in mask:
        if lm.keep_kernel is not None:
            rows = groups.kept_indices(name, "out", keep, lm.shape[0])
            cols = groups.kept_indices(name, "in", keep, lm.shape[1])
            if not bool(lm.keep_kernel[rows][:, cols].any()):
                return False
    return True


def compact(
    model: nn.Module,
    mask: NetworkMask,
    sample: torch.Tensor | None = None,
    groups: ChannelGroups | None = None,
) -> nn.Module:
    """A new, smaller network computing what `model` computes under `mask` (the model is not changed).

    `sample` is an input batch used for tracing (default: one random image of the model's input shape);
    `groups` the model's channel groups if already known. Channels that no kept kernel reads are removed
    too. The result is checked against the masked network on `sample`.
    """
    mask.validate(model)
    sample = _sample_for(model, sample)
    has_kernels = any(layer.keep_kernel is not None for _, layer in mask)
    needs_groups = has_kernels or any(layer.keep_out is not None for _, layer in mask)
    if needs_groups and groups is None:
        groups = find_channel_groups(model, sample)
    if needs_groups:
        check_channel_roots(mask, groups)
    if has_kernels:
        trimmed = unread_channels(model, mask, groups)
        if _keeps_a_kernel_everywhere(trimmed, groups) or not _keeps_a_kernel_everywhere(mask, groups):
            mask = trimmed  # else removing unread maps would leave a layer without kernels: keep them
    out = copy.deepcopy(model)
    MaskApplier(out, groups).apply_(mask)  # pruned weights -> 0, so what stays equals the masked network
    reference = _outputs(out, sample)
    if has_kernels:  # blocked kernel masks: channels ordered block by block, so each layer is one grouped conv
        mask, moved = order_blocks_(out, mask, groups)
        if moved:
            groups = find_channel_groups(out, sample)
    try:
        remove_channels_(out, mask, sample)
    except StructpruneError:
        raise
    except Exception as exc:
        raise StructpruneError(f"channel removal failed ({type(exc).__name__}: {exc})") from None

    keep = {name: layer.keep_out for name, layer in mask if layer.keep_out is not None}
    for name, layer in mask:
        if layer.keep_kernel is None and layer.intra is None:
            continue
        conv = out.get_submodule(name)
        keep_kernel, intra = _reindexed(name, layer, conv, groups, keep)
        replacement = _compact_conv(name, conv, keep_kernel, intra)
        if replacement is not conv:
            out.set_submodule(name, replacement)
    out.train(model.training)
    _check_same(out, sample, reference)
    return out


@torch.no_grad()
def _outputs(model: nn.Module, sample: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        return model(sample)
    finally:
        model.train(was_training)


def _check_same(model: nn.Module, sample: torch.Tensor, reference: torch.Tensor, rtol: float = 1e-4) -> None:
    """The compact network must run and reproduce the masked network's outputs on `sample`."""
    try:
        got = _outputs(model, sample)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise StructpruneError(
            f"the compacted network does not run ({first}); a channel-changing operation was not coupled"
        ) from None
    gap = float((got - reference).abs().max())
    if gap > rtol * float(reference.abs().max()) + 1e-6:
        raise StructpruneError(
            f"the compacted network differs from the masked one (max gap {gap:.2e}); a channel-changing "
            "operation was not coupled"
        )
