"""The LayerForm of each convolution of a compact network (structprune.compact), for LatencyModel.network_ms.

  nn.Conv2d            its maps (a grouped, not depthwise, convolution: G = its groups)
  KernelSparseConv2d   one branch: the maps it reads and writes, G = the branch's groups
  IntraKernelConv2d    its maps, and the taps of its one rectangular block when every map reads that block
A layer with kernels in several branches, or intra patterns of several blocks, has no LayerForm (None).
"""

from __future__ import annotations

from torch import nn

from structprune.compact.intra_conv import BlockConvs, IntraKernelConv2d
from structprune.compact.kernel_conv import KernelSparseConv2d
from structprune.errors import StructpruneError
from structprune.latency_model.model import LayerForm


def _taps(blocks: BlockConvs) -> tuple[int, int] | bool | None:
    """The (rows, cols) of the one unit-step block every input map reads, None for the full kernel; False when
    the layer is not one such block."""
    if len(blocks.plan) != 1 or len(blocks.plan[0]) != 1:
        return False
    piece = blocks.plan[0][0]
    if piece.maps != tuple(range(blocks.in_channels // blocks.groups)) or piece.block.shape[2:] != (1, 1):
        return False  # not every map, or a dilated block
    taps = (piece.block.rows, piece.block.cols)
    return None if taps == tuple(blocks.kernel_size) else taps


def _groups(groups: int, in_channels: int, out_channels: int) -> int:
    """Kernel blocks G of a convolution with `groups` groups: 1 for a depthwise one (it keeps its form)."""
    return 1 if groups == in_channels == out_channels else groups


def layer_form(module: nn.Module) -> LayerForm | None:
    """The form of one (compact) convolution; None when it is not one of the forms a LatencyModel predicts."""
    if isinstance(module, nn.Conv2d):
        return LayerForm(module.in_channels, module.out_channels,
                         _groups(module.groups, module.in_channels, module.out_channels))
    if isinstance(module, IntraKernelConv2d):
        taps = _taps(module.blocks)
        if taps is False:
            return None
        return LayerForm(module.in_channels, module.out_channels,
                         _groups(module.groups, module.in_channels, module.out_channels), taps or None)
    if isinstance(module, KernelSparseConv2d):
        if len(module.branches) != 1:
            return None
        branch = module.branches[0]
        taps = _taps(branch)
        if taps is False:
            return None
        return LayerForm(branch.in_channels, branch.out_channels, branch.groups, taps or None)
    return None


def network_forms(compact: nn.Module, names: list[str]) -> dict[str, LayerForm]:
    """{name: LayerForm} of the layers `names` (the original network's convolutions) in a compact network;
    StructpruneError naming a layer that is missing or has no form."""
    forms = {}
    for name in names:
        try:
            module = compact.get_submodule(name)
        except AttributeError:
            raise StructpruneError(f"the compact network has no layer {name!r}") from None
        form = layer_form(module)
        if form is None:
            raise StructpruneError(f"{name}: {type(module).__name__} is not a form the latency model predicts "
                                   "(several branches or intra blocks)")
        forms[name] = form
    return forms
