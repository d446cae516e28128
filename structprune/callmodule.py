"""Packages that are also API calls: `structprune.compact(model, masks)` and `structprune.search(model, ...)` are
the subpackages structprune.compact and structprune.search, called. Calling one runs the function of the same
name in structprune.api; everything else about the package is unchanged. (Python supports such module
classes: `sys.modules[name].__class__ = subclass of ModuleType`.)"""

from __future__ import annotations

import sys
import types
from typing import Any


class ApiModule(types.ModuleType):
    """A package whose call is `structprune.api.<its last name>`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from structprune import api

        return getattr(api, self.__name__.rsplit(".", 1)[-1])(*args, **kwargs)


def make_callable(module_name: str) -> None:
    """Called at the end of a package's __init__: calls of the package run structprune.api's function."""
    sys.modules[module_name].__class__ = ApiModule
