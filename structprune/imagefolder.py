"""A dataset from a folder of images: `folder:PATH`, one sub-folder per class (PNG or JPEG, read with Pillow).

    PATH/cat/001.png, PATH/cat/002.jpg, ..., PATH/dog/...      classes: the sub-folder names, sorted
    PATH/train/<class>/..., PATH/test/<class>/...              the same, with a test set of your own

Without train/ and test/ sub-folders, a fifth of each class's images (at least one, chosen with a fixed seed,
so every run sees the same test set) becomes the test set. The validation split is a seeded random subset of
the rest (default: a tenth of it). Images are resized to N×N (default: the larger side of the first image);
they are greyscale when every image is (Pillow modes 1, L, LA, I, I;16, F), else RGB (alpha dropped), and are
normalised per channel with the mean and standard deviation of the training images (validation included,
test excluded). Files with other suffixes and hidden files are ignored.

The dataset's name records the folder as an absolute path and the size: `folder:/abs/PATH@N`, so a run's
config.json rebuilds exactly the same dataset; `folder:PATH@N` may also be given directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from structprune.errors import StructpruneError

PREFIX = "folder:"
SUFFIXES = (".png", ".jpg", ".jpeg")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
TEST_FRACTION = 0.2
TEST_SEED = 0  # the test set does not move with the training seed


@dataclass(frozen=True)
class FolderSource:
    """A parsed `folder:PATH[@N]`."""

    path: Path
    size: int | None = None

    @property
    def name(self) -> str:
        """The canonical name: absolute path, and the size when known."""
        return f"{PREFIX}{self.path}" + (f"@{self.size}" if self.size is not None else "")


def is_folder_dataset(name: str) -> bool:
    return name.startswith(PREFIX)


def parse(name: str, image_size: int | None = None) -> FolderSource:
    """`folder:PATH` or `folder:PATH@N` (N: image size), plus an explicit `image_size`."""
    rest = name[len(PREFIX):]
    match = re.fullmatch(r"(.+)@(\d+)", rest)
    size = None
    if match and not Path(rest).is_dir():
        rest, size = match.group(1), int(match.group(2))
    if not rest:
        raise StructpruneError("folder: needs a path, e.g. --data folder:photos")
    if image_size is not None and size is not None and image_size != size:
        raise StructpruneError(f"image size {image_size} contradicts the size in {name!r}")
    size = image_size if image_size is not None else size
    if size is not None and size < 1:
        raise StructpruneError(f"image size {size} must be at least 1")
    return FolderSource(Path(rest).expanduser().resolve(), size)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SUFFIXES)


def class_folders(root: Path) -> dict[str, list[Path]]:
    """Class name -> its image files, from the sub-folders of `root` (sorted by name)."""
    if not root.is_dir():
        raise StructpruneError(f"{root}: no such folder")
    subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = {p.name: _images_in(p) for p in subs}
    if not any(classes.values()):
        loose = len(_images_in(root))
        hint = f" ({loose} images lie directly in it)" if loose else ""
        raise StructpruneError(f"{root}: no class sub-folders with PNG or JPEG images{hint}; expected "
                               f"{root}/<class>/<image>.png, one sub-folder per class")
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise StructpruneError(f"{root / empty[0]}: a class sub-folder without PNG or JPEG images")
    if len(classes) < 2:
        raise StructpruneError(f"{root}: only one class ({next(iter(classes))}); a classifier needs at least two "
                               "class sub-folders")
    return classes


def read_image(path: Path) -> tuple[np.ndarray, bool]:
    """(float32 [H, W, C] in [0, 1], greyscale?) of one image file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            grey = img.mode in GREY_MODES
            if img.mode.startswith("I") or img.mode == "F":
                scale = 1.0 if img.mode == "F" else 65535.0
                array = np.asarray(img, dtype=np.float32) / scale
            else:
                array = np.asarray(img.convert("L" if grey else "RGB"), dtype=np.float32) / 255.0
    except UnidentifiedImageError:
        raise StructpruneError(f"{path}: cannot read the image (not a PNG or JPEG file Pillow can decode)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StructpruneError(f"{path}: cannot read the image ({detail})") from None
    if array.ndim == 2:
        array = array[:, :, None]
    return np.clip(array, 0.0, 1.0), grey


def _to_tensor(images: list[np.ndarray], grey: bool, size: int) -> torch.Tensor:
    """[N, C, size, size] float32: RGB images of greyscale files repeat the grey level; each resized if needed."""
    out = torch.empty(len(images), 1 if grey else 3, size, size)
    for i, array in enumerate(images):
        t = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)  # [C, H, W]
        if not grey and t.shape[0] == 1:
            t = t.expand(3, -1, -1)
        if tuple(t.shape[1:]) != (size, size):
            t = F.interpolate(t[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        out[i] = t
    return out


def _read_all(files: list[Path]) -> tuple[list[np.ndarray], bool]:
    arrays, greys = [], []
    for path in files:
        array, grey = read_image(path)
        arrays.append(array)
        greys.append(grey)
    return arrays, all(greys)


def _split_test(labels: np.ndarray) -> np.ndarray:
    """bool [N]: the test images, a fixed fifth of each class (at least one)."""
    rng = np.random.default_rng(TEST_SEED)
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 2:
            raise StructpruneError(f"class {int(c)} has {len(idx)} image; each class needs at least 2 (one to test)")
        test[rng.choice(idx, max(1, round(TEST_FRACTION * len(idx))), replace=False)] = True
    return test


@dataclass
class FolderImages:
    """Everything read from an image folder, before normalisation and the validation split."""

    classes: tuple[str, ...]
    train_x: torch.Tensor  # [N, C, S, S] in [0, 1] (training + validation)
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    size: int


def read_folder(source: FolderSource) -> FolderImages:
    root = source.path
    split_dirs = (root / "train").is_dir() and (root / "test").is_dir()
    if split_dirs:
        train_classes, test_classes = class_folders(root / "train"), class_folders(root / "test")
        if set(test_classes) != set(train_classes):
            raise StructpruneError(f"{root}: train/ and test/ hold different classes "
                                   f"({', '.join(sorted(set(train_classes) ^ set(test_classes)))})")
    else:
        train_classes = class_folders(root)
    classes = tuple(train_classes)

    def listing(by_class: dict[str, list[Path]]) -> tuple[list[Path], np.ndarray]:
        files = [f for name in classes for f in by_class[name]]
        labels = np.array([k for k, name in enumerate(classes) for _ in by_class[name]], dtype=np.int64)
        return files, labels

    files, labels = listing(train_classes)
    test_files, test_labels = listing(test_classes) if split_dirs else ([], np.zeros(0, dtype=np.int64))
    arrays, grey = _read_all(files)
    test_arrays, test_grey = _read_all(test_files)
    grey = grey and test_grey
    size = source.size if source.size is not None else max(arrays[0].shape[:2])
    x, y = _to_tensor(arrays, grey, size), torch.from_numpy(labels)
    if split_dirs:
        test_x, test_y = _to_tensor(test_arrays, grey, size), torch.from_numpy(test_labels)
    else:
        test = torch.from_numpy(_split_test(labels))
        x, y, test_x, test_y = x[~test], y[~test], x[test], y[test]
    return FolderImages(classes, x, y, test_x, test_y, size)


def normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of [N, C, H, W] (a constant channel gets std 1)."""
    mean = x.mean((0, 2, 3))
    std = x.std((0, 2, 3), correction=0)
    return mean, torch.where(std > 1e-6, std, torch.ones_like(std))

