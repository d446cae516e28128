"""Datasets as normalised tensors, split into train / validation / test.

  digits         scikit-learn's bundled 8×8 digits (always available; the demo's data)
  mnist          28×28 grey: DIR/mnist.npz, or the four IDX files (.gz or not) in DIR/mnist/ or DIR
  fashion-mnist  28×28 grey: DIR/fashion-mnist.npz, or the four IDX files in DIR/fashion-mnist/ or DIR
  cifar10        32×32 RGB: DIR/cifar10.npz (NHWC uint8), or the binary batches data_batch_1..5.bin and
                 test_batch.bin in DIR/cifar-10-batches-bin/, DIR/cifar10/ or DIR
  folder:PATH    your own images: one sub-folder of PATH per class, PNG or JPEG (structprune.imagefolder);
                 `image_size` (train --image-size) resizes them, recorded as folder:/abs/PATH@N

DIR is --data-dir, else $STRUCTPRUNE_DATA, else ./data. .npz files hold x_train, y_train, x_test, y_test.
The validation split is a seeded random subset of the training set (the test set is only reported).
Images are scaled to [0, 1] and normalised per channel; CIFAR-10 is marked for crop+flip augmentation.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from structprune.datafiles import read_cifar_bin, read_idx, read_npz
from structprune.errors import StructpruneError
from structprune.imagefolder import (
    FolderSource,
    channel_stats,
    is_folder_dataset,
    normalise,
    parse,
    read_folder,
)

log = logging.getLogger(__name__)

DATA_DIR_ENV = "STRUCTPRUNE_DATA"
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "folder:PATH")

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_FILES = (*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin")


@dataclass
class Split:
    """Images as float [N, C, H, W] (normalised) and labels as int64 [N]."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, n: int) -> Split:
        return Split(self.x[:n], self.y[:n])

    def sample(self, n: int | None, seed: int) -> Split:
        """A seeded random `n` of the images (the split itself when n is None or not smaller)."""
        if n is None or n >= len(self):
            return self
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return Split(self.x[order], self.y[order])


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
    classes: tuple[str, ...] = ()  # class names, where the dataset has them (image folders)

    def fingerprint(self) -> str:
        """A hash of every image and label of the three splits: a resumed run checks that its data did not change."""
        h = hashlib.sha256(self.name.encode())
        for split in (self.train, self.val, self.test):
            for tensor in (split.x, split.y):
                h.update(str(tuple(tensor.shape)).encode())
                h.update(tensor.contiguous().numpy().tobytes())
        return h.hexdigest()


@dataclass(frozen=True)
class _Spec:
    shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]  # per channel, on the [0, 1] scale
    std: tuple[float, ...]
    augment: bool = False
    num_classes: int = 10
    max_value: float = 255.0  # pixel value that maps to 1.0


SPECS = {
    "digits": _Spec((1, 8, 8), (0.5,), (0.5,), max_value=16.0),
    "mnist": _Spec((1, 28, 28), (0.1307,), (0.3081,)),
    "fashion-mnist": _Spec((1, 28, 28), (0.2860,), (0.3530,)),
    "cifar10": _Spec((3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), augment=True),
}
DEFAULT_VAL_MAX = 5000  # the default validation split: this many, or a tenth of a smaller training set


def default_val_size(train_images: int) -> int:
    """DEFAULT_VAL_MAX images when that is at most a fifth of the training set (MNIST, CIFAR-10: enough to compare
    methods), else a tenth of it (at least 1)."""
    return DEFAULT_VAL_MAX if train_images >= 5 * DEFAULT_VAL_MAX else max(1, train_images // 10)


def dataset_shape(name: str) -> tuple[int, int, int, int]:
    """(classes, channels, height, width) of a dataset's images, without loading it."""
    if name not in SPECS:
        raise StructpruneError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    spec = SPECS[name]
    return (spec.num_classes, *spec.shape)


def data_dir(explicit: str | Path | None) -> Path:
    """--data-dir when given, else $STRUCTPRUNE_DATA, else ./data."""
    if explicit is not None:
        return Path(explicit)
    return Path(os.environ.get(DATA_DIR_ENV, "data"))


def _digits() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.uint8)  # [1797, 8, 8], grey levels 0..16
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    return x[:1497], y[:1497], x[1497:], y[1497:]


def _find_file(folders: list[Path], names: tuple[str, ...]) -> dict[str, Path] | None:
    """The first folder holding every name (each possibly gzipped): name -> path."""
    for folder in folders:
        found = {}
        for name in names:
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    found[name] = candidate
                    break
        if len(found) == len(names):
            return found
    return None


