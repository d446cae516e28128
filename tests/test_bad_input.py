"""Bad input to every verb is refused: exit status 2, one line on stderr (`structprune: error: ...`), no traceback,
nothing new written (hidden staging entries aside) and the input run folders byte-identical.

One table of cases, run in-process through `structprune.cli.main` (with a log handler on stderr, as the CLI has);
a few run as `python -m structprune` to prove the same holds for a real process. Fixtures (a trained, a pruned
and a compact run) are built once for the module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from datafiles_helpers import random_set, write_idx_set

from structprune.cli import main
from structprune.latency_model.model import MODEL_FORMAT
from structprune.search.latency import OLD_TABLE_FORMAT

REPO = Path(__file__).parents[1]

Setup = Callable[[dict[str, Path], Path], None]


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    setup: Setup | None = None


def case(id_: str, *args: str, setup: Setup | None = None) -> Case:
    return Case(id_, args, setup)


# ---------------------------------------------------------------------------------------------- damage helpers
def damaged(source: str, file: str, edit: Callable[[Any], Any]) -> Setup:
    """Copy fixture run `source` to TMP/bad and replace the JSON in `file` by edit(its content)."""

    def setup(runs: dict[str, Path], tmp: Path) -> None:
        shutil.copytree(runs[source], tmp / "bad")
        target = tmp / "bad" / file
        target.write_text(json.dumps(edit(json.loads(target.read_text()))))

    return setup


def damaged_bytes(source: str, file: str, change: Callable[[bytes], bytes | None]) -> Setup:
    """Copy fixture run `source` to TMP/bad and replace the bytes of `file` (None: delete it)."""

    def setup(runs: dict[str, Path], tmp: Path) -> None:
        shutil.copytree(runs[source], tmp / "bad")
        target = tmp / "bad" / file
        new = change(target.read_bytes() if target.exists() else b"")
        if new is None:
            target.unlink()
        else:
            target.write_bytes(new)

    return setup


def weights_of(other: str) -> Setup:
    """TMP/bad: the trained run with the weights of fixture run `other` (shapes that do not match)."""

    def setup(runs: dict[str, Path], tmp: Path) -> None:
        shutil.copytree(runs["run"], tmp / "bad")
        shutil.copyfile(runs[other] / "model.safetensors", tmp / "bad" / "model.safetensors")

    return setup


def setitem(path: str, value: Any) -> Callable[[Any], Any]:
    """An edit setting d[k1][k2]... (path 'k1/k2/...') to value."""
    keys = path.split("/")

    def edit(data: Any) -> Any:
        node = data
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
        return data

    return edit


def delitem(key: str) -> Callable[[Any], Any]:
    def edit(data: Any) -> Any:
        del data[key]
        return data

    return edit


def replaced(value: Any) -> Callable[[Any], Any]:
    return lambda _data: value


def set_modules_to_list(data: Any) -> Any:
    data["modules"] = list(data["modules"].values())
    return data


def masks(layer: str, key: str, value: Any) -> Setup:
    return damaged("pruned", "masks.json", setitem(f"layers/{layer}/{key}", value))


def mnist_elsewhere(source: str = "run") -> Setup:
    """TMP/bad: a copy of `source` whose config.json says it was trained on MNIST in TMP/data (valid 28×28 files),
    which do not fit its 8×8 network."""

    def setup(runs: dict[str, Path], tmp: Path) -> None:
        write_npz(tmp, "mnist", random_set(np.random.default_rng(0), (28, 28)))
        shutil.copytree(runs[source], tmp / "bad")
        config = json.loads((tmp / "bad" / "config.json").read_text())
        config.update(dataset="mnist", data_dir=str(tmp / "data"), val_size=5)
        (tmp / "bad" / "config.json").write_text(json.dumps(config))

    return setup


def write_npz(tmp: Path, name: str, arrays: dict[str, np.ndarray]) -> None:
    (tmp / "data").mkdir(exist_ok=True)
    np.savez(tmp / "data" / f"{name}.npz", **arrays)


def npz(name: str = "mnist", shape: tuple[int, ...] = (28, 28), n_train: int = 30, n_test: int = 10,
        edit: Callable[[dict[str, np.ndarray]], None] | None = None) -> Setup:
    """TMP/data/NAME.npz: a small random set of `shape` images, changed by `edit`."""

    def setup(_runs: dict[str, Path], tmp: Path) -> None:
        arrays = random_set(np.random.default_rng(0), shape, n_train=n_train, n_test=n_test)
        if edit is not None:
            edit(arrays)
        write_npz(tmp, name, arrays)

    return setup


def latency_model_json(conv: str, ms: list[list[float]]) -> bytes:
    """A latency model (structprune.latency_model) timing one 2→2 map convolution `conv` on a 2×2 grid."""
    layer = {"in_channels": 2, "out_channels": 2, "kernel": [3, 3], "output_size": [8, 8], "depthwise": False,
             "groups": 1, "grids": {"g1": {"in": [1, 2], "out": [1, 2], "ms": ms}}}
    return json.dumps({"format": MODEL_FORMAT, "runtime": "eager", "batch": 16, "threads": 1, "input_shape": [1, 8, 8],
                       "network_dense_ms": 1.0, "calibration": [], "layers": {conv: layer}}).encode()


def raw_file(relative: str, payload: bytes) -> Setup:
    def setup(_runs: dict[str, Path], tmp: Path) -> None:
        target = tmp / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(payload)

    return setup


def idx_set(change: Callable[[bytes], bytes]) -> Setup:
    """TMP/data/mnist/: the four IDX files of a small random set, the training images' file changed."""

    def setup(_runs: dict[str, Path], tmp: Path) -> None:
        write_idx_set(tmp / "data" / "mnist", random_set(np.random.default_rng(0), (28, 28)), gz=False)
        images = tmp / "data" / "mnist" / "train-images-idx3-ubyte"
        images.write_bytes(change(images.read_bytes()))

    return setup


def config_without_dataset(source: str) -> Setup:
    return damaged(source, "config.json", lambda c: {k: v for k, v in c.items() if k not in ("dataset", "data_dir")})


