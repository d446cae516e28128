"""Kernel scale: free or structured kernel masks (one bit per kernel unit), and kernel blocks (which block of
two each alive output map joins).

Kernel units (scoring.kernel_units): one bit per alive (out, in) kernel, or, structured:G, one per (output
group, input map). Kernel blocks: a layer whose input maps come from one channel group with a single producer
takes that producer's output blocks as its input blocks; its particle puts half of its alive output maps in
each block, and the layer compacts into one grouped convolution. Grouped and depthwise convolutions are
skipped (their kernels are their channels), as are layers whose inputs have no blocks, with one log line.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from structprune.search.network import SearchNet
from structprune.search.particle_filter import BitSpace
from structprune.search.scoring import kernel_groups_in_use, kernel_masks_from_units, kernel_units
from structprune.search.steps.base import Rung, Step, register_step, top_bits
from structprune.sparsity.granularity import Granularity, KernelStructure
from structprune.sparsity.kernel_blocks import (
    assign_output_blocks,
    block_masks,
    group_producers,
    input_blocks,
    output_blocks,
    producing_layers,
)
from structprune.sparsity.masks import NetworkMask
from structprune.sparsity.selection import kernel_l1

log = logging.getLogger(__name__)


class KernelRung(Rung):
    granularity = Granularity.KERNEL

    def __init__(self, net, layer, ratio, space, base, alive: torch.Tensor, units: torch.Tensor):
        super().__init__(net, layer, ratio, space, base)
        self.alive = alive  # bool [O, I]
        self.units = units  # long [O, I]: the particle bit deciding each kernel (-1: dead)

    def decode(self, particles: np.ndarray) -> torch.Tensor:
        return kernel_masks_from_units(particles, self.units, self.shape)

    def to_mask(self, particle: np.ndarray, mask: NetworkMask) -> NetworkMask:
        keep = self.decode(particle[None])[0, :, :, 0, 0].bool()
        return self.net.with_layer(mask, self.layer, keep_kernel=keep)

    def l1_particle(self) -> np.ndarray:
        per_kernel, units = kernel_l1(self.net.conv(self.layer)), self.units
        scores = torch.zeros(int(units.max()) + 1).index_add_(0, units[units >= 0], per_kernel[units >= 0])
        return top_bits(scores, self.space.keep)


class KernelBlockRung(KernelRung):
    """The particle's bits are the blocks of the alive output maps."""

    def __init__(self, net, layer, ratio, space, base, alive: torch.Tensor, in_blocks: torch.Tensor):
        super().__init__(net, layer, ratio, space, base, alive=alive, units=torch.empty(0, dtype=torch.long))
        self.in_blocks = in_blocks  # long [I]: the block of each input map (-1: dead)

    def decode(self, particles: np.ndarray) -> torch.Tensor:
        rows = self.alive.any(1)
        out_blocks = torch.full((len(particles), len(rows)), -1, dtype=torch.long)
        out_blocks[:, rows] = torch.from_numpy(particles.astype(np.int64))
        keep = block_masks(out_blocks, self.in_blocks, self.alive).float()  # [P, O, I]
        return keep.view(*keep.shape, 1, 1).expand(*keep.shape, *self.shape[2:])

    def l1_particle(self) -> np.ndarray:
        rows = self.alive.any(1)
        out_blocks = assign_output_blocks(kernel_l1(self.net.conv(self.layer)), self.alive, self.in_blocks, 2)
        return (out_blocks[rows] == 1).numpy().astype(np.int16)


def _skips_grouped(net: SearchNet, convs: list[str], what: str) -> list[str]:
    out = []
    for name in convs:
        if net.conv(name).groups != 1:
            log.info("%s: a grouped or depthwise convolution (its kernels are its channels); no %s", name, what)
        else:
            out.append(name)
    return out