def _load_raw(name: str, root: Path) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test) as stored, from the first format found under `root`."""
    npz = root / f"{name}.npz"
    if npz.is_file():
        return read_npz(npz)
    if name in ("mnist", "fashion-mnist"):
        files = _find_file([root / name, root / name.replace("-", "_"), root], IDX_FILES)
        if files:
            return tuple(read_idx(files[n]) for n in IDX_FILES)
        wanted = ", ".join(IDX_FILES)
        where = f"{root / name} or {root}"
    else:
        files = _find_file([root / "cifar-10-batches-bin", root / "cifar10", root], CIFAR_FILES)
        if files:
            parts = [read_cifar_bin(files[n]) for n in CIFAR_FILES]
            x_train = np.concatenate([p[0] for p in parts[:5]])
            y_train = np.concatenate([p[1] for p in parts[:5]])
            return x_train, y_train, parts[5][0], parts[5][1]
        wanted = ", ".join(CIFAR_FILES)
        where = f"{root / 'cifar-10-batches-bin'}, {root / 'cifar10'} or {root}"
    raise StructpruneError(
        f"dataset {name!r} not found: looked for {npz} and for {wanted} (each may end in .gz) in {where}; "
        f"pass --data-dir or set ${DATA_DIR_ENV}"
    )


def _to_nchw(x: np.ndarray, spec: _Spec, where: str) -> np.ndarray:
    """Accept [N, H, W] (grey), [N, C, H, W] or [N, H, W, C]; return [N, C, H, W] uint8."""
    c, h, w = spec.shape
    if x.ndim == 3 and c == 1 and x.shape[1:] == (h, w):
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1:] == (h, w, c) and x.shape[1:] != (c, h, w):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1:] != (c, h, w):
        raise StructpruneError(f"{where}: images of shape {tuple(x.shape[1:])}, expected {c}×{h}×{w} (or {h}×{w}×{c})")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.integer) or x.min() < 0 or x.max() > 255:
            raise StructpruneError(f"{where}: images must be 8-bit pixel values 0..255 (found dtype {x.dtype})")
        x = x.astype(np.uint8)
    return x


def _check_labels(y: np.ndarray, n_images: int, num_classes: int, where: str) -> np.ndarray:
    y = np.asarray(y).reshape(-1) if np.asarray(y).ndim == 2 and np.asarray(y).shape[1] == 1 else np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise StructpruneError(f"{where}: labels must be a 1-D array of integers (found {y.dtype} {y.shape})")
    if len(y) != n_images:
        raise StructpruneError(f"{where}: {n_images} images but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise StructpruneError(f"{where}: labels outside the class range 0..{num_classes - 1} "
                               f"(found {int(y.min())}..{int(y.max())})")
    return y.astype(np.int64)


def _normalise(images: np.ndarray, spec: _Spec) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float32 [N, C, H, W], scaled to [0, 1] and standardised per channel."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(spec.max_value)
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return (x - mean) / std


def _split_off_validation(x: torch.Tensor, y: torch.Tensor, val_size: int, seed: int) -> tuple[Split, Split]:
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    val_idx, train_idx = order[:val_size], order[val_size:]
    return Split(x[train_idx], y[train_idx]), Split(x[val_idx], y[val_idx])


def load_dataset(name: str, data_dir_arg: str | Path | None = None, val_size: int | None = None, seed: int = 0,
                 image_size: int | None = None) -> Dataset:
    """Load a dataset by name (see the module docstring); `val_size` training images (default: a tenth, at most
    5,000) become the validation split, chosen with `seed`. `image_size`: folder datasets only (resize to N×N)."""
    if is_folder_dataset(name):
        return _load_folder(parse(name, image_size), val_size, seed)
    if name not in SPECS:
        raise StructpruneError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    if image_size is not None:
        raise StructpruneError(f"an image size applies to folder: datasets only, not to {name!r}")
    spec = SPECS[name]
    if name == "digits":
        raw, where = _digits(), "digits"
    else:
        root = data_dir(data_dir_arg)
        raw, where = _load_raw(name, root), f"dataset {name!r} in {root}"
    x_train, y_train, x_test, y_test = raw
    x_train, x_test = _to_nchw(x_train, spec, f"{where} (train)"), _to_nchw(x_test, spec, f"{where} (test)")
    y_train = _check_labels(y_train, len(x_train), spec.num_classes, f"{where} (train labels)")
    y_test = _check_labels(y_test, len(x_test), spec.num_classes, f"{where} (test labels)")
    if len(y_train) < 2 or len(y_test) == 0:
        raise StructpruneError(f"{where}: {len(y_train)} training and {len(y_test)} test images; at least 2 training "
                               "images (one kept for validation) and 1 test image are needed")
    val = _choose_val_size(val_size, len(y_train))
    train, val_split = _split_off_validation(_normalise(x_train, spec), torch.from_numpy(y_train), val, seed)
    test = Split(_normalise(x_test, spec), torch.from_numpy(y_test))
    c, h, _ = spec.shape
    return Dataset(name, train, val_split, test, spec.num_classes, c, h, augment=spec.augment)


def _choose_val_size(val_size: int | None, train_images: int) -> int:
    """The validation split's size: as given (1 to train_images - 1), or by default a tenth, at most 5,000."""
    if val_size is None:
        val = default_val_size(train_images)
        log.info("validation split: %d of the %d training images (%d, or a tenth of a smaller set; --val-size sets it)",
                 val, train_images, DEFAULT_VAL_MAX)
        return val
    if isinstance(val_size, bool) or not isinstance(val_size, int) or not 1 <= val_size < train_images:
        raise StructpruneError(f"validation size {val_size!r} must be between 1 and {train_images - 1} (training images)")
    return val_size


def _load_folder(source: FolderSource, val_size: int | None, seed: int) -> Dataset:
    """An image folder (structprune.imagefolder), normalised with its training images' per-channel statistics."""
    images = read_folder(source)
    mean, std = channel_stats(images.train_x)
    val = _choose_val_size(val_size, len(images.train_y))
    train, val_split = _split_off_validation(normalise(images.train_x, mean, std), images.train_y, val, seed)
    test = Split(normalise(images.test_x, mean, std), images.test_y)
    name = FolderSource(source.path, images.size).name
    return Dataset(name, train, val_split, test, len(images.classes), images.train_x.shape[1], images.size,
                   classes=images.classes)


def batches(split: Split, batch_size: int, shuffle: bool = False, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of (x [B, C, H, W], y [B]); with `shuffle`, in an order fixed by `seed`."""
    n = len(split)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield split.x[idx], split.y[idx]
