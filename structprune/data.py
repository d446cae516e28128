"""Datasets as normalised tensors, split into train / validation / test.

(Minimal first version: digits and .npz files. The issue-2 work extends it with IDX and CIFAR binary
loaders, environment-variable lookup and augmentation.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from structprune.errors import StructpruneError

DATA_DIR_ENV = "STRUCTPRUNE_DATA"
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")


@dataclass
class Split:
    """Images as float [N, C, H, W] (normalised) and labels as int64 [N]."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, n: int) -> Split:
        return Split(self.x[:n], self.y[:n])


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    in_channels: int
    input_size: int
    augment: bool = False  # random crop with padding + horizontal flip during training


def _split_off_validation(x: torch.Tensor, y: torch.Tensor, val_size: int, seed: int) -> tuple[Split, Split]:
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    val_idx, train_idx = order[:val_size], order[val_size:]
    return Split(x[train_idx], y[train_idx]), Split(x[val_idx], y[val_idx])


def _normalise(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).float()
    if x.ndim == 3:
        x = x.unsqueeze(1)  # [N, H, W] -> [N, 1, H, W]
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x - m) / s


def _digits() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32) / 16.0  # [1797, 8, 8] in [0, 1]
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    return x[:1497], y[:1497], x[1497:], y[1497:]


def data_dir(explicit: str | Path | None) -> Path:
    if explicit is not None:
        return Path(explicit)
    return Path(os.environ.get(DATA_DIR_ENV, "data"))


def load_dataset(name: str, data_dir_arg: str | Path | None = None, val_size: int | None = None, seed: int = 0) -> Dataset:
    """Load `digits` (embedded), `mnist` or `cifar10` (from DIR/NAME.npz)."""
    if name == "digits":
        xtr, ytr, xte, yte = _digits()
        mean, std, size, channels = (0.5,), (0.5,), 8, 1
        xtr_t, xte_t = _normalise(xtr * 1.0, (0.0,), (1.0,)), _normalise(xte * 1.0, (0.0,), (1.0,))
        xtr_t, xte_t = (xtr_t - mean[0]) / std[0], (xte_t - mean[0]) / std[0]
        default_val = 200
    elif name in ("mnist", "cifar10"):
        path = data_dir(data_dir_arg) / f"{name}.npz"
        if not path.exists():
            raise StructpruneError(f"dataset {name!r} not found: looked for {path}")
        with np.load(path, allow_pickle=False) as npz:
            xtr, ytr, xte, yte = (npz[k] for k in ("x_train", "y_train", "x_test", "y_test"))
        if name == "mnist":
            mean, std, size, channels = (0.1307 * 255,), (0.3081 * 255,), 28, 1
            xtr_t, xte_t = _normalise(xtr, mean, std), _normalise(xte, mean, std)
            default_val = 5000
        else:
            mean = tuple(v * 255 for v in (0.4914, 0.4822, 0.4465))
            std = tuple(v * 255 for v in (0.2470, 0.2435, 0.2616))
            size, channels = 32, 3
            xtr_t = _normalise(xtr.transpose(0, 3, 1, 2), mean, std)
            xte_t = _normalise(xte.transpose(0, 3, 1, 2), mean, std)
            default_val = 5000
    else:
        raise StructpruneError(f"unknown dataset {name!r}; available: digits, mnist, cifar10")
    ytr_t, yte_t = torch.from_numpy(ytr.astype(np.int64)), torch.from_numpy(yte.astype(np.int64))
    train, val = _split_off_validation(xtr_t, ytr_t, val_size if val_size is not None else default_val, seed)
    return Dataset(name, train, val, Split(xte_t, yte_t), 10, channels, size, augment=name == "cifar10")


def batches(split: Split, batch_size: int, shuffle: bool = False, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of (x [B, C, H, W], y [B])."""
    n = len(split)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield split.x[idx], split.y[idx]