@register_step
class KernelStep(Step):
    name = "kernel"
    granularity = Granularity.KERNEL

    def units(self, convs: list[str]) -> list[str]:
        if self.cfg.round_to > 1 and self.cfg.kernel.structure is KernelStructure.STRUCTURED:
            log.info("--round-to: the structured kernel search counts (group, input map) units across the groups "
                     "of a layer, not per group; kept input maps are not rounded")
        return _skips_grouped(self.net, convs, "kernel masks")

    def rungs(self, mask: NetworkMask, unit: str) -> list[Rung]:
        shape = self.net.shape(unit)
        alive = self.net.alive_kernels(mask, unit)
        kernel_groups = self.cfg.kernel.groups if self.cfg.kernel.structure is KernelStructure.STRUCTURED else 0  # 0: free
        units = kernel_units(alive, kernel_groups)
        count = int(units.max()) + 1
        # units of the unpruned layer: O·I kernels, or (groups in use) × I input maps
        full = shape[0] * shape[1] if kernel_groups == 0 else kernel_groups_in_use(alive, kernel_groups) * shape[1]
        out: list[Rung] = []
        for r in self.ratios:
            keep = max(1, round((1 - r) * full))
            if keep < count and (not out or keep < out[-1].space.keep):
                out.append(KernelRung(self.net, unit, r, BitSpace(count, keep), mask, alive=alive, units=units))
        return out


def producer_blocks(net: SearchNet, mask: NetworkMask, layer: str, blocks: int) -> torch.Tensor | None:
    """long [I]: the block of each input map of `layer`: the output blocks of the one conv producing them
    (output_blocks of its kernel mask); None where they come from the image, several groups, or a group
    with more than one producer (a residual add, a concatenation)."""
    groups = net.groups
    feeding = [(g, m) for g in groups for m in g.members if m.name == layer and m.role == "in"]
    if len(feeding) != 1:
        return None
    group, member = feeding[0]
    producers = group_producers(group, producing_layers(net.model))
    in_channels = net.conv(layer).in_channels
    if len(producers) != 1 or len(member.index) != in_channels or producers[0].name == layer:
        return None
    prev = producers[0].name
    prev_mask = mask.layers.get(prev)
    prev_blocks = output_blocks(None if prev_mask is None else prev_mask.keep_kernel, net.alive_outputs(mask, prev), blocks)
    root_blocks = torch.full((group.size,), -1, dtype=torch.long)
    root_blocks[producers[0].root] = prev_blocks[producers[0].index]
    out = torch.full((in_channels,), -1, dtype=torch.long)
    out[member.index] = root_blocks[member.root]
    return out


def kernel_block_rung(model: torch.nn.Module, mask: NetworkMask, layer: str, blocks: int,
                      net: SearchNet | None = None) -> KernelBlockRung | None:
    """The one kernel-blocks rung of a layer: its input maps keep the blocks of their producer's outputs, and
    the particle assigns the alive output maps to blocks, half to each. None where the layer's inputs have no
    blocks (it reads the image, or a residual add or concatenation), it is blocked already, or its alive output
    maps or input blocks do not split evenly (two equal blocks are what compact into one grouped convolution)."""
    net = net or SearchNet(model)
    lm = mask.layers.get(layer)
    if lm is not None and lm.keep_kernel is not None and input_blocks(lm.keep_kernel) is not None:
        return None
    in_blocks = producer_blocks(net, mask, layer, blocks)
    if in_blocks is None:
        log.info("%s: its input maps have no blocks (image, or several producers); no kernel blocks", layer)
        return None
    alive = net.alive_kernels(mask, layer)
    n = int(alive.any(1).sum())  # alive output maps
    read = alive.any(0) & (in_blocks >= 0)
    per_block = torch.bincount(in_blocks[read], minlength=blocks)
    if n % blocks or int(per_block.min()) == 0 or int(per_block.min()) != int(per_block.max()):
        log.info("%s: %d alive output maps, %s input maps per block: no kernel blocks", layer, n, per_block.tolist())
        return None
    return KernelBlockRung(net, layer, 1 - 1 / blocks, BitSpace(n, n // blocks), mask, alive=alive,
                           in_blocks=in_blocks)


@register_step
class KernelBlockStep(Step):
    name = "kernel-blocks"
    granularity = Granularity.KERNEL

    def units(self, convs: list[str]) -> list[str]:
        return _skips_grouped(self.net, convs, "kernel blocks")

    def rungs(self, mask: NetworkMask, unit: str) -> list[Rung]:
        rung = kernel_block_rung(self.net.model, mask, unit, self.cfg.kernel.groups, self.net)
        return [rung] if rung is not None else []
