"""arch.json back into a network: the registered model (or the user's factory), each layer replaced by one built
from its spec (structprune.arch). It sits above the model registry and the compact layers (whose import
registers their types), so that structprune.arch itself depends on neither."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from structprune.arch import build_module, check_arch, factory_of, stand_in
from structprune.compact import csr_conv, intra_conv, kernel_conv  # noqa: F401  (they register the compact layer types)
from structprune.errors import StructpruneError
from structprune.models import create
from structprune.models.registry import check_size
from structprune.runfiles import ARCH_FILE


def _assemble(arch: dict[str, Any], source: str, stand_ins: bool = False,
              factory: Callable[[], nn.Module] | None = None) -> nn.Module:
    if factory is not None:
        model = factory()
        if not isinstance(model, nn.Module):
            raise StructpruneError(f"the model factory returned {type(model).__name__}, not a torch.nn.Module")
        name = type(model).__name__
    else:
        name = arch["model"]
        try:
            model = create(name, **arch.get("kwargs", {}))
        except StructpruneError as exc:
            raise StructpruneError(f"{source}: {exc}") from None
        declared = arch.get("input_shape")
        if declared is not None and list(factory_of(model)["input_shape"]) != declared:
            raise StructpruneError(f"{source}: input_shape {declared} does not match the model's arguments "
                                   f"({factory_of(model)['input_shape']})")
    for layer, spec in arch["modules"].items():
        try:
            model.get_submodule(layer)
        except AttributeError:
            raise StructpruneError(f"{source}: layer {layer!r} does not exist in {name}") from None
        build = stand_in if stand_ins else build_module
        model.set_submodule(layer, build(spec, f"{source}: {layer}"))
    return model


def rebuild(arch: dict[str, Any], source: str = ARCH_FILE, factory: Callable[[], nn.Module] | None = None) -> nn.Module:
    """Create the network described by `arch` (weights are not loaded). `factory`: a no-argument callable
    building the unpruned network, for networks of the user's own class (arch.json "model": null); by
    default the registered model named in arch.json is created.

    The arch is checked first (sizes are integers in range), then built on PyTorch's meta device (shapes only)
    to refuse, in one line, a network larger than the models' limit or one whose layers do not fit together,
    before any memory is allocated."""
    check_arch(arch, source, user_class=factory is not None)
    probe = check_size(source, lambda: _assemble(arch, source, stand_ins=True, factory=factory))
    shape = arch.get("input_shape") or factory_of(probe)["input_shape"]
    with torch.device("meta"):
        try:
            with torch.no_grad():
                probe.eval()(torch.empty(1, *shape))
        except NotImplementedError:
            pass  # a layer without a meta kernel: the shapes are checked when the network first runs
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StructpruneError(f"{source}: the layers do not fit together ({text})") from None
    try:
        return _assemble(arch, source, factory=factory)
    except RuntimeError as exc:
        raise StructpruneError(f"{source}: bad layer spec ({str(exc).strip().splitlines()[0]})") from None


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> nn.Module:
    """Load every tensor of ``state`` into ``model`` (strictly) and put it in eval mode; a mismatch is one line
    naming ``what`` (e.g. "model.safetensors: does not match arch.json")."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise StructpruneError(f"{what} ({first})") from None
    return model.eval()