# --------------------------------------------------------------------------------------------------- the table
TRAIN = ("train", "--model", "tiny-paper", "--data", "digits", "--epochs", "1", "--no-progress", "--out", "{out}")
MNIST = ("train", "--model", "tiny-paper", "--data", "mnist", "--data-dir", "{tmp}/data", "--epochs", "1",
         "--no-progress", "--out", "{out}")
QUANT = ("quantize", "{run}", "--bits", "4", "--out", "{out}", "--no-progress")
PRUNE = ("prune", "{run}", "--out", "{out}", "--granularity", "channel", "--ratio", "0.5")
SEARCH = ("prune", "{run}", "--out", "{out}", "--granularity", "channel", "--method", "pf", "--max")
TARGET = ("prune", "{run}", "--out", "{out}")
RETRAIN = ("retrain", "{pruned}", "--epochs", "1", "--out", "{out}", "--no-progress")
BENCH = ("bench", "{run}", "--rounds", "1", "--batch", "1", "--no-progress")
SENS = ("sensitivity", "{run}")
EXPORT = ("export", "{run}", "--onnx", "{tmp}/net.onnx")


def _drop(key: str) -> Callable[[dict[str, np.ndarray]], None]:
    return lambda a: a.pop(key)


def _set(key: str, value: Callable[[dict[str, np.ndarray]], np.ndarray]) -> Callable[[dict[str, np.ndarray]], None]:
    return lambda a: a.__setitem__(key, value(a))


