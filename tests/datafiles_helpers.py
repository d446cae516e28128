"""Writers for small dataset files in every supported format (used by the data and CLI tests)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx_set(folder: Path, arrays: dict[str, np.ndarray], gz: bool) -> None:
    """arrays: x_train [N,28,28], y_train, x_test, y_test -> the four standard IDX files."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
    for key, name in names.items():
        payload = idx_bytes(arrays[key])
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
        else:
            (folder / name).write_bytes(payload)


def write_cifar_bins(folder: Path, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> None:
    """x: uint8 [N, 3, 32, 32]; training images are spread over the five data_batch files."""
    folder.mkdir(parents=True, exist_ok=True)

    def records(x, y):
        return np.concatenate([y.astype(np.uint8)[:, None], x.reshape(len(x), -1)], axis=1).tobytes()

    for i, idx in enumerate(np.array_split(np.arange(len(y_train)), 5), start=1):
        (folder / f"data_batch_{i}.bin").write_bytes(records(x_train[idx], y_train[idx]))
    (folder / "test_batch.bin").write_bytes(records(x_test, y_test))


def random_set(rng: np.random.Generator, shape: tuple[int, ...], n_train: int = 30, n_test: int = 10) -> dict[str, np.ndarray]:
    return {
        "x_train": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test).astype(np.uint8),
    }
