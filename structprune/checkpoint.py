"""Per-epoch training checkpoints: model and optimizer tensors in safetensors, the rest in JSON.

checkpoint.safetensors holds `model.<name>` and `optim.<param index>.<key>` tensors; its metadata
carries the JSON record (epoch, history, config, optimizer scalars), also written to checkpoint.json
for people to read. The safetensors file is written under a temporary name and renamed, so a crash
leaves the previous epoch's checkpoint whole. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from structprune.errors import StructpruneError
from structprune.jsonio import usual_permissions, write_json_atomic
from structprune.runfiles import CHECKPOINT_FILE, CHECKPOINT_JSON

_META_KEY = "structprune_checkpoint"


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state into tensors (for safetensors) and JSON-able values."""
    state = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"scalars": scalars, "param_groups": state["param_groups"]}


def save_checkpoint(folder: str | Path, model: torch.nn.Module, opt: torch.optim.Optimizer, record: dict[str, Any]) -> None:
    """Write the checkpoint of a finished epoch into `folder` (created if needed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    optim_tensors, optim_meta = _optimizer_tensors(opt)
    tensors.update(optim_tensors)
    full = {**record, "optimizer": optim_meta}
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{CHECKPOINT_FILE}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={_META_KEY: json.dumps(full)})
        usual_permissions(tmp)
        os.replace(tmp, folder / CHECKPOINT_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    write_json_atomic(folder / CHECKPOINT_JSON, record)


def has_checkpoint(folder: str | Path | None) -> bool:
    return folder is not None and (Path(folder) / CHECKPOINT_FILE).exists()


def checkpoint_bytes(folder: str | Path | None) -> bytes | None:
    """The checkpoint file of `folder` as bytes (what the main process sends to the others); None without one."""
    if not has_checkpoint(folder):
        return None
    path = Path(folder) / CHECKPOINT_FILE  # type: ignore[arg-type]
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StructpruneError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from None


def _metadata(data: bytes) -> dict[str, str]:
    """The metadata of a safetensors file: an 8-byte little-endian header length, then the JSON header."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    return dict(header.get("__metadata__") or {})


def load_checkpoint(folder: str | Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    data: bytes | None = None) -> dict[str, Any]:
    """Restore model and optimizer from `folder` (or from `data`, the bytes of its checkpoint file, read elsewhere);
    return the record saved with them."""
    path = Path(folder) / CHECKPOINT_FILE
    try:
        data = path.read_bytes() if data is None else data
        full = json.loads(_metadata(data)[_META_KEY])
        tensors = load_safetensors(data)
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError, AttributeError) as exc:
        raise StructpruneError(f"{path}: corrupt checkpoint ({exc}); delete it to start over") from None
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_state, strict=True)
    except RuntimeError as exc:
        raise StructpruneError(f"{path}: does not fit this model ({str(exc).splitlines()[0]})") from None
    optim_meta = full.pop("optimizer")
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, entries in optim_meta["scalars"].items():
        state.setdefault(int(idx), {}).update(entries)
    opt.load_state_dict({"state": state, "param_groups": optim_meta["param_groups"]})
    return full
