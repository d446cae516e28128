"""Where a search stands, saved in its output folder's staging area so the same command resumes it.

state/model.safetensors (saved at the start of every rung) and state/driver.json: where the search stands and,
after every generation, the particle filter of the current rung, written together in one atomic write so that
a kill can never leave a filter ahead of the history that records it. search.json (every generation and rung
so far) is rewritten atomically beside them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from structprune.errors import StructpruneError
from structprune.jsonio import read_json, write_json_atomic
from structprune.runfiles import MODEL_FILE, SEARCH_STATE_FILE
from structprune.runfolder import load_state
from structprune.sparsity.masks import NetworkMask


@dataclass
class DriverState:
    """Where a search stands; saved as state/driver.json with the model weights beside it."""

    step: int = 0  # index into the (step kind, unit) plan
    rung: int = 0  # index into that step's ladder (rebuilt from the mask on resume)
    mask: dict[str, Any] = field(default_factory=lambda: NetworkMask().to_json())
    steps: list[dict[str, Any]] = field(default_factory=list)  # one record per rung tried
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per PF generation
    base_check_mcr: float | None = None
    base_check_wrong: list[int] | None = None  # the check images the unpruned network gets wrong (paired check)
    final_done: bool = False


class StateFolder:
    """The files of a search's state, keyed by a fingerprint of its settings (a mismatch is refused)."""

    def __init__(self, path: Path, fingerprint: dict[str, Any]):
        self.path, self.fingerprint = path, json.loads(json.dumps(fingerprint))  # as saved
        self.pf: dict[str, Any] | None = None  # {"step", "rung", "pf"}: the current rung's filter after a generation

    def save(self, model: nn.Module, state: DriverState) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        tmp = self.path / f".{MODEL_FILE}.tmp"
        save_file(weights, str(tmp))
        tmp.replace(self.path / MODEL_FILE)
        self.save_driver(state)

    def save_driver(self, state: DriverState) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path / SEARCH_STATE_FILE, {**self.fingerprint, "state": asdict(state), "pf": self.pf})

    def save_pf(self, state: DriverState, pf_state: dict[str, Any]) -> None:
        """After a generation: the filter with the driver's history, in one write (the weights do not change
        during a rung)."""
        self.pf = {"step": state.step, "rung": state.rung, "pf": pf_state}
        self.save_driver(state)

    def load_pf(self, state: DriverState) -> dict[str, Any] | None:
        """The saved filter of the current rung, if any."""
        saved = self.pf
        return saved["pf"] if saved and saved.get("step") == state.step and saved.get("rung") == state.rung else None

    def drop_pf(self) -> None:
        """The rung is over: its filter is not saved again (the next driver write clears it)."""
        self.pf = None

    def load(self, model: nn.Module) -> DriverState | None:
        """The saved state (and weights into `model`), or None when there is none."""
        path = self.path / SEARCH_STATE_FILE
        if not path.exists():
            return None
        saved = read_json(path)
        if {k: saved.get(k) for k in self.fingerprint} != self.fingerprint:
            raise StructpruneError(f"{self.path} holds a search with other settings; pass --restart to discard it")
        model.load_state_dict(load_state(self.path / MODEL_FILE))
        self.pf = saved.get("pf")
        return DriverState(**saved["state"])
