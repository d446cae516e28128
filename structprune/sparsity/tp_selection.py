"""Channel selection by Torch-Pruning itself: its group-L2 importance and its uniform or global allocation.

`prune --method tp-l2 --ratio R [--scope layer|global] [--round-to N]` asks Torch-Pruning's MetaPruner
(GroupMagnitudeImportance with p = 2, the L2 norm over every layer of a coupled group) which output channels to
remove, exactly as a Torch-Pruning user would prune the model with `pruning_ratio=R`, `global_pruning`,
`round_to=N`, the fully connected layers ignored (channel scale: conv groups only). The pruner runs in its
interactive mode on a copy of the model and nothing is removed: each group it proposes is read as the pruned
indices of a conv's output channels and translated to this project's channel groups (channel_groups.py), so
the result is an ordinary NetworkMask that compacts, retrains and benches like any other. This is the baseline
the comparisons at equal measured latency use.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Collection

import torch
import torch_pruning as tp
from torch import nn

from structprune.errors import StructpruneError
from structprune.sparsity.channel_groups import ChannelGroups

log = logging.getLogger(__name__)


def _out_member(groups: ChannelGroups, conv: str) -> tuple[str, torch.Tensor, torch.Tensor] | None:
    """(root, the conv's channel indices, their root channels) of the group whose output `conv` produces."""
    for group in groups:
        for member in group.members:
            if member.name == conv and member.role == "out":
                return group.root, member.index, member.root
    return None


def tp_group_l2_keep(model: nn.Module, groups: ChannelGroups, example: torch.Tensor, ratio: float, scope: str,
                     round_to: int) -> dict[str, torch.Tensor]:
    """bool keep vector per conv-rooted group root: the channels Torch-Pruning keeps at `ratio` (its uniform
    allocation for scope "layer", its global ranking for "global"), its kept counts rounded to `round_to`."""
    work = copy.deepcopy(model).eval()
    names = {module: name for name, module in work.named_modules()}
    pruner = tp.pruner.MetaPruner(
        work, example, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio,
        global_pruning=scope == "global", round_to=round_to if round_to > 1 else None,
        ignored_layers=[m for m in work.modules() if isinstance(m, nn.Linear)])
    keep = {g.root: torch.ones(g.size, dtype=torch.bool) for g in groups if not g.linear}
    for group in pruner.step(interactive=True):
        dep, idxs = group[0].dep, group[0].idxs
        module = dep.target.module
        if not isinstance(module, nn.Conv2d) or getattr(dep.handler, "__name__", "") != "prune_out_channels":
            continue
        found = _out_member(groups, names[module])
        if found is None or found[0] not in keep:
            raise StructpruneError(f"Torch-Pruning pruned {names[module]}, which no channel group of this model holds")
        root, index, root_channels = found
        pruned = torch.isin(index, torch.as_tensor(sorted(idxs), dtype=torch.long))
        keep[root][root_channels[pruned]] = False
    for root, k in keep.items():
        if not bool(k.any()):
            raise StructpruneError(f"Torch-Pruning left no channel in {root}; lower the ratio")
    log.info("tp-l2 (%s): %d of %d conv channels kept", scope, sum(int(k.sum()) for k in keep.values()),
             sum(k.numel() for k in keep.values()))
    return keep


def tp_group_l2_importance(model: nn.Module, groups: ChannelGroups, example: torch.Tensor,
                           roots: Collection[str] | None = None) -> dict[str, torch.Tensor]:
    """Per conv-rooted group root (those in `roots`, by default all): Torch-Pruning's group L2 importance of each of
    its maps (GroupMagnitudeImportance, p = 2: the L2 norm over every layer of the coupled group, the producing
    filters, batch norms and the consumers' input weights), indexed as the group's root channels. The model is not
    changed (the graph is built on a copy)."""
    work = copy.deepcopy(model).eval()
    with torch.enable_grad():  # the graph cannot be built under no_grad (TORCH-PRUNING-NOTES)
        graph = tp.DependencyGraph().build_dependency(work, example_inputs=example)
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    scores: dict[str, torch.Tensor] = {}
    for group in groups:
        if group.linear or (roots is not None and group.root not in roots):
            continue
        conv = work.get_submodule(group.root)
        found = _out_member(groups, group.root)
        if found is None:
            raise StructpruneError(f"no channel group of this model holds the output of {group.root}")
        _, index, root_channels = found
        pruning = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(conv.out_channels)))
        per_map = importance(pruning).detach().cpu().double()
        score = torch.zeros(group.size, dtype=torch.float64)
        score[root_channels] = per_map[index]
        scores[group.root] = score
    return scores
