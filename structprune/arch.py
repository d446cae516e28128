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
from structprune.runfiles import ARCH_FILE

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
    except StructpruneError as exc:
        raise StructpruneError(f"{where}: {exc}") from None
    except (TypeError, ValueError, RuntimeError, IndexError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StructpruneError(f"{where}: bad layer spec ({text})") from None


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


SIZE_KEYS = ("in_channels", "out_channels", "in_features", "out_features", "num_features", "groups")
PAIR_KEYS = ("kernel_size", "stride", "dilation")
BOOL_KEYS = ("bias", "affine", "track_running_stats")
MAX_SIZE = 1 << 24  # any one size of a layer spec (channels, features, kernel, stride, padding)


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= MAX_SIZE


def check_spec(spec: Any, where: str) -> None:
    """A layer spec's sizes are integers in range and its flags booleans (the layer checks the rest)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise StructpruneError(f"{where}: a layer spec must be an object with a \"type\" name")
    for key in SIZE_KEYS:
        if key in spec and not _is_int(spec[key], 1):
            raise StructpruneError(f"{where}: {key} must be an integer in 1..{MAX_SIZE} (got {spec[key]!r})")
    for key in PAIR_KEYS:
        value = spec.get(key)
        if value is not None and not (isinstance(value, list) and len(value) == 2 and all(_is_int(v, 1) for v in value)):
            raise StructpruneError(f"{where}: {key} must be two integers in 1..{MAX_SIZE} (got {value!r})")
    padding = spec.get("padding")
    if padding is not None and padding not in ("same", "valid") and not (
            isinstance(padding, list) and len(padding) == 2 and all(_is_int(v, 0) for v in padding)):
        raise StructpruneError(f"{where}: padding must be two integers in 0..{MAX_SIZE}, 'same' or 'valid' "
                               f"(got {padding!r})")
    for key in BOOL_KEYS:
        if key in spec and not isinstance(spec[key], bool):
            raise StructpruneError(f"{where}: {key} must be true or false (got {spec[key]!r})")
    for key in ("eps", "momentum"):
        value = spec.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not 0 <= value < float("inf")):
            raise StructpruneError(f"{where}: {key} must be a finite number >= 0 (got {value!r})")


def check_arch(arch: Any, source: str = ARCH_FILE, user_class: bool = False) -> None:
    """The shape of an arch.json: format, model name, kwargs, input shape, and a valid spec per layer."""
    if not isinstance(arch, dict) or arch.get("format") != ARCH_FORMAT:
        raise StructpruneError(f"{source}: not a structprune arch file (format {ARCH_FORMAT!r} expected)")
    for key in ("model", "modules"):
        if key not in arch:
            raise StructpruneError(f"{source}: missing field {key!r}")
    if arch["model"] is None and not user_class:
        raise StructpruneError(f"{source}: the network is of the user's class {arch.get('class', '?')}, not a registered "
                               "model; rebuild it in Python with structprune.load(DIR, model_factory=...)")
    if arch["model"] is not None and not isinstance(arch["model"], str):
        raise StructpruneError(f"{source}: model must be a registered model's name (got {arch['model']!r})")
    if not isinstance(arch.get("kwargs", {}), dict):
        raise StructpruneError(f"{source}: kwargs must be an object (got {type(arch['kwargs']).__name__})")
    shape = arch.get("input_shape")
    if shape is not None and not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(v, 1) for v in shape)):
        raise StructpruneError(f"{source}: input_shape must be three positive integers [C, H, W] (got {shape!r})")
    modules = arch["modules"]
    if not isinstance(modules, dict):
        raise StructpruneError(f"{source}: modules must be an object mapping layer names to specs "
                               f"(got {type(modules).__name__})")
    for name, spec in modules.items():
        check_spec(spec, f"{source}: {name}")


def stand_in(spec: dict[str, Any], where: str) -> nn.Module:
    """For the size check on the meta device: a compact convolution's dense equivalent (same maps, kernel and
    geometry; never fewer weights), since compact layers compute index tables from their spec's data."""
    keys = ("in_channels", "out_channels", "kernel_size")
    if spec.get("type") not in _CUSTOM_TYPES or not all(k in spec for k in keys):
        return build_module(spec, where)
    dense = {"type": "Conv2d", "stride": [1, 1], "padding": [0, 0], "dilation": [1, 1], "groups": 1, "bias": True,
             **{k: spec[k] for k in (*keys, "stride", "padding", "dilation", "groups", "bias") if k in spec}}
    return build_module(dense, where)


def input_shape_of(model: nn.Module) -> tuple[int, ...]:
    """(C, H, W) of one input image of a registered model."""
    return tuple(factory_of(model)["input_shape"])


def example_input(model: nn.Module, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, *input_shape_of(model))
