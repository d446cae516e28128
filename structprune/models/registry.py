"""The model registry: `create(name, num_classes=..., in_channels=..., input_size=...)`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from structprune.arch import FACTORY_ATTR
from structprune.errors import StructpruneError

ModelFactory = Callable[..., nn.Module]
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
    try:
        model = factory(**args, **kwargs)
    except TypeError as exc:
        raise StructpruneError(f"model {name!r}: bad arguments ({exc})") from None
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
