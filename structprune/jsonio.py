"""Atomic JSON and file writes: a reader never sees a half-written file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from structprune.errors import StructpruneError


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON to `path` through a temporary file and a rename."""
    path = Path(path)
    try:
        text = json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n"
    except ValueError:
        raise StructpruneError(f"{path}: refusing to write a non-finite number (NaN or infinity) into JSON") from None
    write_bytes_atomic(path, text.encode())


def usual_permissions(path: str | Path) -> None:
    """Give a file made by mkstemp (private, 0600) the permissions the user's umask asks for."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def write_bytes_atomic(path: str | Path, payload: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        usual_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | Path) -> Any:
    """Read a JSON file, turning a missing or corrupt file into a one-line StructpruneError."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StructpruneError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StructpruneError(f"{path}: not valid JSON ({exc})") from None
