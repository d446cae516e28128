"""arch.json: a network described as (registry name, kwargs) plus the spec of every layer.

Rebuilding creates the registered network, then replaces each layer by one built from its spec, so
pruned shapes and compact layers come back without unpickling anything:

    {"format": "structprune-arch/1", "model": "paper-mnist",
     "kwargs": {"num_classes": 10, "in_channels": 1, "input_size": 28},
     "input_shape": [1, 28, 28],
     "modules": {"features.0": {"type": "Conv2d", "in_channels": 1, "out_channels": 20, ...}, ...}}

A network of the user's own class (not in the registry) is described with "model": null and its class
name; rebuilding it takes the user's factory of the unpruned network (`structprune.rebuild.rebuild(arch,
factory=...)`, above the registry and the compact layers).

Built-in specs cover Conv2d, BatchNorm2d and Linear; compact layers register theirs with
`@register_module_type`, providing `to_spec()` and a classmethod `from_spec(spec)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from structprune.errors import StructpruneError

ARCH_FORMAT = "structprune-arch/1"
FACTORY_ATTR = "structprune_factory"

_CUSTOM_TYPES: dict[str, type[nn.Module]] = {}


def register_module_type(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: make a custom layer describable in arch.json (needs to_spec/from_spec)."""
    if not (hasattr(cls, "to_spec") and hasattr(cls, "from_spec")):
        raise TypeError(f"{cls.__name__} needs to_spec() and from_spec()")
    _CUSTOM_TYPES[cls.__name__] = cls
    return cls


def _conv_spec(m: nn.Conv2d) -> dict[str, Any]:
    return {
        "type": "Conv2d",
        "in_channels": m.in_channels,
        "out_channels": m.out_channels,
        "kernel_size": list(m.kernel_size),
        "stride": list(m.stride),
        "padding": list(m.padding) if not isinstance(m.padding, str) else m.padding,
        "dilation": list(m.dilation),
        "groups": m.groups,
        "bias": m.bias is not None,
    }


def _bn_spec(m: nn.BatchNorm2d) -> dict[str, Any]:
    return {
        "type": "BatchNorm2d",
        "num_features": m.num_features,
        "eps": m.eps,
        "momentum": m.momentum,
        "affine": m.affine,
        "track_running_stats": m.track_running_stats,
    }


def _linear_spec(m: nn.Linear) -> dict[str, Any]:
    return {"type": "Linear", "in_features": m.in_features, "out_features": m.out_features,
            "bias": m.bias is not None}


def _build_builtin(spec: dict[str, Any]) -> nn.Module:
    kind = spec["type"]
    args = {k: v for k, v in spec.items() if k != "type"}
    if kind == "Conv2d":
        for key in ("kernel_size", "stride", "dilation"):
            args[key] = tuple(args[key])
        if isinstance(args["padding"], list):
            args["padding"] = tuple(args["padding"])
        return nn.Conv2d(**args)
    if kind == "BatchNorm2d":
        return nn.BatchNorm2d(**args)
    if kind == "Linear":
        return nn.Linear(**args)
    raise KeyError(kind)


_BUILTIN_SPECS: dict[type[nn.Module], Callable[[Any], dict[str, Any]]] = {
    nn.Conv2d: _conv_spec,
    nn.BatchNorm2d: _bn_spec,
    nn.Linear: _linear_spec,
}


def module_spec(module: nn.Module) -> dict[str, Any] | None:
    """The spec of one layer, or None for layers without shape-carrying parameters."""
    if type(module).__name__ in _CUSTOM_TYPES:
        return {"type": type(module).__name__, **module.to_spec()}
    fn = _BUILTIN_SPECS.get(type(module))
    return fn(module) if fn else None


def build_module(spec: dict[str, Any], where: str = "") -> nn.Module:
    """Build one layer from its spec."""
    kind = spec.get("type")
    try:
        if kind in _CUSTOM_TYPES:
            return _CUSTOM_TYPES[kind].from_spec({k: v for k, v in spec.items() if k != "type"})
        return _build_builtin(spec)
    except KeyError:
        raise StructpruneError(f"{where}: unknown or incomplete layer spec {kind!r}") from None
    except (TypeError, ValueError) as exc:
        raise StructpruneError(f"{where}: bad layer spec ({exc})") from None


def factory_of(model: nn.Module) -> dict[str, Any]:
    """The registry name, kwargs and input shape a model was created with."""
    info = getattr(model, FACTORY_ATTR, None)
    if info is None:
        raise StructpruneError(
            "this model was not created by structprune.models.create(); register its factory with "
            "structprune.models.register() so its run folder can be rebuilt"
        )
    return info


def layer_specs(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The spec of every shape-carrying layer of `model`, by name (a custom layer whole, not its children)."""
    modules: dict[str, dict[str, Any]] = {}
    skip: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(prefix + ".") for prefix in skip):
            continue
        spec = module_spec(module)
        if spec is not None:
            modules[name] = spec
            if spec["type"] in _CUSTOM_TYPES:
                skip.append(name)
    return modules


def describe(model: nn.Module) -> dict[str, Any]:
    """The arch.json of a model: factory, input shape and the spec of each layer (custom layers whole)."""
    info = factory_of(model)
    return {
        "format": ARCH_FORMAT,
        "model": info["name"],
        "kwargs": info["kwargs"],
        "input_shape": list(info["input_shape"]),
        "modules": layer_specs(model),
    }


def describe_unregistered(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """The arch.json of a network of the user's own class: no factory is recorded ("model": null), only its
    class name (for messages) and layer specs; rebuilding it needs the user's factory (structprune.rebuild, `factory=`)."""
    cls = type(model)
    return {
        "format": ARCH_FORMAT,
        "model": None,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "kwargs": {},
        "input_shape": [int(v) for v in input_shape],
        "modules": layer_specs(model),
    }


def input_shape_of(model: nn.Module) -> tuple[int, ...]:
    """(C, H, W) of one input image of a registered model."""
    return tuple(factory_of(model)["input_shape"])


def example_input(model: nn.Module, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, *input_shape_of(model))
