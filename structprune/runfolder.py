"""Run folders, the contract between stages.

A run folder holds:
  model.safetensors  the weights (never a pickle)
  arch.json          enough to rebuild the network, pruned and compact shapes included (see `arch.py`)
  metrics.json       val_mcr, test_mcr (fractions), params, macs, weight_bytes, ...
  config.json        how the run was made (command, dataset, hyper-parameters)
Other stages add their own files (masks.json, search.json, ...). A run folder is written in structprune's
staging area beside its destination and renamed into place, so a crash never leaves half of one; where a
command may write, and what it never replaces, is structprune.output's policy.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from structprune.arch import describe
from structprune.data import Dataset, load_dataset
from structprune.errors import StructpruneError
from structprune.jsonio import read_json, usual_permissions, write_json_atomic
from structprune.output import Output, claim_folder, fingerprint_files
from structprune.rebuild import load_weights, rebuild
from structprune.runfiles import (
    ARCH_FILE,
    CONFIG_FILE,
    MASKS_FILE,
    METRICS_FILE,
    MODEL_FILE,
    ONNX_FILE,
    PACKED_FILE,
    SCHEMA_VERSION,
)


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


def as_output(out: str | Path | Output, verb: str, inputs: tuple[str | Path, ...] = ()) -> Output:
    """`out` as a claimed destination: an Output is used as it is; a path is claimed for `verb` under the default
    policy (a new or empty folder; nothing is ever replaced without `claim_folder(..., overwrite=True)`)."""
    return out if isinstance(out, Output) else claim_folder(out, verb, inputs=inputs)


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
    usual_permissions(folder / MODEL_FILE)  # safetensors writes it private
    write_json_atomic(folder / ARCH_FILE, arch)
    write_json_atomic(folder / METRICS_FILE, metrics)
    write_json_atomic(folder / CONFIG_FILE, config)
    for name, data in (extra_json or {}).items():
        write_json_atomic(folder / name, data)


def save_run(
    out: Output | str | Path,
    model: torch.nn.Module,
    arch: dict[str, Any] | None,
    metrics: dict[str, Any],
    config: dict[str, Any],
    extra_json: dict[str, Any] | None = None,
    extra_files: dict[str, str | Path] | None = None,
) -> Path:
    """Save a complete run folder atomically (staged, then renamed into place; see structprune.output).
    `arch=None` describes `model` afresh. `config["verb"]` is set to the verb the destination was claimed for."""
    output = as_output(out, str(config.get("verb", "run")))
    arch = arch if arch is not None else describe(model)
    with output.publish() as tmp:
        write_run_files(tmp, model, arch, metrics, {**config, "verb": output.verb, "schema": SCHEMA_VERSION}, extra_json)
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, tmp / name)
    return output.path


def recorded_dataset(config: dict[str, Any], data_dir: str | Path | None = None,
                     name: str | None = None) -> Dataset | None:
    """The dataset and validation split a run's config.json records (`name` overrides its dataset, `data_dir` its
    folder); None when it records none."""
    name = name or config.get("dataset")
    if not name:
        return None
    seed = int(config.get("train", {}).get("seed", config.get("seed", 0)))
    return load_dataset(str(name), data_dir if data_dir is not None else config.get("data_dir"),
                        val_size=config.get("val_size"), seed=seed)


def source_links(config: dict[str, Any]) -> list[str]:
    """The runs a run was made from, as its stages recorded them: prune, compact, search write source_run,
    quantize writes source, retrain writes retrain.source_run (and keeps its input's links)."""
    nested = config.get("retrain") if isinstance(config.get("retrain"), dict) else {}
    return [str(v) for v in (config.get("source_run"), config.get("source"), nested.get("source_run")) if v]


def _locate(link: str, near: Path) -> Path | None:
    """The folder a link names: the path as written, else a sibling of `near` with that name (a relative path
    was relative to wherever the stage ran)."""
    return next((f for f in (Path(link), near.parent / Path(link).name) if f.is_dir()), None)


def source_chain(run_dir: str | Path, config: dict[str, Any] | None = None,
                 strict: bool = True) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The run and the runs it was made from, nearest first, each with its config.json ({} where it has none):
    retrained <- compact <- pruned <- trained. `config`: the run's own, when already read. Ends at a run that
    records no source, or whose sources lead back into the chain; a source folder that is gone ends it too, or,
    when `strict`, raises StructpruneError naming it."""
    current = Path(run_dir)
    if config is None:
        config = read_json(current / CONFIG_FILE) if (current / CONFIG_FILE).is_file() else {}
    seen = {current.resolve()}
    while True:
        yield current, config
        links = source_links(config)
        located = [_locate(link, current) for link in links]
        found = [f for f in located if f is not None and f.resolve() not in seen]
        if not found:
            missing = [link for link, f in zip(links, located, strict=True) if f is None]
            if missing and strict:
                raise StructpruneError(f"{current}: the run it was made from ({missing[0]}) is not found")
            return
        current = found[0]
        seen.add(current.resolve())
        config = read_json(current / CONFIG_FILE) if (current / CONFIG_FILE).is_file() else {}


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
    load_weights(model, state, f"{path / MODEL_FILE}: does not match {ARCH_FILE}")
    metrics = read_json(path / METRICS_FILE) if (path / METRICS_FILE).exists() else {}
    config = read_json(path / CONFIG_FILE) if (path / CONFIG_FILE).exists() else {}
    return Run(path=path, model=model, arch=arch, metrics=metrics, config=config)


RUN_CONTENT = (MODEL_FILE, ARCH_FILE, MASKS_FILE, PACKED_FILE, ONNX_FILE)  # what defines a run's network


def run_fingerprint(path: str | Path) -> str:
    """A hash of what a later stage depends on: a run's weights, structure and masks (not its reports or
    metrics, which later stages may add to)."""
    path = Path(path)
    return fingerprint_files(*(path / name for name in RUN_CONTENT if (path / name).is_file()))
