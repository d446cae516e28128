"""Prunable channel groups of a network, found by Torch-Pruning's dependency graph.

A group is a set of feature maps that must leave together: the output maps of its root layer plus every
coupled tensor slice (batch norms, residual partners, depthwise convs, concatenation slices, consumers'
input weights, the first linear layer after a flatten). Each member records, for every index it owns, the
root channel that index belongs to, so a keep set over the root's channels (original numbering) tells
exactly which slices of which parameters to silence or remove.

Pitfalls honoured (TORCH-PRUNING-NOTES): the graph is built with gradients on and the model's train/eval
mode restored; the last classifier is never a root; any parameterised layer type we cannot mask is an
error naming the layer rather than a silently wrong group.

Roots are convolutions and, for the hidden units of fully connected layers (a linear layer's outputs are
its 1×1 feature maps), linear layers; `ChannelGroup.linear` tells them apart.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch_pruning as tp
from torch import nn

from structprune.errors import StructpruneError

if TYPE_CHECKING:
    from structprune.sparsity.masks import NetworkMask

log = logging.getLogger(__name__)

# Layer types whose channel slices masking and compaction know how to handle.
SUPPORTED_TYPES = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)


@dataclass(frozen=True)
class GroupMember:
    """One layer of a group: which of its channels (`index`) belong to which root channel (`root`)."""

    name: str  # module name in the model
    role: str  # "out": output channels of a conv / features of a BN / out-features; "in": input channels
    index: torch.Tensor  # long [n]: channel index in this layer (its own numbering)
    root: torch.Tensor  # long [n]: the root conv channel each index belongs to


@dataclass
class ChannelGroup:
    """Feature maps that leave together; `root` is the conv (or linear layer) whose keep_out mask decides."""

    root: str
    size: int  # number of root channels
    members: list[GroupMember] = field(default_factory=list)
    linear: bool = False  # the root is a linear layer: the group is hidden units of a fully connected layer

    def member_names(self, role: str | None = None) -> list[str]:
        return [m.name for m in self.members if role is None or m.role == role]


@dataclass
class ChannelGroups:
    """All prunable channel groups of a model, keyed by root conv name, in module order."""

    groups: dict[str, ChannelGroup]
    owner: dict[str, str]  # conv name (any out-role conv of a group) -> its group's root

    def __iter__(self):
        return iter(self.groups.values())

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, root: str) -> ChannelGroup:
        return self.groups[root]

    def root_of(self, conv_name: str) -> str | None:
        """The root conv whose mask decides `conv_name`'s output channels (None: not prunable)."""
        return self.owner.get(conv_name)

    def kept_indices(self, name: str, role: str, keep: dict[str, torch.Tensor], size: int) -> torch.Tensor:
        """Channel indices (own numbering, sorted) of layer `name` in `role` that survive the root keep masks.

        `keep` maps root names to bool keep vectors; roots absent from `keep` keep everything. Channels of
        the layer that no group owns (e.g. the image channels of the first conv) are always kept.
        """
        alive = torch.ones(size, dtype=torch.bool)
        for group in self.groups.values():
            mask = keep.get(group.root)
            if mask is None:
                continue
            for member in group.members:
                if member.name == name and member.role == role:
                    alive[member.index] &= mask[member.root]
        return torch.nonzero(alive).flatten()


def _last_classifier(model: nn.Module) -> nn.Module | None:
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            last = module
    return last


def build_dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's graph of `model`, traced with gradients on; the model's mode is restored."""
    was_training = model.training
    try:
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
    except StructpruneError:
        raise
    except Exception as exc:  # tracing failures come in many types; report them as one line
        raise StructpruneError(f"cannot trace the network's channel dependencies ({type(exc).__name__}: {exc})") from None
    finally:
        model.train(was_training)
    return graph


def find_channel_groups(model: nn.Module, example_input: torch.Tensor) -> ChannelGroups:
    """The prunable channel groups of `model` (roots: Conv2d and Linear layers; the last classifier is protected)."""
    graph = build_dependency_graph(model, example_input)
    names = {module: name for name, module in model.named_modules()}
    order = {name: i for i, name in enumerate(names.values())}
    last = _last_classifier(model)
    ignored = [last] if last is not None else []

    groups: dict[str, ChannelGroup] = {}
    owner: dict[str, str] = {}
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]):
        members: list[GroupMember] = []
        out_convs: list[str] = []
        for item in group:
            module = item.dep.target.module
            if not isinstance(module, nn.Module) or not any(True for _ in module.parameters(recurse=False)):
                continue  # parameter-free ops (ReLU, pooling, add, concat, flatten) need no masking
            name = names.get(module)
            if name is None:
                raise StructpruneError(f"channel group touches a parameter outside any named layer ({type(module).__name__})")
            if not isinstance(module, SUPPORTED_TYPES):
                raise StructpruneError(f"{name}: layer type {type(module).__name__} is not supported for channel pruning")
            role = "out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in"
            if isinstance(module, nn.Conv2d) and module.groups > 1 and role == "in" and module.groups != module.in_channels:
                raise StructpruneError(
                    f"{name}: grouped convolution (groups={module.groups}) is not supported for channel pruning"
                )
            index = torch.tensor([int(i) for i in item.idxs], dtype=torch.long)
            root = torch.tensor([int(i) for i in item.root_idxs], dtype=torch.long)
            members.append(GroupMember(name, role, index, root))
            if role == "out" and isinstance(module, nn.Conv2d | nn.Linear):
                out_convs.append(name)
        if not out_convs:
            continue
        out_convs.sort(key=order.__getitem__)
        root = out_convs[0]
        root_module = model.get_submodule(root)
        members.sort(key=lambda m: (order[m.name], m.role))
        groups[root] = ChannelGroup(root=root, size=root_module.weight.shape[0], members=members,
                                    linear=isinstance(root_module, nn.Linear))
        for conv in out_convs:
            owner[conv] = root
    ordered = dict(sorted(groups.items(), key=lambda kv: order[kv[0]]))
    log.debug("found %d channel groups", len(ordered))
    return ChannelGroups(ordered, owner)


def layers_without_kernels(model: nn.Module, mask: NetworkMask, groups: ChannelGroups) -> list[str]:
    """Kernel-masked convolutions whose kept kernels all sit in output or input maps that the mask's channel
    masks remove: the masked layer then computes nothing but its bias, and compaction refuses it. A channel
    step after a kernel step can produce this; the search rules such candidates out."""
    keep = {name: layer.keep_out for name, layer in mask if layer.keep_out is not None}
    empty = []
    for name, layer in mask:
        if layer.keep_kernel is None:
            continue
        rows = groups.kept_indices(name, "out", keep, layer.shape[0])
        depthwise = model.get_submodule(name).groups != 1  # one input map per group: its own, kept with the row
        cols = torch.arange(layer.shape[1]) if depthwise else groups.kept_indices(name, "in", keep, layer.shape[1])
        if not bool(layer.keep_kernel[rows][:, cols].any()):
            empty.append(name)
    return empty
