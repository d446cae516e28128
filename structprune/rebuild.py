"""arch.json back into a network: the registered model (or the user's factory), each layer replaced by one built
from its spec (structprune.arch). It sits above the model registry and the compact layers (whose import
registers their types), so that structprune.arch itself depends on neither."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from structprune.arch import ARCH_FORMAT, build_module
from structprune.compact import csr_conv, intra_conv, kernel_conv  # noqa: F401  (they register the compact layer types)
from structprune.errors import StructpruneError
from structprune.models import create


def rebuild(arch: dict[str, Any], source: str = "arch.json", factory: Callable[[], nn.Module] | None = None) -> nn.Module:
    """Create the network described by `arch` (weights are not loaded). `factory`: a no-argument callable
    building the unpruned network, for networks of the user's own class (arch.json "model": null); by
    default the registered model named in arch.json is created."""
    if not isinstance(arch, dict) or arch.get("format") != ARCH_FORMAT:
        raise StructpruneError(f"{source}: not a structprune arch file (format {ARCH_FORMAT!r} expected)")
    if "modules" not in arch or not isinstance(arch["modules"], dict):
        raise StructpruneError(f"{source}: missing field 'modules'")
    name = arch.get("model")
    if factory is not None:
        model = factory()
        if not isinstance(model, nn.Module):
            raise StructpruneError(f"the model factory returned {type(model).__name__}, not a torch.nn.Module")
        name = type(model).__name__
    elif "model" not in arch:
        raise StructpruneError(f"{source}: missing field 'model'")
    elif name is None:
        raise StructpruneError(f"{source}: the network is of the user's class {arch.get('class', '?')}, not a registered "
                               "model; rebuild it in Python with structprune.load(DIR, model_factory=...)")
    else:
        model = create(name, **arch.get("kwargs", {}))
    for layer, spec in arch["modules"].items():
        try:
            model.get_submodule(layer)
        except AttributeError:
            raise StructpruneError(f"{source}: layer {layer!r} does not exist in {name}") from None
        model.set_submodule(layer, build_module(spec, where=f"{source}: {layer}"))
    return model
