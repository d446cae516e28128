"""A per-layer table of a network: output shape, parameters and MACs of a one-image forward pass."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from structprune.arch import input_shape_of
from structprune.compact import CsrConv2d, IntraKernelConv2d, KernelSparseConv2d


def is_layer(module: nn.Module) -> bool:
    """A unit of a layer table: a module without submodules, or a compact layer (whose submodules are its
    parts: block convolutions, weight lists), which counts as one layer."""
    return next(module.children(), None) is None or isinstance(module, IntraKernelConv2d | KernelSparseConv2d | CsrConv2d)


def layer_names(model: nn.Module) -> list[str]:
    """Names of the table's layers, parts of compact layers left out."""
    units = [name for name, module in model.named_modules() if name and is_layer(module)]
    compact = [name for name in units if next(model.get_submodule(name).children(), None) is not None]
    return [n for n in units if not any(n.startswith(c + ".") for c in compact)]


@torch.no_grad()
def layer_table(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> list[dict[str, Any]]:
    """One row per leaf layer: name, type, output shape (one image), weight shape, own parameters,
    MACs (FLOPs counted by PyTorch's FLOP counter, halved)."""
    shape = tuple(input_shape) if input_shape is not None else input_shape_of(model)
    outputs: dict[str, tuple[int, ...]] = {}
    hooks = []
    names = layer_names(model)
    for name in names:
        def hook(mod, inp, out, name=name):
            if isinstance(out, torch.Tensor):
                outputs[name] = tuple(out.shape[1:])
        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *shape, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    flops = counter.get_flop_counts()  # {"Global": ..., "<RootClass>.<module fqn>": {op: flops}}
    root = type(model).__name__
    rows = []
    for name in names:
        if name not in outputs:
            continue
        module = model.get_submodule(name)
        params = sum(p.numel() for p in module.parameters())  # a compact layer's weights live in its parts
        weight = getattr(module, "weight", None)
        macs = int(sum(flops.get(f"{root}.{name}", {}).values()) // 2)
        rows.append({"name": name, "type": type(module).__name__, "output_shape": list(outputs[name]),
                     "weight_shape": list(weight.shape) if isinstance(weight, torch.Tensor) else [],
                     "params": params, "macs": macs})
    return rows
