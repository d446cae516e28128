"""Run folders, the contract between stages.

A run folder holds:
  model.safetensors  the weights (never a pickle)
  arch.json          enough to rebuild the network, pruned and compact shapes included (see `arch.py`)
  metrics.json       val_mcr, test_mcr (fractions), params, macs, weight_bytes, ...
  config.json        how the run was made (command, dataset, hyper-parameters)
Other stages add their own files (masks.json, search.json, ...). A run folder is written under a
temporary name beside its destination and renamed into place, so a crash never leaves half of one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from structprune.arch import describe, rebuild
from structprune.errors import StructpruneError
from structprune.jsonio import read_json, write_json_atomic

MODEL_FILE = "model.safetensors"
ARCH_FILE = "arch.json"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"


@dataclass
class Run:
    """A loaded run folder."""

    path: Path
    model: torch.nn.Module
    arch: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def read_extra(self, name: str) -> Any | None:
        """Read an optional JSON file of the run (e.g. masks.json); None when absent."""
        target = self.path / name
        return read_json(target) if target.exists() else None


def check_writable_destination(out_dir: str | Path, file: bool = False) -> Path:
    """Fail early, with one line, when `out_dir` cannot be created or written (`file`: a file to write or
    overwrite, e.g. a JSON report, rather than a folder)."""
    out = Path(out_dir)
    parent = out.resolve().parent
    if file and out.is_dir():
        raise StructpruneError(f"{out}: is a folder, not a file")
    if not file and out.exists() and not out.is_dir():
        raise StructpruneError(f"{out}: exists and is not a folder")
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise StructpruneError(f"{out}: cannot create it ({probe} is a file, not a folder)")
    if not os.access(probe, os.W_OK):
        raise StructpruneError(f"{out}: cannot write here ({probe} is not writable)")
    return out


@contextmanager
def staged_run_folder(out_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `out_dir`; on success it replaces `out_dir` atomically.

    On any exception the temporary folder is removed and `out_dir` is left as it was.
    """
    out = check_writable_destination(out_dir)
    out.resolve().parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.resolve().parent, prefix=f".{out.name}.tmp-"))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; a run folder gets the usual permissions
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.resolve().parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / "run")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_run_files(
    folder: str | Path,
    model: torch.nn.Module,
    arch: dict[str, Any],
    metrics: dict[str, Any],
    config: dict[str, Any],
    extra_json: dict[str, Any] | None = None,
) -> None:
    """Write the standard files (and any extra JSON files) of a run into an existing folder."""
    folder = Path(folder)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / MODEL_FILE), metadata={"format": "structprune"})
    write_json_atomic(folder / ARCH_FILE, arch)
    write_json_atomic(folder / METRICS_FILE, metrics)
    write_json_atomic(folder / CONFIG_FILE, config)
    for name, data in (extra_json or {}).items():
        write_json_atomic(folder / name, data)


def save_run(
    out_dir: str | Path,
    model: torch.nn.Module,
    arch: dict[str, Any] | None,
    metrics: dict[str, Any],
    config: dict[str, Any],
    extra_json: dict[str, Any] | None = None,
    extra_files: dict[str, str | Path] | None = None,
) -> Path:
    """Save a complete run folder atomically. `arch=None` describes `model` afresh."""
    arch = arch if arch is not None else describe(model)
    with staged_run_folder(out_dir) as tmp:
        write_run_files(tmp, model, arch, metrics, config, extra_json)
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, tmp / name)
    return Path(out_dir)


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors state dict, with a one-line error for missing or corrupt files."""
    path = Path(path)
    if not path.exists():
        raise StructpruneError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StructpruneError(f"{path}: corrupt or truncated safetensors file ({first})") from None


def load_run(run_dir: str | Path) -> Run:
    """Rebuild the network of a run folder and load its weights. Nothing is unpickled."""
    path = Path(run_dir)
    if not path.is_dir():
        raise StructpruneError(f"{path}: no such run folder")
    if not (path / MODEL_FILE).exists():
        raise StructpruneError(f"{path}: not a run folder with a trained model ({MODEL_FILE} missing)")
    arch = read_json(path / ARCH_FILE)
    model = rebuild(arch, source=str(path / ARCH_FILE))
    state = load_state(path / MODEL_FILE)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise StructpruneError(f"{path / MODEL_FILE}: does not match {ARCH_FILE} ({first})") from None
    model.eval()
    metrics = read_json(path / METRICS_FILE) if (path / METRICS_FILE).exists() else {}
    config = read_json(path / CONFIG_FILE) if (path / CONFIG_FILE).exists() else {}
    return Run(path=path, model=model, arch=arch, metrics=metrics, config=config)
