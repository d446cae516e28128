"""What a structure costs, relative to the unpruned network: the cost models of the target search.

  MacCost      exact MACs from the kept maps: every conv and linear layer's MACs (PyTorch's FLOP counter, as
               `structprune.metrics.count_macs` counts them) scale with its kept input and output maps
  LatencyCost  a per-layer latency model (`LatencyModel`: network_ms of per-conv LayerForms over dense_ms),
               measured on this machine for a runtime, batch and thread count

Both answer `predict(particle) -> float`, the cost of the structure over the dense network's (0.5: half).
The latency model is another module (structprune.latency_model), imported only when a latency model
is measured here; anything with `network_ms(forms)` and `dense_ms()` serves (tests use a synthetic table).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch import nn

from structprune.errors import StructpruneError
from structprune.jsonio import read_json, write_json_atomic
from structprune.layers import layer_table
from structprune.metrics import count_macs
from structprune.search.target_space import LayerCounts, TargetSpace

LATENCY_MODEL_MODULE = "structprune.latency_model"


class CostModel(Protocol):
    """A structure's cost relative to the dense network."""

    kind: str  # "macs" or "latency"
    unit: str  # of `dense`: "macs" or "ms"
    dense: float  # the dense network's cost, in `unit`

    def predict(self, particle: np.ndarray) -> float: ...


class LatencyModelLike(Protocol):
    """What the target search needs of a latency model (structprune.latency_model.LatencyModel)."""

    def network_ms(self, forms: dict[str, Any]) -> float: ...

    def dense_ms(self) -> float: ...


@dataclass(frozen=True)
class ConvForm:
    """A conv as compacted, with the fields of structprune.latency_model.LayerForm: kept maps, kernel blocks G
    (1: none; a depthwise conv keeps its depthwise form with G = 1 and kept_in == kept_out), intra taps."""

    kept_in: int
    kept_out: int
    groups: int = 1
    taps: tuple[int, int] | None = None


class _Memo(ABC):
    """predict() of a cost model, computed once per distinct structure."""

    def __init__(self) -> None:
        self._seen: dict[bytes, float] = {}

    def predict(self, particle: np.ndarray) -> float:
        key = np.asarray(particle, dtype=np.int16).tobytes()
        if key not in self._seen:
            self._seen[key] = self._predict(np.asarray(particle, dtype=np.int16))
        return self._seen[key]

    @abstractmethod
    def _predict(self, particle: np.ndarray) -> float: ...


def _fraction(counts: LayerCounts) -> float:
    """The share of a layer's MACs that its kept maps keep."""
    out = counts.kept_out / counts.dense_out
    return out if counts.depthwise else out * counts.kept_in / counts.dense_in


class MacCost(_Memo):
    """Exact MACs of the compact network over the dense network's, for one image."""

    kind, unit = "macs", "macs"

    def __init__(self, space: TargetSpace, input_shape: tuple[int, ...]):
        super().__init__()
        self.space = space
        rows = {row["name"]: row["macs"] for row in layer_table(space.model, input_shape)}
        self.layer_macs = {name: int(rows.get(name, 0)) for name in space.layers}
        self.dense = float(count_macs(space.model, input_shape))
        if self.dense <= 0:
            raise StructpruneError(f"{type(space.model).__name__}: no multiply-accumulates to reduce")
        self.other = self.dense - sum(self.layer_macs.values())  # anything the layers do not own

    def macs(self, particle: np.ndarray) -> float:
        per_layer = self.space.layer_counts(particle)
        return self.other + sum(self.layer_macs[n] * _fraction(c) for n, c in per_layer.items())

    def _predict(self, particle: np.ndarray) -> float:
        return self.macs(particle) / self.dense


def conv_forms(space: TargetSpace, particle: np.ndarray, form: type = ConvForm) -> dict[str, Any]:
    """Per convolution, its LayerForm under the particle: kept input and output maps; G = the conv's groups
    (1 for a plain or depthwise conv, whose form stays depthwise)."""
    out = {}
    for name, c in space.layer_counts(particle).items():
        if isinstance(space.model.get_submodule(name), nn.Conv2d):
            out[name] = form(kept_in=c.kept_in, kept_out=c.kept_out, groups=1 if c.depthwise else c.groups)
    return out


class LatencyCost(_Memo):
    """Predicted latency of the compact network over the dense network's, from a per-layer latency model."""

    kind, unit = "latency", "ms"

    def __init__(self, space: TargetSpace, model: LatencyModelLike, form: type = ConvForm):
        super().__init__()
        self.space, self.model, self.form = space, model, form
        self.dense = float(model.dense_ms())
        if not self.dense > 0:
            raise StructpruneError("the latency model predicts no time for the dense network")

    def ms(self, particle: np.ndarray) -> float:
        return float(self.model.network_ms(conv_forms(self.space, particle, self.form)))

    def _predict(self, particle: np.ndarray) -> float:
        return self.ms(particle) / self.dense


def measured_latency_cost(space: TargetSpace, input_shape: tuple[int, ...], runtime: str, batch: int, threads: int,
                          round_to: int, cache: Path | None = None) -> LatencyCost:
    """A LatencyCost from a latency model measured on this machine (structprune.latency_model); with `cache`,
    read from that JSON file when it exists, else measured and written there (a resumed run predicts alike)."""
    try:
        module = importlib.import_module(LATENCY_MODEL_MODULE)
    except ImportError:
        raise StructpruneError(f"speed and latency targets need the per-layer latency model ({LATENCY_MODEL_MODULE}), "
                               "which this installation lacks; use --target-macs") from None
    if cache is not None and cache.exists():
        model = module.LatencyModel.from_json(read_json(cache))
    else:
        model = module.measure_latency_model(space.model, input_shape, runtime=runtime, batch=batch, threads=threads,
                                             round_to=round_to)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(cache, model.to_json())
    return LatencyCost(space, model, form=getattr(module, "LayerForm", ConvForm))
