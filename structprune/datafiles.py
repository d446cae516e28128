"""Readers for dataset files on disk: IDX (MNIST, Fashion-MNIST; gzipped or not), CIFAR-10 binary
batches, and .npz archives. Each returns raw uint8 arrays; a missing, truncated or malformed file is a
one-line StructpruneError. Nothing is unpickled (the pickled CIFAR-10 'python version' is not read).
"""

from __future__ import annotations

import gzip
import zipfile
import zlib
from pathlib import Path

import numpy as np

from structprune.errors import StructpruneError

IDX_UBYTE = 0x08
CIFAR_RECORD = 1 + 3 * 32 * 32  # label byte, then 1024 red, 1024 green, 1024 blue pixels


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise StructpruneError(f"{path}: cannot read ({exc})") from None


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file of unsigned bytes (MNIST format): magic 0x0000 08 NDIM, NDIM big-endian int32 sizes, data."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise StructpruneError(f"{path}: not an IDX file (bad magic number)")
    if raw[2] != IDX_UBYTE:
        raise StructpruneError(f"{path}: IDX element type 0x{raw[2]:02x} is not supported (unsigned bytes expected)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise StructpruneError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    expected = int(np.prod(dims)) if dims else 0
    if len(raw) - header != expected:
        raise StructpruneError(f"{path}: truncated or oversized IDX file (header says {dims} = {expected} bytes, "
                               f"found {len(raw) - header})")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def read_cifar_bin(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch -> (images uint8 [N, 3, 32, 32], labels uint8 [N])."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) == 0 or len(raw) % CIFAR_RECORD:
        raise StructpruneError(f"{path}: truncated CIFAR-10 binary batch ({len(raw)} bytes is not a multiple of "
                               f"{CIFAR_RECORD})")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR_RECORD)  # [N, 3073]
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), records[:, 0].copy()


def read_npz(path: str | Path, keys: tuple[str, ...] = ("x_train", "y_train", "x_test", "y_test")) -> tuple[np.ndarray, ...]:
    """The named arrays of an .npz archive (loaded without pickle)."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise StructpruneError(f"{path}: corrupt or truncated .npz file (not a zip archive of .npy arrays)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise StructpruneError(f"{path}: missing array(s) {', '.join(missing)} (expected {', '.join(keys)})")
            return tuple(np.asarray(npz[k]) for k in keys)
    except StructpruneError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise StructpruneError(f"{path}: corrupt or truncated .npz file ({exc})") from None
