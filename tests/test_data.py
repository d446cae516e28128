"""Loaders for every supported file format, their error messages, the validation split and augmentation."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from datafiles_helpers import idx_bytes, random_set, write_cifar_bins, write_idx_set
from hypothesis import given, settings
from hypothesis import strategies as st

from structprune.augment import crop_and_flip, random_crop, random_flip
from structprune.data import DATA_DIR_ENV, SPECS, batches, default_val_size, load_dataset
from structprune.datafiles import read_idx
from structprune.errors import StructpruneError

SHARED = Path(__file__).parents[1] / "../shared/data"


def _expected(x: np.ndarray, name: str) -> torch.Tensor:
    spec = SPECS[name]
    t = torch.from_numpy(x).float() / 255.0
    return (t - torch.tensor(spec.mean).view(1, -1, 1, 1)) / torch.tensor(spec.std).view(1, -1, 1, 1)


def _all_train(data) -> tuple[torch.Tensor, torch.Tensor]:
    """Training + validation images, back in one set, sorted by a content key to undo the split."""
    x = torch.cat([data.train.x, data.val.x])
    y = torch.cat([data.train.y, data.val.y])
    return x, y


def _same_set(a_x, a_y, b_x, b_y) -> bool:
    key_a = a_x.flatten(1).sum(1) * 1000 + a_y
    key_b = b_x.flatten(1).sum(1) * 1000 + b_y
    return torch.allclose(key_a.sort().values, key_b.sort().values, atol=1e-3)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_files_load_gzipped_or_not(tmp_path, name, gz):
    arrays = random_set(np.random.default_rng(1), (28, 28))
    write_idx_set(tmp_path / name, arrays, gz=gz)
    data = load_dataset(name, tmp_path, val_size=5)
    assert (len(data.train), len(data.val), len(data.test)) == (25, 5, 10)
    assert data.test.x.shape == (10, 1, 28, 28) and data.test.y.dtype == torch.int64
    torch.testing.assert_close(data.test.x, _expected(arrays["x_test"][:, None], name))
    assert torch.equal(data.test.y, torch.from_numpy(arrays["y_test"].astype(np.int64)))
    x, y = _all_train(data)
    assert _same_set(x, y, _expected(arrays["x_train"][:, None], name), torch.from_numpy(arrays["y_train"].astype(np.int64)))


def test_idx_files_directly_in_the_data_dir(tmp_path):
    write_idx_set(tmp_path, random_set(np.random.default_rng(2), (28, 28)), gz=False)
    assert len(load_dataset("mnist", tmp_path, val_size=3).test) == 10


def test_mnist_npz(tmp_path):
    arrays = random_set(np.random.default_rng(3), (28, 28))
    np.savez(tmp_path / "mnist.npz", **arrays)
    data = load_dataset("mnist", tmp_path, val_size=4)
    torch.testing.assert_close(data.test.x, _expected(arrays["x_test"][:, None], "mnist"))


def test_cifar_binary_batches_match_the_npz_of_the_same_images(tmp_path):
    arrays = random_set(np.random.default_rng(4), (3, 32, 32), n_train=25)
    write_cifar_bins(tmp_path / "bin" / "cifar-10-batches-bin", arrays["x_train"], arrays["y_train"],
                     arrays["x_test"], arrays["y_test"])
    nhwc = {k: (v.transpose(0, 2, 3, 1) if k.startswith("x") else v) for k, v in arrays.items()}
    (tmp_path / "npz").mkdir()
    np.savez(tmp_path / "npz" / "cifar10.npz", **nhwc)
    from_bin = load_dataset("cifar10", tmp_path / "bin", val_size=5, seed=7)
    from_npz = load_dataset("cifar10", tmp_path / "npz", val_size=5, seed=7)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(from_bin, split).x, getattr(from_npz, split).x)
        assert torch.equal(getattr(from_bin, split).y, getattr(from_npz, split).y)
    torch.testing.assert_close(from_bin.test.x, _expected(arrays["x_test"], "cifar10"))
    assert from_bin.augment and from_bin.input_size == 32 and from_bin.in_channels == 3


def test_data_dir_from_environment(tmp_path, monkeypatch):
    np.savez(tmp_path / "mnist.npz", **random_set(np.random.default_rng(5), (28, 28)))
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert len(load_dataset("mnist", val_size=2).test) == 10


def test_missing_dataset_names_files_and_place(tmp_path):
    with pytest.raises(StructpruneError) as err:
        load_dataset("cifar10", tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert "cifar10.npz" in message and "data_batch_1.bin" in message and str(tmp_path) in message


def test_unknown_dataset():
    with pytest.raises(StructpruneError, match="unknown dataset 'svhn'"):
        load_dataset("svhn")


def test_truncated_idx_file(tmp_path):
    write_idx_set(tmp_path, random_set(np.random.default_rng(6), (28, 28)), gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(StructpruneError, match="truncated"):
        load_dataset("mnist", tmp_path)


def test_truncated_gzip_file(tmp_path):
    write_idx_set(tmp_path, random_set(np.random.default_rng(7), (28, 28)), gz=True)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00" * 50)[:-12])
    with pytest.raises(StructpruneError, match="t10k-labels"):
        load_dataset("mnist", tmp_path)


def test_truncated_cifar_batch(tmp_path):
    arrays = random_set(np.random.default_rng(8), (3, 32, 32))
    write_cifar_bins(tmp_path, arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"])
    path = tmp_path / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(StructpruneError, match=r"data_batch_3\.bin: truncated"):
        load_dataset("cifar10", tmp_path)


def test_corrupt_npz(tmp_path):
    np.savez(tmp_path / "mnist.npz", **random_set(np.random.default_rng(9), (28, 28)))
    path = tmp_path / "mnist.npz"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(StructpruneError, match=r"mnist\.npz"):
        load_dataset("mnist", tmp_path)


def test_npz_missing_arrays(tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(StructpruneError, match="missing array"):
        load_dataset("mnist", tmp_path)


def test_labels_outside_the_class_range(tmp_path):
    arrays = random_set(np.random.default_rng(10), (28, 28))
    arrays["y_test"][3] = 10
    np.savez(tmp_path / "mnist.npz", **arrays)
    with pytest.raises(StructpruneError, match="outside the class range"):
        load_dataset("mnist", tmp_path)


def test_images_of_the_wrong_shape(tmp_path):
    arrays = random_set(np.random.default_rng(11), (32, 32, 3))
    np.savez(tmp_path / "mnist.npz", **arrays)
    with pytest.raises(StructpruneError, match="expected 1×28×28"):
        load_dataset("mnist", tmp_path)


def test_label_count_must_match_images(tmp_path):
    arrays = random_set(np.random.default_rng(12), (28, 28))
    arrays["y_train"] = arrays["y_train"][:-1]
    np.savez(tmp_path / "mnist.npz", **arrays)
    with pytest.raises(StructpruneError, match="29 labels"):
        load_dataset("mnist", tmp_path)


def test_default_validation_split_is_a_tenth_at_most_5000(tmp_path, caplog):
    assert [default_val_size(n) for n in (1, 9, 10, 1497, 60000, 10**6)] == [1, 1, 1, 149, 5000, 5000]
    np.savez(tmp_path / "mnist.npz", **random_set(np.random.default_rng(0), (28, 28), n_train=30))
    with caplog.at_level("INFO"):
        data = load_dataset("mnist", tmp_path)
    assert (len(data.train), len(data.val)) == (27, 3)
    assert "validation split: 3 of the 30 training images" in caplog.text
    assert len(load_dataset("mnist", tmp_path, val_size=29).val) == 29  # an explicit size stays as given
    for bad in (0, 30, -1, 2.5, True):
        with pytest.raises(StructpruneError, match="validation size"):
            load_dataset("mnist", tmp_path, val_size=bad)


def test_validation_split_is_seeded_and_disjoint():
    a, b, c = load_dataset("digits", seed=0), load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert torch.equal(a.val.x, b.val.x) and not torch.equal(a.val.y, c.val.y)
    assert len(a.train) + len(a.val) == 1497 and len(a.test) == 300
    train_keys = {tuple(v.tolist()) for v in a.train.x.flatten(1)}
    assert sum(tuple(v.tolist()) in train_keys for v in a.val.x.flatten(1)) < 10  # only true duplicate images


def test_digits_are_normalised_8x8():
    d = load_dataset("digits")
    assert d.train.x.shape[1:] == (1, 8, 8) and d.input_size == 8 and not d.augment
    assert d.train.x.min() == -1.0 and d.train.x.max() == 1.0


def test_batches_cover_the_split_once_in_a_seeded_order():
    d = load_dataset("digits")
    got = torch.cat([y for _, y in batches(d.train, 100, shuffle=True, seed=3)])
    again = torch.cat([y for _, y in batches(d.train, 100, shuffle=True, seed=3)])
    assert torch.equal(got, again) and torch.equal(got.sort().values, d.train.y.sort().values)


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    g = torch.Generator().manual_seed(0)
    out = random_crop(x, 2, g)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, dy : dy + 6, dx : dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_flip_mirrors_some_images_and_keeps_others():
    x = torch.randn(64, 3, 4, 4)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, x, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True)) and 10 < sum(flipped) < 54


def test_augmentation_is_a_function_of_the_seed():
    x = torch.randn(16, 3, 32, 32)
    a = crop_and_flip(x, torch.Generator().manual_seed(5))
    b = crop_and_flip(x, torch.Generator().manual_seed(5))
    c = crop_and_flip(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.skipif(not (SHARED / "mnist.npz").exists(), reason="../shared/data/mnist.npz not present")
def test_real_mnist():
    d = load_dataset("mnist", SHARED)
    assert (len(d.train), len(d.val), len(d.test)) == (55000, 5000, 10000)
    assert abs(float(d.train.x.mean())) < 0.05 and abs(float(d.train.x.std()) - 1) < 0.05


@pytest.mark.skipif(not (SHARED / "cifar10.npz").exists(), reason="../shared/data/cifar10.npz not present")
def test_real_cifar10():
    d = load_dataset("cifar10", SHARED)
    assert (len(d.train), len(d.val), len(d.test)) == (40000, 5000, 1000)
    assert d.train.x.shape[1:] == (3, 32, 32)
    assert torch.allclose(d.train.x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=0.05)


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(0, 5), min_size=1, max_size=4), gz=st.booleans(), seed=st.integers(0, 2**16))
def test_idx_round_trip(tmp_path_factory, shape, gz, seed):
    array = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path_factory.mktemp("idx") / ("a.gz" if gz else "a")
    payload = idx_bytes(array)
    path.write_bytes(gzip.compress(payload) if gz else payload)
    assert np.array_equal(read_idx(path), array)


@settings(max_examples=40, deadline=None)
@given(padding=st.integers(0, 4), size=st.integers(1, 9), seed=st.integers(0, 2**31))
def test_random_crop_always_cuts_a_window_of_the_padded_image(padding, size, seed):
    x = torch.randn(3, 2, size, size)
    out = random_crop(x, padding, torch.Generator().manual_seed(seed))
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    offsets = range(2 * padding + 1)
    for i in range(3):
        assert any(torch.equal(out[i], padded[i, :, dy : dy + size, dx : dx + size]) for dy in offsets for dx in offsets)
