"""The model registry: `create(name, num_classes=..., in_channels=..., input_size=...)`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from structprune.arch import FACTORY_ATTR
from structprune.errors import StructpruneError

ModelFactory = Callable[..., nn.Module]

MAX_ELEMENTS = 1 << 30  # parameters and buffers of one network: 4 GiB as float32
LIMITS = {"num_classes": 1 << 20, "in_channels": 1 << 10, "input_size": 1 << 11}  # the factory's own arguments
_REGISTRY: dict[str, ModelFactory] = {}


def register(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering a factory `fn(num_classes, in_channels, input_size, **kw) -> nn.Module`.

    Users bring their own networks the same way; a registered network can be saved and rebuilt.
    """

    def wrap(fn: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return wrap


def available() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def create(
    name: str,
    num_classes: int | None = None,
    in_channels: int | None = None,
    input_size: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Create a registered model; arguments left as None take the model's own defaults.

    The factory call is recorded on the model, so arch.json can rebuild it.
    """
    if name not in _REGISTRY:
        raise StructpruneError(f"unknown model {name!r}; available: {', '.join(available())}")
    factory = _REGISTRY[name]
    defaults = {k: p.default for k, p in inspect.signature(factory).parameters.items()
                if p.default is not inspect.Parameter.empty}
    given = {"num_classes": num_classes, "in_channels": in_channels, "input_size": input_size}
    args = {k: (v if v is not None else defaults.get(k)) for k, v in given.items()}
    missing = [k for k, v in args.items() if v is None]
    if missing:
        raise StructpruneError(f"model {name!r} needs {', '.join(missing)}")
    for key, value in args.items():
        high = LIMITS[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise StructpruneError(f"model {name!r}: {key} must be an integer in 1..{high} (got {value!r})")
    check_size(f"model {name!r}", lambda: factory(**args, **kwargs))
    try:
        model = factory(**args, **kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise StructpruneError(f"model {name!r}: bad arguments ({_first_line(exc)})") from None
    setattr(
        model,
        FACTORY_ATTR,
        {
            "name": name,
            "kwargs": {**args, **kwargs},
            "input_shape": [args["in_channels"], args["input_size"], args["input_size"]],
        },
    )
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_size(what: str, build: Callable[[], nn.Module]) -> nn.Module:
    """Build a network on PyTorch's meta device (shapes only, no memory) and refuse it in one line when its
    arguments are bad or it would hold more than MAX_ELEMENTS parameters and buffers. Returns the meta network."""
    try:
        with torch.device("meta"):
            probe = build()
    except StructpruneError:
        raise
    except (TypeError, ValueError, RuntimeError, OverflowError, ZeroDivisionError) as exc:
        raise StructpruneError(f"{what}: bad arguments ({_first_line(exc)})") from None
    elements = sum(t.numel() for t in (*probe.parameters(), *probe.buffers()))
    if elements > MAX_ELEMENTS:
        raise StructpruneError(f"{what}: {elements:,} parameters and buffers, more than the {MAX_ELEMENTS:,} "
                               "allowed (a size in its arguments or arch.json is far too large)")
    return probe
