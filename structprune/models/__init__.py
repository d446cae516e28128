"""Model zoo and registry. `create(name, num_classes=..., in_channels=..., input_size=...)`."""

from structprune.models import paper  # noqa: F401  (registers the paper networks)
from structprune.models.registry import available, create, register

__all__ = ["available", "create", "register"]
