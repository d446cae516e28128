"""Kernel-level sparsity as blocks: every layer's maps fall into G blocks, and each output map keeps only the
kernels that read the input maps of its own block.

The blocks of a layer's input maps are the blocks of the layer that produced them, so once the channels are
ordered block by block (structprune.compact.block_order) every layer is one grouped convolution
(groups = G) over its input as it comes: no gather, no copy, (1 - 1/G) of the kernels gone. This is the
kernel mask form that runs fast in ONNX Runtime as well as in PyTorch.

Selection, layer by layer in module order: a layer whose input maps all come from one channel group whose
blocks are known assigns each kept output map to the block whose input maps carry the most of its kernel
weight (L1, or random scores), G blocks of equal size. A layer whose inputs have no blocks (the first layer
reads the image) keeps its kernels and splits its kept output maps into G consecutive blocks. The blocks of
a layer's outputs are passed on only when that layer is the one producer of its channel group (not across a
residual add or a concatenation), so its consumers can be blocked in turn.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from structprune.errors import StructpruneError
from structprune.sparsity.channel_groups import ChannelGroup, ChannelGroups, GroupMember
from structprune.sparsity.masks import NetworkMask

log = logging.getLogger(__name__)


def balanced_blocks(scores: torch.Tensor, rows: torch.Tensor, blocks: int) -> torch.Tensor:
    """long [O]: the block of each kept row (-1 where `rows` is False), `blocks` blocks of equal size (the
    first ones one larger when the kept count does not divide). scores [O, blocks]: how much each row keeps
    in each block. Greedy: rows with the clearest preference choose first."""
    kept = torch.nonzero(rows).flatten()
    out = torch.full((scores.shape[0],), -1, dtype=torch.long)
    n = len(kept)
    capacity = [n // blocks + (1 if b < n % blocks else 0) for b in range(blocks)]
    sub = scores[kept].float()
    top2 = sub.topk(min(2, blocks), dim=1).values
    regret = top2[:, 0] - (top2[:, 1] if blocks > 1 else 0)
    for k in torch.argsort(regret, descending=True, stable=True).tolist():
        for b in torch.argsort(sub[k], descending=True, stable=True).tolist():
            if capacity[b] > 0:
                capacity[b] -= 1
                out[kept[k]] = b
                break
    return out


def _consecutive_blocks(rows: torch.Tensor, blocks: int) -> torch.Tensor:
    kept = torch.nonzero(rows).flatten()
    out = torch.full((len(rows),), -1, dtype=torch.long)
    out[kept] = torch.arange(len(kept)) * blocks // max(len(kept), 1)
    return out


def input_blocks(keep_kernel: torch.Tensor) -> torch.Tensor | None:
    """long [I]: the block of each input map when the output maps that keep kernels fall into at least two
    sets with the same kept input maps, pairwise disjoint (-1: a map no kernel reads); else None."""
    rows = keep_kernel[keep_kernel.any(1)]
    if len(rows) == 0:
        return None
    sets = torch.unique(rows, dim=0)
    if len(sets) < 2 or bool((sets.sum(0) > 1).any()):
        return None
    blocks = torch.full((keep_kernel.shape[1],), -1, dtype=torch.long)
    for b, kept in enumerate(sets):
        blocks[kept] = b
    return blocks


def output_blocks(keep_kernel: torch.Tensor | None, rows: torch.Tensor, blocks: int) -> torch.Tensor:
    """long [O]: the block of each kept output map (-1 where `rows` is False) of a layer whose kernel mask is
    `keep_kernel` (bool [O, I]): maps reading the same input maps share a block; unless the kept maps all read
    one of `blocks` disjoint sets, they split into `blocks` consecutive blocks."""
    if keep_kernel is None or not bool(rows.any()):
        return _consecutive_blocks(rows, blocks)
    kept_rows = keep_kernel & rows.unsqueeze(1)
    in_blocks = input_blocks(kept_rows)
    kept = torch.nonzero(rows).flatten()
    if in_blocks is None or int(in_blocks.max()) + 1 != blocks or not bool(kept_rows[kept].any(1).all()):
        return _consecutive_blocks(rows, blocks)
    out = torch.full((len(rows),), -1, dtype=torch.long)
    out[kept] = in_blocks[kept_rows[kept].to(torch.uint8).argmax(1)]  # the block of the first input map it reads
    return out


def assign_output_blocks(scores: torch.Tensor, alive: torch.Tensor, in_blocks: torch.Tensor, blocks: int) -> torch.Tensor:
    """long [O]: each alive output map in the block whose input maps carry the most of its kernel score,
    `blocks` blocks of equal size (balanced_blocks). scores float and alive bool [O, I], in_blocks long [I]."""
    per_block = torch.stack([(scores * alive * (in_blocks == b)).sum(1) for b in range(blocks)], 1)  # [O, blocks]
    return balanced_blocks(per_block, alive.any(1), blocks)


def block_masks(out_blocks: torch.Tensor, in_blocks: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """bool [..., O, I]: the alive kernels joining an output map to an input map of its own block.
    out_blocks long [..., O], in_blocks long [I] (-1: no block)."""
    same = out_blocks.unsqueeze(-1) == in_blocks
    return same & (in_blocks >= 0) & (out_blocks >= 0).unsqueeze(-1) & alive


def regroup(blocks: torch.Tensor, have: int, want: int) -> torch.Tensor:
    """long [C]: `blocks` (`have` blocks; -1: none) as `want` blocks, one count dividing the other: consecutive
    blocks merged (want < have), or each block split into consecutive runs of its maps in index order
    (want > have; from one block that is _consecutive_blocks). Runs that are consecutive once the channels are
    ordered block by block (structprune.compact.block_order) stay consecutive, so both compact without a gather."""
    if want == have:
        return blocks.clone()
    out = torch.full_like(blocks, -1)
    if have % want == 0:
        kept = blocks >= 0
        out[kept] = blocks[kept] // (have // want)
        return out
    if want % have:
        raise StructpruneError(f"{have} kernel blocks cannot become {want} (neither count divides the other)")
    split = want // have
    for b in range(have):
        members = torch.nonzero(blocks == b).flatten()
        out[members] = b * split + torch.arange(len(members)) * split // max(len(members), 1)
    return out


def _input_blocks(name: str, in_channels: int, groups: ChannelGroups, known: dict[str, tuple[torch.Tensor, int]],
                  want: int) -> torch.Tensor | None:
    """long [I]: the block (of `want`) of each input map of `name`, when they all come from one group with known
    blocks (regrouped from its producer's count)."""
    feeding = [(g, m) for g in groups for m in g.members if m.name == name and m.role == "in"]
    if len(feeding) != 1:
        return None
    group, member = feeding[0]
    if group.root not in known or len(member.index) != in_channels:
        return None
    root_blocks, have = known[group.root]
    blocks = torch.full((in_channels,), -1, dtype=torch.long)
    blocks[member.index] = regroup(root_blocks, have, want)[member.root]
    return blocks


def producing_layers(model: nn.Module) -> set[str]:
    """Names of the layers that make channels (convs and linears); batch norms only scale them."""
    return {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}


def group_producers(group: ChannelGroup, layers: set[str]) -> list[GroupMember]:
    """The members of `group` whose outputs are its channels and that are in `layers` (producing_layers)."""
    return [m for m in group.members if m.role == "out" and m.name in layers]


def _sole_producer(group: ChannelGroup, name: str, layers: set[str]) -> bool:
    """True when `name` is the only conv or linear layer whose outputs are this group's channels (and does not
    also read them)."""
    return ([m.name for m in group_producers(group, layers)] == [name]
            and all(m.name != name or m.role == "out" for m in group.members))


def select_kernel_blocks(model: nn.Module, convs: dict[str, nn.Conv2d], groups: ChannelGroups | None, blocks: int,
                         alive: dict[str, torch.Tensor], scores: dict[str, torch.Tensor],
                         mask: NetworkMask) -> None:
    """Set block-diagonal keep_kernel masks on `mask` (in place); see the module doc. `convs` in module order
    (ungrouped convs), `alive` and `scores` bool / float [O, I] per conv (kernels left by channel masks)."""
    if blocks < 2:
        raise StructpruneError(f"kernel blocks need at least 2 blocks, not {blocks}")
    select_layer_blocks(model, convs, groups, dict.fromkeys(convs, blocks), alive, scores, mask)


def select_layer_blocks(model: nn.Module, convs: dict[str, nn.Conv2d], groups: ChannelGroups | None,
                        blocks: dict[str, int], alive: dict[str, torch.Tensor], scores: dict[str, torch.Tensor],
                        mask: NetworkMask, quiet: bool = False) -> set[str]:
    """select_kernel_blocks with a block count per layer (`blocks`; a layer left out, or at 1, keeps its kernels).
    A layer's input blocks are its producer's, merged or split to its own count (`regroup`). Returns the layers
    blocked; `quiet`: no log line for the layers that cannot be (a caller that checked them already)."""
    layers = producing_layers(model)
    if groups is None:
        raise StructpruneError("kernel blocks need the model's channel groups")
    known: dict[str, tuple[torch.Tensor, int]] = {}  # group root -> (block of each root channel (-1: pruned), count)
    blocked: set[str] = set()
    for name, conv in convs.items():
        rows = alive[name].any(1)
        want = blocks.get(name, 1)
        inputs = _input_blocks(name, conv.in_channels, groups, known, want) if want > 1 else None
        count = want if inputs is not None else 1
        if inputs is None:
            out_blocks = torch.where(rows, 0, -1)
            if want > 1 and not quiet:
                log.info("%s: its input maps have no blocks; it keeps its kernels and starts %d blocks", name, want)
        else:
            out_blocks = assign_output_blocks(scores[name], alive[name], inputs, want)
            keep = block_masks(out_blocks, inputs, alive[name])
            empty = rows & ~keep.any(1)
            if bool(empty.any()):
                raise StructpruneError(f"{name}: {int(empty.sum())} output maps would keep no kernel in their block")
            mask.layer(name, conv).keep_kernel = keep
            blocked.add(name)
        root = groups.root_of(name)
        if root is not None and _sole_producer(groups[root], name, layers):
            member = next(m for m in groups[root].members if m.name == name and m.role == "out")
            root_blocks = torch.full((groups[root].size,), -1, dtype=torch.long)
            root_blocks[member.root] = out_blocks[member.index]
            known[root] = (root_blocks, count)
        elif not quiet:
            log.info("%s: its output maps are coupled with another layer's; its consumers keep their kernels", name)
    return blocked