CASES = [
    # ---- no verb, unknown verb or option
    case("no-verb"),
    case("unknown-verb", "frobnicate"),
    case("unknown-option", *TRAIN, "--frobnicate"),
    case("verbose-and-quiet", "-v", "-q", "info", "{run}"),
    # ---- train: option values
    case("train-lr-nan", *TRAIN, "--lr", "nan"),
    case("train-lr-inf", *TRAIN, "--lr", "inf"),
    case("train-lr-zero", *TRAIN, "--lr", "0"),
    case("train-lr-negative", *TRAIN, "--lr", "-0.1"),
    case("train-lr-text", *TRAIN, "--lr", "fast"),
    case("train-momentum-negative", *TRAIN, "--momentum", "-5"),
    case("train-momentum-one", *TRAIN, "--momentum", "1"),
    case("train-momentum-nan", *TRAIN, "--momentum", "nan"),
    case("train-wd-nan", *TRAIN, "--weight-decay", "nan"),
    case("train-wd-negative", *TRAIN, "--weight-decay=-1e-4"),
    case("train-wd-inf", *TRAIN, "--weight-decay", "inf"),
    case("train-epochs-negative", *TRAIN, "--epochs", "-1"),
    case("train-epochs-fraction", *TRAIN, "--epochs", "1.5"),
    case("train-batch-zero", *TRAIN, "--batch-size", "0"),
    case("train-batch-text", *TRAIN, "--batch-size", "many"),
    case("train-seed-negative", *TRAIN, "--seed", "-1"),
    case("train-seed-huge", *TRAIN, "--seed", str(2**40)),
    case("train-warmup-negative", *TRAIN, "--warmup-epochs", "-1"),
    case("train-warmup-nan", *TRAIN, "--warmup-epochs", "nan"),
    case("train-warmup-beyond-epochs", *TRAIN, "--warmup-epochs", "5"),
    case("train-val-zero", *TRAIN, "--val-size", "0"),
    case("train-val-negative", *TRAIN, "--val-size", "-5"),
    case("train-val-every-image", *TRAIN, "--val-size", "1497"),
    case("train-val-huge", *TRAIN, "--val-size", "100000"),
    case("train-threads-zero", *TRAIN, "--threads", "0"),
    case("train-threads-huge", *TRAIN, "--threads", "100000"),
    case("train-schedule", *TRAIN, "--schedule", "linear"),
    case("train-optimizer", *TRAIN, "--optimizer", "lbfgs"),
    case("train-device", *TRAIN, "--device", "tpu"),
    case("train-channels-last", *TRAIN, "--channels-last", "maybe"),
    case("train-model-unknown", "train", "--model", "nope", "--data", "digits", "--out", "{out}"),
    case("train-data-unknown", "train", "--model", "tiny-paper", "--data", "imagenet", "--out", "{out}"),
    case("train-model-missing", "train", "--data", "digits", "--out", "{out}"),
    case("train-out-missing", "train", "--model", "tiny-paper", "--data", "digits"),
    case("train-model-arg-no-value", *TRAIN, "--model-arg", "bn"),
    case("train-model-arg-unknown", *TRAIN, "--model-arg", "colour=1"),
    case("train-model-arg-fixed", *TRAIN, "--model-arg", "num_classes=5"),
    case("train-model-arg-huge", "train", "--model", "plain", "--data", "digits", "--out", "{out}",
         "--model-arg", "spec=4000000C3-10FC"),
    case("train-model-arg-bad-spec", "train", "--model", "plain", "--data", "digits", "--out", "{out}",
         "--model-arg", "spec=-3C3-10FC"),
    case("train-out-under-file", *TRAIN[:-1], "{tmp}/afile/run"),
    case("train-out-is-file", *TRAIN[:-1], "{tmp}/afile"),
    # ---- train: data on disk
    case("data-dir-missing", *MNIST[:6], "{tmp}/nowhere", *MNIST[7:]),
    case("data-dir-is-file", *MNIST[:6], "{tmp}/afile", *MNIST[7:]),
    case("npz-missing-array", *MNIST, setup=npz(edit=_drop("y_test"))),
    case("npz-no-training-images", *MNIST, setup=npz(n_train=0)),
    case("npz-no-test-images", *MNIST, setup=npz(n_test=0)),
    case("npz-one-training-image", *MNIST, setup=npz(n_train=1)),
    case("npz-wrong-size", *MNIST, setup=npz(shape=(27, 28))),
    case("npz-wrong-channels", *MNIST, setup=npz(shape=(3, 28, 28))),
    case("npz-flat-images", *MNIST, setup=npz(edit=_set("x_train", lambda a: a["x_train"].reshape(30, -1)))),
    case("npz-float-images", *MNIST, setup=npz(edit=_set("x_train", lambda a: a["x_train"].astype(np.float32)))),
    case("npz-negative-pixels", *MNIST, setup=npz(edit=_set("x_test", lambda a: a["x_test"].astype(np.int16) - 300))),
    case("npz-label-out-of-range", *MNIST, setup=npz(edit=_set("y_train", lambda a: a["y_train"] + 10))),
    case("npz-label-count", *MNIST, setup=npz(edit=_set("y_train", lambda a: a["y_train"][:-1]))),
    case("npz-float-labels", *MNIST, setup=npz(edit=_set("y_test", lambda a: a["y_test"] + 0.5))),
    case("npz-object-array", *MNIST, setup=npz(edit=_set("y_test", lambda a: np.array([{"a": 1}] * 10)))),
    case("npz-truncated", *MNIST, setup=lambda r, t: (npz()(r, t), _truncate(t / "data" / "mnist.npz"))),
    case("npz-not-a-zip", *MNIST, setup=raw_file("data/mnist.npz", b"not an archive\n")),
    case("cifar-grey-images", "train", "--model", "tiny-paper", "--data", "cifar10", "--data-dir", "{tmp}/data",
         "--out", "{out}", setup=npz("cifar10", shape=(32, 32))),
    case("idx-truncated", *MNIST, setup=idx_set(lambda b: b[:-7])),
    case("idx-bad-magic", *MNIST, setup=idx_set(lambda b: b"\x01" + b[1:])),
    # ---- eval: the run folder
    case("eval-missing-run", "eval", "{tmp}/nope"),
    case("eval-run-is-file", "eval", "{tmp}/afile"),
    case("eval-empty-folder", "eval", "{tmp}/empty"),
    case("eval-data-unknown", "eval", "{run}", "--data", "imagenet"),
    case("eval-data-does-not-fit", "eval", "{run}", "--data", "mnist", "--data-dir", "{tmp}/data",
         setup=npz(n_train=300)),
    case("eval-data-dir-missing", "eval", "{run}", "--data", "mnist", "--data-dir", "{tmp}/nowhere"),
    case("eval-config-data-does-not-fit", "eval", "{bad}", setup=mnist_elsewhere()),
    case("eval-no-dataset", "eval", "{bad}", setup=config_without_dataset("run")),
    case("masks-float-indices", "eval", "{bad}", setup=masks("features.0", "keep_out", [0.5, 1.7])),
    case("masks-string-indices", "eval", "{bad}", setup=masks("features.0", "keep_out", "0123")),
    case("masks-duplicate-index", "eval", "{bad}", setup=masks("features.0", "keep_out", [0, 0, 1])),
    case("masks-negative-index", "eval", "{bad}", setup=masks("features.0", "keep_out", [-1, 0])),
    case("masks-index-out-of-range", "eval", "{bad}", setup=masks("features.0", "keep_out", [0, 8])),
    case("masks-bool-indices", "eval", "{bad}", setup=masks("features.0", "keep_out", [True, False])),
    case("masks-empty-keep", "eval", "{bad}", setup=masks("features.2", "keep_out", [])),
    case("masks-kernel-bad-bits", "eval", "{bad}", setup=masks("features.2", "keep_kernel", ["01201111"] * 8)),
    case("masks-kernel-short-rows", "eval", "{bad}", setup=masks("features.2", "keep_kernel", ["0111"] * 8)),
    case("masks-kernel-few-rows", "eval", "{bad}", setup=masks("features.2", "keep_kernel", ["01111111"] * 3)),
    case("masks-kernel-numbers", "eval", "{bad}", setup=masks("features.2", "keep_kernel", [11111111] * 8)),
    case("masks-intra-stride-zero", "eval", "{bad}", setup=masks("features.0", "intra", [[4, 0]])),
    case("masks-intra-not-pair", "eval", "{bad}", setup=masks("features.0", "intra", [[4]])),
    case("masks-intra-outside-kernel", "eval", "{bad}", setup=masks("features.0", "intra", [[10, 1]])),
    case("masks-intra-count", "eval", "{bad}", setup=masks("features.2", "intra", [[0, 1]] * 3)),
    case("masks-intra-string", "eval", "{bad}", setup=masks("features.2", "intra", "0:2")),
    case("masks-shape-negative", "eval", "{bad}", setup=masks("features.0", "shape", [-8, 1, 3, 3])),
    case("masks-shape-three", "eval", "{bad}", setup=masks("features.0", "shape", [8, 1, 3])),
    case("masks-shape-smaller-than-layer", "eval", "{bad}", setup=damaged("pruned", "masks.json", setitem(
        "layers/features.5", {"shape": [8, 8, 3, 3], "groups": 1, "keep_out": [0, 1], "keep_kernel": None, "intra": None}))),
    case("masks-groups-zero", "eval", "{bad}", setup=masks("features.0", "groups", 0)),
    case("masks-layer-not-object", "eval", "{bad}", setup=damaged("pruned", "masks.json", setitem("layers/features.0", [0, 1]))),
    case("masks-unknown-layer", "eval", "{bad}",
         setup=damaged("pruned", "masks.json", lambda m: setitem("layers/features.9", m["layers"]["features.0"])(m))),
    case("masks-not-object", "eval", "{bad}", setup=damaged("pruned", "masks.json", replaced([1, 2]))),
    case("masks-format", "eval", "{bad}", setup=damaged("pruned", "masks.json", setitem("format", "masks/9"))),
    case("masks-layers-list", "eval", "{bad}", setup=damaged("pruned", "masks.json", setitem("layers", []))),
    case("masks-truncated", "eval", "{bad}", setup=damaged_bytes("pruned", "masks.json", lambda b: b[:40])),
    case("arch-negative-channels", "eval", "{bad}",
         setup=damaged("run", "arch.json", setitem("modules/features.0/out_channels", -3))),
    case("arch-float-features", "eval", "{bad}",
         setup=damaged("run", "arch.json", setitem("modules/classifier.1/in_features", 1e12))),
    case("arch-huge-features", "eval", "{bad}",
         setup=damaged("run", "arch.json", setitem("modules/classifier.1/in_features", 10**9))),
    case("arch-too-many-weights", "eval", "{bad}",
         setup=damaged("run", "arch.json", lambda a: setitem("modules/classifier.1/out_features", 100)(
             setitem("modules/classifier.1/in_features", 16_000_000)(a)))),
    case("arch-bool-channels", "eval", "{bad}",
         setup=damaged("run", "arch.json", setitem("modules/features.0/out_channels", True))),
    case("arch-modules-list", "eval", "{bad}", setup=damaged("run", "arch.json", set_modules_to_list)),
    case("arch-modules-missing", "eval", "{bad}", setup=damaged("run", "arch.json", delitem("modules"))),
    case("arch-format", "eval", "{bad}", setup=damaged("run", "arch.json", setitem("format", "arch/0"))),
    case("arch-not-object", "eval", "{bad}", setup=damaged("run", "arch.json", replaced(["tiny-paper"]))),
    case("arch-kwargs-list", "eval", "{bad}", setup=damaged("run", "arch.json", setitem("kwargs", [10, 1, 8]))),
    case("arch-negative-classes", "eval", "{bad}", setup=damaged("run", "arch.json", setitem("kwargs/num_classes", -1))),
    case("arch-huge-input", "eval", "{bad}", setup=damaged("run", "arch.json", setitem("kwargs/input_size", 10**6))),
    case("arch-unknown-kwarg", "eval", "{bad}", setup=damaged("run", "arch.json", setitem("kwargs/colour", 1))),
    case("arch-unknown-model", "eval", "{bad}", setup=damaged("run", "arch.json", setitem("model", "resnet9000"))),
    case("arch-model-number", "eval", "{bad}", setup=damaged("run", "arch.json", setitem("model", 7))),
    case("arch-unknown-layer-type", "eval", "{bad}",
         setup=damaged("run", "arch.json", setitem("modules/features.0/type", "Conv5d"))),
    case("arch-layer-type-number", "eval", "{bad}",
         setup=damaged("run", "arch.json", setitem("modules/features.0/type", 5))),
    case("arch-unknown-layer-name", "eval", "{bad}",
         setup=damaged("run", "arch.json", lambda a: setitem("modules/features.99", a["modules"]["features.0"])(a))),
    case("arch-spec-not-object", "eval", "{bad}", setup=damaged("run", "arch.json", setitem("modules/features.0", 5))),
    case("arch-bias-string", "eval", "{bad}", setup=damaged("run", "arch.json", setitem("modules/features.0/bias", "yes"))),
    case("arch-kernel-scalar", "eval", "{bad}",
         setup=damaged("run", "arch.json", setitem("modules/features.0/kernel_size", 3))),
    case("arch-negative-padding", "eval", "{bad}",
         setup=damaged("run", "arch.json", setitem("modules/features.0/padding", [-1, 1]))),
    case("arch-zero-stride", "eval", "{bad}", setup=damaged("run", "arch.json", setitem("modules/features.0/stride", [0, 1]))),
    case("arch-input-shape-mismatch", "eval", "{bad}", setup=damaged("run", "arch.json", setitem("input_shape", [3, 8, 8]))),
    case("arch-input-shape-text", "eval", "{bad}", setup=damaged("run", "arch.json", setitem("input_shape", "1x8x8"))),
    case("arch-layers-do-not-fit", "eval", "{bad}",
         setup=damaged("run", "arch.json", setitem("modules/features.2/in_channels", 4))),
    case("arch-compact-bad-patterns", "eval", "{bad}",
         setup=damaged("compact", "arch.json", setitem("modules/features.0/patterns", [[9, 1]]))),
    case("arch-truncated", "eval", "{bad}", setup=damaged_bytes("run", "arch.json", lambda b: b[:60])),
    case("arch-missing", "eval", "{bad}", setup=damaged_bytes("run", "arch.json", lambda b: None)),
    case("arch-binary", "eval", "{bad}", setup=damaged_bytes("run", "arch.json", lambda b: b"\xff\xfe\x00garbage")),
    case("weights-truncated", "eval", "{bad}", setup=damaged_bytes("run", "model.safetensors", lambda b: b[:-50])),
    case("weights-garbage", "eval", "{bad}",
         setup=damaged_bytes("run", "model.safetensors", lambda b: b"\x08" + b"\x00" * 7 + b"{}")),
    case("weights-empty", "eval", "{bad}", setup=damaged_bytes("run", "model.safetensors", lambda b: b"")),
    case("weights-missing", "eval", "{bad}", setup=damaged_bytes("run", "model.safetensors", lambda b: None)),
    case("weights-other-shapes", "eval", "{bad}", setup=weights_of("compact")),
    case("weights-is-folder", "eval", "{bad}",
         setup=lambda r, t: (damaged_bytes("run", "model.safetensors", lambda b: None)(r, t),
                             (t / "bad" / "model.safetensors").mkdir())),
    case("metrics-list", "eval", "{bad}", setup=damaged("run", "metrics.json", replaced([1, 2]))),
    case("metrics-text-mcr", "eval", "{bad}", setup=damaged("run", "metrics.json", setitem("test_mcr", "low"))),
    case("metrics-nan-params", "eval", "{bad}", setup=damaged_bytes(
        "run", "metrics.json", lambda b: b.replace(b'"params": 4242', b'"params": NaN'))),
    case("metrics-truncated", "eval", "{bad}", setup=damaged_bytes("run", "metrics.json", lambda b: b[:30])),
    case("config-list", "eval", "{bad}", setup=damaged("run", "config.json", replaced([]))),
    case("config-dataset-number", "eval", "{bad}", setup=damaged("run", "config.json", setitem("dataset", 5))),
    case("config-dataset-unknown", "eval", "{bad}", setup=damaged("run", "config.json", setitem("dataset", "imagenet"))),
    case("config-val-size-zero", "eval", "{bad}", setup=damaged("run", "config.json", setitem("val_size", 0))),
    case("config-val-size-text", "eval", "{bad}", setup=damaged("run", "config.json", setitem("val_size", "200"))),
    case("config-val-size-too-big", "eval", "{bad}", setup=damaged("run", "config.json", setitem("val_size", 1497))),
    case("config-train-list", "eval", "{bad}", setup=damaged("run", "config.json", setitem("train", [0]))),
    case("config-seed-negative", "eval", "{bad}", setup=damaged("run", "config.json", setitem("train/seed", -1))),
    case("config-data-dir-number", "eval", "{bad}", setup=damaged("run", "config.json", setitem("data_dir", 3))),
    case("config-truncated", "eval", "{bad}", setup=damaged_bytes("run", "config.json", lambda b: b[:20])),
    # ---- info
    case("info-missing-run", "info", "{tmp}/nope"),
    case("info-run-is-file", "info", "{tmp}/afile"),
    case("info-arch-modules-list", "info", "{bad}", setup=damaged("run", "arch.json", set_modules_to_list)),
    case("info-metrics-list", "info", "{bad}", setup=damaged("run", "metrics.json", replaced([1, 2]))),
    case("info-masks-floats", "info", "{bad}", setup=masks("features.0", "keep_out", [0.5, 1.7])),
    case("info-weights-truncated", "info", "{bad}", setup=damaged_bytes("run", "model.safetensors", lambda b: b[:-50])),
    # ---- demo
    case("demo-epochs-zero", "demo", "--out", "{out}", "--epochs", "0"),
    case("demo-epochs-negative", "demo", "--out", "{out}", "--epochs", "-3"),
    case("demo-seed-negative", "demo", "--out", "{out}", "--seed", "-1"),
    case("demo-out-missing", "demo"),
    case("demo-out-is-file", "demo", "--out", "{tmp}/afile", "--epochs", "1"),
    # ---- quantize
    case("quantize-bits-one", *QUANT[:2], "--bits", "1", *QUANT[4:]),
    case("quantize-bits-17", *QUANT[:2], "--bits", "17", *QUANT[4:]),
    case("quantize-bits-text", *QUANT[:2], "--bits", "four", *QUANT[4:]),
    case("quantize-bits-missing", *QUANT[:2], *QUANT[4:]),
    case("quantize-tolerance-negative", *QUANT, "--per-layer", "auto", "--tolerance", "-1"),
    case("quantize-tolerance-nan", *QUANT, "--per-layer", "auto", "--tolerance", "nan"),
    case("quantize-tolerance-above-one", *QUANT, "--per-layer", "auto", "--tolerance", "1.5"),
    case("quantize-per-layer", *QUANT, "--per-layer", "manual"),
    case("quantize-epochs-negative", *QUANT, "--epochs", "-1"),
    case("quantize-lr-zero", *QUANT, "--lr", "0"),
    case("quantize-lr-nan", *QUANT, "--lr", "nan"),
    case("quantize-batch-zero", *QUANT, "--batch-size", "0"),
    case("quantize-seed-negative", *QUANT, "--seed", "-1"),
    case("quantize-data-unknown", *QUANT, "--data", "imagenet"),
    case("quantize-data-does-not-fit", *QUANT, "--data", "mnist", "--data-dir", "{tmp}/data", setup=npz(n_train=300)),
    case("quantize-config-data-does-not-fit", "quantize", "{bad}", *QUANT[2:], setup=mnist_elsewhere()),
    case("quantize-masks-missing", *QUANT, "--masks", "{tmp}/none.json"),
    case("quantize-masks-folder", *QUANT, "--masks", "{tmp}/empty"),
    case("quantize-masks-damaged", *QUANT, "--masks", "{bad}/masks.json", setup=masks("features.0", "keep_out", "0123")),
    case("quantize-missing-run", "quantize", "{tmp}/nope", *QUANT[2:]),
    case("quantize-out-is-input", *QUANT[:5], "{run}"),
    case("quantize-damaged-arch", "quantize", "{bad}", *QUANT[2:], setup=damaged("run", "arch.json", set_modules_to_list)),
    # ---- export
    case("export-tolerance-negative", *EXPORT, "--tolerance", "-1"),
    case("export-tolerance-nan", *EXPORT, "--tolerance", "nan"),
    case("export-exporter", *EXPORT, "--exporter", "tflite"),
    case("export-onnx-missing", "export", "{run}"),
    case("export-onnx-under-file", *EXPORT[:3], "{tmp}/afile/net.onnx"),
    case("export-onnx-is-folder", *EXPORT[:3], "{tmp}/empty"),
    case("export-missing-run", "export", "{tmp}/nope", *EXPORT[2:]),
    case("export-damaged-arch", "export", "{bad}", *EXPORT[2:], setup=damaged("run", "arch.json", delitem("modules"))),
    case("export-damaged-packed", "export", "{bad}", *EXPORT[2:],
         setup=lambda r, t: (shutil.copytree(r["run"], t / "bad"),
                             (t / "bad" / "model.packed.safetensors").write_bytes(b"\x10" + b"\x00" * 7 + b"{\"a\": 1}"))),
    # ---- prune (one-shot)
    case("prune-intra-stride-zero", *PRUNE[:5], "intra", "--ratio", "0.5", "--intra-patterns", "9:0"),
    case("prune-intra-negative-start", *PRUNE[:5], "intra", "--ratio", "0.5", "--intra-patterns=-1:1"),
    case("prune-intra-text", *PRUNE[:5], "intra", "--ratio", "0.5", "--intra-patterns", "1:x"),
    case("prune-intra-twice", *PRUNE[:5], "intra", "--ratio", "0.5", "--intra-patterns", "1:3,1:3"),
    case("prune-intra-outside-kernel", *PRUNE[:5], "intra", "--ratio", "0.5", "--intra-patterns", "9:1"),
    case("prune-ratio-one", *PRUNE[:7], "1.0"),
    case("prune-ratio-negative", *PRUNE[:6], "--ratio=-0.1"),
    case("prune-ratio-nan", *PRUNE[:7], "nan"),
    case("prune-ratio-count", *PRUNE[:7], "0.1,0.2,0.3"),
    case("prune-ratio-missing", *PRUNE[:6]),
    case("prune-granularity", *PRUNE[:5], "channels", "--ratio", "0.5"),
    case("prune-granularity-empty", *PRUNE[:5], ",", "--ratio", "0.5"),
    case("prune-method", *PRUNE, "--method", "magic"),
    case("prune-scope", *PRUNE, "--scope", "universe"),
    case("prune-round-to-zero", *PRUNE, "--round-to", "0"),
    case("prune-kernel-groups-zero", *PRUNE, "--kernel-groups", "0"),
    case("prune-kernel-structure", *PRUNE, "--kernel-structure", "lattice"),
    case("prune-groups-of-free-kernels", *PRUNE, "--kernel-structure", "unstructured", "--kernel-groups", "2"),
    case("prune-one-kernel-block", *PRUNE[:5], "kernel", "--ratio", "0.5", "--kernel-structure", "blocks",
         "--kernel-groups", "1"),
    case("prune-linear-ratio", *PRUNE, "--linear-ratio", "1.5"),
    case("prune-seed-negative", *PRUNE, "--seed", "-1"),
    case("prune-missing-run", "prune", "{tmp}/nope", *PRUNE[2:]),
    case("prune-out-under-file", *PRUNE[:3], "{tmp}/afile/x", *PRUNE[4:]),
    case("prune-damaged-masks", "prune", "{bad}", *PRUNE[2:], setup=masks("features.0", "keep_out", [0.5, 1.7])),
    case("prune-damaged-arch", "prune", "{bad}", *PRUNE[2:], setup=damaged("run", "arch.json", set_modules_to_list)),
    case("prune-data-does-not-fit", "prune", "{bad}", *PRUNE[2:], setup=mnist_elsewhere()),
    # ---- prune to a target
    case("target-two-targets", *TARGET, "--target-macs", "2", "--target-speedup", "2"),
    case("target-speedup-one", *TARGET, "--target-speedup", "1"),
    case("target-macs-below-one", *TARGET, "--target-macs", "0.5"),
    case("target-latency-zero", *TARGET, "--target-latency", "0"),
    case("target-macs-nan", *TARGET, "--target-macs", "nan"),
    case("target-out-of-reach", *TARGET, "--target-macs", "2"),  # 8-map groups at --round-to 8: nothing to remove
    case("target-out-of-reach-floor", *TARGET, "--target-macs", "50", "--round-to", "1"),
    case("target-with-ratio", *TARGET, "--target-macs", "2", "--ratio", "0.5"),
    case("target-with-max", *TARGET, "--target-macs", "2", "--max"),
    case("target-method-l2", *TARGET, "--target-macs", "2", "--method", "tp-l2"),
    case("target-runtime", *TARGET, "--target-speedup", "2", "--runtime", "tensorrt"),
    case("target-batch-zero", *TARGET, "--target-speedup", "2", "--batch", "0"),
    case("target-min-keep-zero", *TARGET, "--target-macs", "2", "--min-keep", "0"),
    case("target-on-pruned-run", "prune", "{pruned}", "--out", "{out}", "--target-macs", "2", "--round-to", "1"),
    # ---- prune (the search)
    case("search-tolerance-negative", *SEARCH, "--tolerance", "-1"),
    case("search-tolerance-100", *SEARCH, "--tolerance", "100"),
    case("search-temperature-zero", *SEARCH, "--temperature", "0"),
    case("search-temperature-nan", *SEARCH, "--temperature", "nan"),
    case("search-particles-zero", *SEARCH, "--particles", "0"),
    case("search-generations-zero", *SEARCH, "--generations", "0"),
    case("search-retrain-epochs-negative", *SEARCH, "--retrain-epochs", "-1"),
    case("search-lr-zero", *SEARCH, "--lr", "0"),
    case("search-layers-empty", *SEARCH, "--layers", ","),
    case("search-layers-twice", *SEARCH, "--layers", "features.0,features.0"),
    case("search-latency-weight-negative", *SEARCH, "--latency-weight", "-1"),
    case("search-latency-table-missing", *SEARCH, "--latency-table", "{tmp}/none.json"),
    case("search-latency-table-damaged", *SEARCH, "--latency-weight", "0.1", "--latency-table", "{tmp}/t.json",
         setup=raw_file("t.json", b"[1, 2")),
    case("search-latency-table-foreign", *SEARCH, "--latency-weight", "0.1", "--latency-table", "{tmp}/t.json",
         setup=raw_file("t.json", latency_model_json("conv9", [[0.1, 0.2], [0.2, 0.4]]))),
    case("search-latency-table-nan", *SEARCH, "--latency-weight", "0.1", "--latency-table", "{tmp}/t.json",
         setup=raw_file("t.json", latency_model_json("features.0", [[0.1, float("nan")], [0.2, 0.4]]))),
    case("search-latency-table-old", *SEARCH, "--latency-weight", "0.1", "--latency-table", "{tmp}/t.json",
         setup=raw_file("t.json", json.dumps({"format": OLD_TABLE_FORMAT, "batch": 16, "threads": 1, "layers": {
             "features.0": {"in": [1], "out": [1, 2], "ms": [[0.1, 0.2]]}}}).encode())),
    case("search-backend", *SEARCH, "--backend", "mpi"),
    case("search-workers-zero", *SEARCH, "--workers", "0"),
    case("search-score-images-zero", *SEARCH, "--score-images", "0"),
    case("search-bn-negative", *SEARCH, "--bn-recalibrate", "-1"),
    case("search-ratio-and-max", *SEARCH, "--ratio", "0.5"),
    case("search-ratios-differ", *PRUNE[:5], "channel,kernel", "--ratio", "0.3,0.5", "--method", "pf"),
    case("search-linear-ratio", *SEARCH, "--linear-ratio", "0.5"),
    case("search-three-blocks", *SEARCH[:5], "kernel", "--method", "pf", "--max", "--kernel-structure", "blocks",
         "--kernel-groups", "3"),
    case("search-no-pattern-prunes", *SEARCH[:5], "intra", "--method", "pf", "--max", "--intra-patterns", "0:1"),
    case("search-no-dataset", "prune", "{bad}", *SEARCH[2:], setup=config_without_dataset("run")),
    case("search-data-does-not-fit", "prune", "{bad}", *SEARCH[2:], setup=mnist_elsewhere()),
    # ---- compact
    case("compact-no-masks", "compact", "{run}", "--out", "{out}"),
    case("compact-masks-floats", "compact", "{bad}", "--out", "{out}", setup=masks("features.0", "keep_out", [0.5, 1.7])),
    case("compact-masks-string", "compact", "{bad}", "--out", "{out}", setup=masks("features.0", "keep_out", "0123")),
    case("compact-masks-duplicate", "compact", "{bad}", "--out", "{out}", setup=masks("features.5", "keep_out", [3, 3])),
    case("compact-masks-removes-all", "compact", "{bad}", "--out", "{out}", setup=masks("features.0", "keep_out", [])),
    case("compact-masks-intra", "compact", "{bad}", "--out", "{out}", setup=masks("features.2", "intra", [[10, 1]] * 8)),
    case("compact-missing-run", "compact", "{tmp}/nope", "--out", "{out}"),
    case("compact-out-under-file", "compact", "{pruned}", "--out", "{tmp}/afile/x"),
    case("compact-data-does-not-fit", "compact", "{bad}", "--out", "{out}", setup=mnist_elsewhere("pruned")),
    case("compact-damaged-weights", "compact", "{bad}", "--out", "{out}",
         setup=damaged_bytes("pruned", "model.safetensors", lambda b: b[: len(b) // 2])),
    # ---- retrain
    case("retrain-epochs-zero", *RETRAIN[:3], "0", *RETRAIN[4:]),
    case("retrain-epochs-negative", *RETRAIN[:3], "-1", *RETRAIN[4:]),
    case("retrain-epochs-missing", "retrain", "{pruned}", "--out", "{out}"),
    case("retrain-lr-zero", *RETRAIN, "--lr", "0"),
    case("retrain-lr-nan", *RETRAIN, "--lr", "nan"),
    case("retrain-lr-inf", *RETRAIN, "--lr", "inf"),
    case("retrain-wd-negative", *RETRAIN, "--weight-decay", "-1"),
    case("retrain-wd-nan", *RETRAIN, "--weight-decay", "nan"),
    case("retrain-batch-zero", *RETRAIN, "--batch-size", "0"),
    case("retrain-seed-negative", *RETRAIN, "--seed", "-1"),
    case("retrain-masks-floats", "retrain", "{bad}", *RETRAIN[2:], setup=masks("features.0", "keep_out", [0.5, 1.7])),
    case("retrain-no-dataset", "retrain", "{bad}", *RETRAIN[2:], setup=config_without_dataset("pruned")),
    case("retrain-data-does-not-fit", "retrain", "{bad}", *RETRAIN[2:], setup=mnist_elsewhere("pruned")),
    case("retrain-missing-run", "retrain", "{tmp}/nope", *RETRAIN[2:]),
    *([] if torch.cuda.is_available() else [case("retrain-device-cuda-absent", *RETRAIN, "--device", "cuda")]),
    # ---- bench
    case("bench-batch-zero", *BENCH[:4], "--batch", "0", "--no-progress"),
    case("bench-batch-text", *BENCH[:4], "--batch", "1,x", "--no-progress"),
    case("bench-batch-empty", *BENCH[:4], "--batch", ",", "--no-progress"),
    case("bench-batch-twice", *BENCH[:4], "--batch", "1,1", "--no-progress"),
    case("bench-threads-zero", *BENCH, "--threads", "0"),
    case("bench-rounds-zero", *BENCH, "--rounds", "0"),
    case("bench-sample-seconds-zero", *BENCH, "--sample-seconds", "0"),
    case("bench-sample-seconds-nan", *BENCH, "--sample-seconds", "nan"),
    case("bench-reference", *BENCH, "--reference", "masked-dense,bogus"),
    case("bench-clock", *BENCH, "--clock", "sundial"),
    case("bench-runtime", *BENCH, "--runtime", "tvm"),
    case("bench-per-layer-one-run", *BENCH, "--per-layer"),
    case("bench-json-is-folder", *BENCH, "--json", "{tmp}/empty"),
    case("bench-missing-run", "bench", "{tmp}/nope", *BENCH[2:]),
    case("bench-damaged-metrics", "bench", "{bad}", *BENCH[2:], setup=damaged("run", "metrics.json", replaced("fast"))),
    case("bench-damaged-arch", "bench", "{bad}", *BENCH[2:], setup=damaged("run", "arch.json", setitem("kwargs/input_size", 0))),
    # ---- report
    case("report-out-pdf", "report", "{run}", "--out", "{tmp}/r.pdf"),
    case("report-markdown-txt", "report", "{run}", "--out", "{tmp}/r.html", "--markdown", "{tmp}/r.txt"),
    case("report-out-missing", "report", "{run}"),
    case("report-bench-missing", "report", "{run}", "--out", "{tmp}/r.html", "--bench", "{tmp}/none.json"),
    case("report-bench-folder", "report", "{run}", "--out", "{tmp}/r.html", "--bench", "{tmp}/empty"),
    case("report-bench-malformed", "report", "{run}", "--out", "{tmp}/r.html", "--bench", "{tmp}/b.json",
         setup=raw_file("b.json", b'[{"run": "x"}]')),
    case("report-missing-dir", "report", "{tmp}/nope", "--out", "{tmp}/r.html"),
    case("report-damaged-metrics", "report", "{bad}", "--out", "{tmp}/r.html",
         setup=damaged_bytes("run", "metrics.json", lambda b: b[:30])),
    # ---- sensitivity
    case("sensitivity-ratio-above-one", *SENS, "--ratios", "0.5,1.5"),
    case("sensitivity-ratio-zero", *SENS, "--ratios", "0"),
    case("sensitivity-ratio-nan", *SENS, "--ratios", "nan"),
    case("sensitivity-ratio-empty", *SENS, "--ratios", ","),
    case("sensitivity-images-zero", *SENS, "--images", "0"),
    case("sensitivity-granularity", *SENS, "--granularity", "filter"),
    case("sensitivity-method", *SENS, "--method", "pf"),
    case("sensitivity-split", *SENS, "--split", "train"),
    case("sensitivity-seed-negative", *SENS, "--seed", "-1"),
    case("sensitivity-missing-run", "sensitivity", "{tmp}/nope"),
    case("sensitivity-no-dataset", "sensitivity", "{bad}", setup=config_without_dataset("run")),
    case("sensitivity-data-does-not-fit", "sensitivity", "{bad}", setup=mnist_elsewhere()),
    case("sensitivity-damaged-arch", "sensitivity", "{bad}", setup=damaged("run", "arch.json", setitem("modules", 3))),
    case("sensitivity-damaged-masks", "sensitivity", "{bad}", setup=masks("features.0", "keep_out", [0, 0])),
    # ---- reproduce
    case("reproduce-dataset", "reproduce", "imagenet"),
    case("reproduce-no-dataset", "reproduce"),
    case("reproduce-data-missing", "reproduce", "mnist", "--quick", "--data-dir", "{tmp}/nowhere", "--out", "{out}"),
    case("reproduce-from-missing-run", "reproduce", "digits", "--quick", "--from-run", "{tmp}/nope", "--out", "{out}"),
    case("reproduce-from-damaged-run", "reproduce", "digits", "--quick", "--from-run", "{bad}", "--out", "{out}",
         setup=damaged("run", "arch.json", set_modules_to_list)),
]

SUBPROCESS = ["train-lr-nan", "masks-float-indices", "arch-huge-features", "quantize-data-does-not-fit",
              "prune-intra-stride-zero"]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-300])


# ------------------------------------------------------------------------------------------------- machinery
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("bad-input")
    run, pruned, small = base / "run", base / "pruned", base / "compact"
    assert main(["train", "--model", "tiny-paper", "--data", "digits", "--epochs", "1", "--threads", "1",
                 "--no-progress", "--out", str(run)]) == 0
    assert main(["prune", str(run), "--granularity", "channel,intra", "--ratio", "0.5", "--intra-free", "--round-to", "1",
                 "--out", str(pruned)]) == 0
    assert main(["compact", str(pruned), "--out", str(small)]) == 0
    return {"run": run, "pruned": pruned, "compact": small, "base": base}


def snapshot(*roots: Path) -> dict[str, str | None]:
    """path -> sha256 of every file (None for a folder) under `roots`."""
    out: dict[str, str | None] = {}
    for i, root in enumerate(roots):
        for path in sorted(root.rglob("*")):
            out[f"{i}/{path.relative_to(root)}"] = None if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def prepare(c: Case, runs: dict[str, Path], tmp: Path) -> list[str]:
    (tmp / "afile").write_text("a file where a folder is expected\n")
    (tmp / "empty").mkdir()
    if c.setup is not None:
        c.setup(runs, tmp)
    names = {"run": runs["run"], "pruned": runs["pruned"], "compact": runs["compact"], "tmp": tmp,
             "out": tmp / "out", "bad": tmp / "bad"}
    return [a.format(**{k: str(v) for k, v in names.items()}) for a in c.args]


def check_untouched(before: dict[str, str | None], after: dict[str, str | None]) -> None:
    changed = [p for p, h in before.items() if after.get(p, "gone") != h]
    assert not changed, f"changed or removed: {changed}"
    new = [p for p in after if p not in before and not any(part.startswith(".") for part in Path(p).parts)]
    assert not new, f"created: {new}"


def check_one_line(err: str, output: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"stderr is not one line: {err!r}"
    assert lines[0].startswith("structprune: error: "), lines[0]
    assert "Traceback" not in output + err


@pytest.fixture
def cli_logging():
    """The CLI's log handler (INFO and up, on stderr), which pytest's own handlers replace in-process."""
    handler = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield
    root.removeHandler(handler)
    root.setLevel(level)


def test_the_table_is_large_and_every_id_unique():
    assert len(CASES) >= 150
    assert len({c.id for c in CASES}) == len(CASES)
    assert set(SUBPROCESS) <= {c.id for c in CASES}


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_in_one_line(c, runs, tmp_path, capsys, monkeypatch, cli_logging):
    argv = prepare(c, runs, tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STRUCTPRUNE_DATA", raising=False)
    before = snapshot(tmp_path, runs["base"])
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (code, err)
    check_one_line(err, out)
    check_untouched(before, snapshot(tmp_path, runs["base"]))


@pytest.mark.parametrize("id_", SUBPROCESS)
def test_bad_input_in_a_real_process(id_, runs, tmp_path):
    c = next(c for c in CASES if c.id == id_)
    argv = prepare(c, runs, tmp_path)
    before = snapshot(tmp_path, runs["base"])
    env = {k: v for k, v in os.environ.items() if k != "STRUCTPRUNE_DATA"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "structprune", *argv], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    check_one_line(done.stderr, done.stdout)
    check_untouched(before, snapshot(tmp_path, runs["base"]))


# -------------------------------------------------------------------------------- the edges that stay accepted
def test_argument_types_accept_good_values_at_the_edges():
    from structprune.cli.common import SEED_MAX, finite_float, fraction, non_negative_float, positive_float, seed

    assert positive_float("1e30") == 1e30  # large but finite: accepted (NaN and inf are not)
    assert non_negative_float("0") == 0.0 and fraction("0") == 0.0 and finite_float("-2.5") == -2.5
    assert seed("0") == 0 and seed(str(SEED_MAX)) == SEED_MAX


def test_data_of_other_classes_does_not_fit(runs):
    from structprune.data import load_dataset
    from structprune.errors import StructpruneError
    from structprune.models import create
    from structprune.runcheck import check_data_fits

    data = load_dataset("digits", val_size=200)
    check_data_fits(create("tiny-paper", num_classes=10, in_channels=1, input_size=8), data)
    with pytest.raises(StructpruneError, match="has 10 classes, the network outputs 5"):
        check_data_fits(create("tiny-paper", num_classes=5, in_channels=1, input_size=8), data)


def test_a_network_beyond_the_size_limit_is_refused_before_any_allocation():
    from structprune.errors import StructpruneError
    from structprune.models import create
    from structprune.models.registry import MAX_ELEMENTS

    with pytest.raises(StructpruneError, match=f"more than the {MAX_ELEMENTS:,} allowed"):
        create("plain", num_classes=10, in_channels=1, input_size=8, spec="100000C3-100000C3-10FC")  # 9e10 weights
