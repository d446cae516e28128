"""`--data folder:PATH`: a user's own images, one sub-folder per class, through train -> prune -> compact -> eval."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from structprune.cli import main
from structprune.data import load_dataset
from structprune.errors import StructpruneError

CLASSES = ("circle", "cross", "stripes")


def class_image(k: int, rng: np.random.Generator, size: int = 12) -> np.ndarray:
    """RGB uint8 [size, size, 3]: noise plus a bright shape that depends on the class."""
    img = rng.integers(0, 60, size=(size, size, 3))
    yy, xx = np.mgrid[:size, :size]
    if k == 0:
        shape = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    elif k == 1:
        shape = (abs(yy - xx) < 2) | (abs(yy + xx - size) < 2)
    else:
        shape = (yy // 2) % 2 == 0
    img[shape, k] += 180
    return img.clip(0, 255).astype(np.uint8)


def make_folder(root: Path, per_class: int = 12, grey: bool = False, size: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = Image.fromarray(class_image(k, rng, size))
            img = img.convert("L") if grey else img
            suffix = ".jpg" if i % 4 == 3 else ".png"  # JPEG too
            img.save(root / name / f"{i:03d}{suffix}")
    (root / CLASSES[0] / "notes.txt").write_text("not an image")  # ignored
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("images") / "shapes")


def test_load_splits_sizes_and_normalises(folder):
    data = load_dataset(f"folder:{folder}", seed=1)
    assert data.name == f"folder:{folder.resolve()}@12"
    assert data.classes == CLASSES and data.num_classes == 3
    assert (data.in_channels, data.input_size) == (3, 12)
    assert len(data.test) == 3 * 2  # a fifth of each class's 12 images, rounded
    assert len(data.val) == 3 and len(data.train) == 27  # a tenth of the other 30
    assert sorted(data.test.y.tolist()) == [0, 0, 1, 1, 2, 2]
    pool = torch.cat([data.train.x, data.val.x])  # the statistics come from the training images
    assert torch.allclose(pool.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(pool.std((0, 2, 3), correction=0), torch.ones(3), atol=1e-4)
    again = load_dataset(data.name, seed=2)  # the recorded name rebuilds the same images; the seed moves val only
    assert torch.equal(again.test.x, data.test.x)
    assert not torch.equal(again.val.y, data.val.y) or not torch.equal(again.val.x, data.val.x)


def test_resize_and_greyscale(tmp_path):
    grey = make_folder(tmp_path / "grey", per_class=3, grey=True, size=10)
    data = load_dataset(f"folder:{grey}", image_size=6, val_size=1)
    assert (data.in_channels, data.input_size) == (1, 6)
    assert data.train.x.shape[1:] == (1, 6, 6)
    assert data.name.endswith("@6")
    assert load_dataset(f"folder:{grey}@6", val_size=1).train.x.shape[1:] == (1, 6, 6)
    with pytest.raises(StructpruneError, match="contradicts"):
        load_dataset(f"folder:{grey}@6", image_size=8)
    with pytest.raises(StructpruneError, match="folder: datasets only"):
        load_dataset("digits", image_size=8)


def test_train_prune_compact_eval_through_the_cli(folder, tmp_path, capsys):
    dense, pruned, small = tmp_path / "dense", tmp_path / "pruned", tmp_path / "small"
    assert main(["train", "--model", "tiny-paper", "--data", f"folder:{folder}", "--image-size", "8",
                 "--epochs", "3", "--lr", "0.05", "--out", str(dense), "--no-progress"]) == 0
    config = json.loads((dense / "config.json").read_text())
    assert config["dataset"] == f"folder:{folder.resolve()}@8"
    assert json.loads((dense / "arch.json").read_text())["input_shape"] == [3, 8, 8]
    assert main(["prune", str(dense), "--granularity", "channel,intra", "--ratio", "0.5", "--intra-free", "--round-to", "1",
                 "--out", str(pruned)]) == 0
    assert main(["compact", str(pruned), "--out", str(small)]) == 0
    for run in (dense, pruned, small):
        assert (run / "model.safetensors").is_file() and (run / "metrics.json").is_file()
    metrics = json.loads((small / "metrics.json").read_text())
    assert metrics["test_images"] == 6 and 0.0 <= metrics["test_mcr"] <= 1.0
    capsys.readouterr()
    assert main(["eval", str(small), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_mcr"] == pytest.approx(metrics["test_mcr"])
    assert result["test_mcr"] == pytest.approx(json.loads((pruned / "metrics.json").read_text())["test_mcr"])
    assert json.loads((dense / "metrics.json").read_text())["val_mcr"] < 2 / 3  # it learned something


def bad_folder(tmp_path: Path, kind: str) -> Path:
    root = tmp_path / kind
    root.mkdir()
    if kind == "loose":  # images but no class sub-folders
        Image.new("L", (4, 4)).save(root / "a.png")
    elif kind == "one-class":
        (root / "cat").mkdir()
        for i in range(3):
            Image.new("L", (4, 4)).save(root / "cat" / f"{i}.png")
    elif kind == "unreadable":
        make_folder(root / "x", per_class=2)
        (root / "x" / "cross" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        return root / "x"
    elif kind == "empty-class":
        make_folder(root / "x", per_class=2)
        (root / "x" / "dogs").mkdir()
        return root / "x"
    return root


@pytest.mark.parametrize(("kind", "message"), [
    ("missing", "no such folder"),
    ("loose", r"no class sub-folders with PNG or JPEG images \(1 images lie directly in it\)"),
    ("one-class", r"only one class \(cat\)"),
    ("unreadable", r"broken\.png: cannot read the image"),
    ("empty-class", "dogs: a class sub-folder without PNG or JPEG images"),
])
def test_bad_folders_give_one_line(tmp_path, capsys, kind, message):
    root = tmp_path / "missing" if kind == "missing" else bad_folder(tmp_path, kind)
    code = main(["train", "--model", "tiny-paper", "--data", f"folder:{root}", "--epochs", "1",
                 "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("structprune: error: ")
    assert re.search(message, err[0]), err[0]
