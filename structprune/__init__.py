"""structprune: structured pruning of convolutional networks (Anwar, Hwang & Sung, 2017).

The Python API (see structprune.api): `structprune.prune`, `search`, `compact`, `apply_masks`, `save`, `load`,
`load_masks`, `mcr_scorer`, `prune_to_target` (structprune.api_target), and the value types `NetworkMask`,
`KernelForm`, `IntraPattern`, `Method`. It is imported on first use, so `import structprune` stays light;
`compact` and `search` are the subpackages of those names, which run the API call when called (structprune.callmodule).
"""

from __future__ import annotations

import importlib
from typing import Any

from structprune.errors import StructpruneError

__version__ = "0.1.0"

_PACKAGES = ("compact", "search")  # callable subpackages
_TARGET_API = ("prune_to_target",)
_API = ("prune", "apply_masks", "save", "load", "load_masks", "mcr_scorer", "NetworkMask", "KernelForm", "IntraPattern",
        "Method")
__all__ = ["StructpruneError", "__version__", *_PACKAGES, *_API, *_TARGET_API]


def __getattr__(name: str) -> Any:
    if name in _PACKAGES:
        return importlib.import_module(f"structprune.{name}")
    if name in _TARGET_API:
        from structprune import api_target

        return getattr(api_target, name)
    if name in _API:
        from structprune import api

        return getattr(api, name)
    raise AttributeError(f"module 'structprune' has no attribute {name!r}")
