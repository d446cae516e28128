"""The model registry: `create(name, num_classes=..., in_channels=..., input_size=...)`."""

from __future__ import annotations

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
    name: str, num_classes: int = 10, in_channels: int = 3, input_size: int = 32, **kwargs: Any
) -> nn.Module:
    """Create a registered model. The factory call is recorded on the model for arch.json."""
    if name not in _REGISTRY:
        raise StructpruneError(f"unknown model {name!r}; available: {', '.join(available())}")
    model = _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, input_size=input_size, **kwargs)
    setattr(
        model,
        FACTORY_ATTR,
        {
            "name": name,
            "kwargs": {"num_classes": num_classes, "in_channels": in_channels, "input_size": input_size,
                       **kwargs},
            "input_shape": [in_channels, input_size, input_size],
        },
    )
    return model
