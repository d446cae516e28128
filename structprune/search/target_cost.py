"""What a structure costs, relative to the unpruned network: the cost models of the target search.

  MacCost      exact MACs from the kept maps: every conv and linear layer's MACs (PyTorch's FLOP counter, as
               `structprune.metrics.count_macs` counts them) scale with its kept input and output maps, and
               with a conv's fast forms (target_forms.py) by 1/G (kernel blocks) and by the taps kept (intra)
  LatencyCost  a per-layer latency model (`LatencyModel`: network_ms of per-conv LayerForms over dense_ms),
               measured on this machine for a runtime, batch and thread count

With fast forms, a LatencyCost prices each conv's kernel blocks and intra shape by the latency model's variants;
a form it has no variant for (it was not measured) is withdrawn from that conv, in one log line.

Both answer `predict(particle) -> float`, the cost of the structure over the dense network's (0.5: half).
The latency model is another module (structprune.latency_model), imported only when a latency model
is measured here; anything with `network_ms(forms)` and `dense_ms()` serves (tests use a synthetic table).
"""

from __future__ import annotations

import importlib
import logging
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
from structprune.search.target_forms import FormChoice
from structprune.search.target_space import LayerCounts, TargetSpace

log = logging.getLogger("structprune.search")

LATENCY_MODEL_MODULE = "structprune.latency_model"
# The latency model a target search measures: as checked against measured networks (benchmarks/latency_model_check.py
# --points 9 --calibration-repeats 3, docs/benchmarks.md): 9 kept-map counts per grid axis, and the calibration
# networks timed in 3 bench runs, so that one slow run does not move every prediction. The layer grids are timed
# in one pass: keeping each shape's fastest of two passes (--grid-repeats 2) put 4 of 20 paper-cifar10 speed-ups
# within 10% at batch 1, against 19 of 20 with one pass minutes later.
TARGET_GRID_POINTS = 9
TARGET_CALIBRATION_REPEATS = 3
TARGET_GRID_REPEATS = 1


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


def _form_share(conv: nn.Module, form: FormChoice) -> float:
    """The share of a conv's MACs (after its kept maps) that its kernel blocks and intra taps keep."""
    share = 1.0 / form.groups
    if form.shape is not None:
        share *= form.shape[0] * form.shape[1] / (conv.kernel_size[0] * conv.kernel_size[1])
    return share


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
        forms = self.space.layer_forms(particle, per_layer)
        total = self.other
        for name, counts in per_layer.items():
            share = _fraction(counts)
            if name in forms:
                share *= _form_share(self.space.model.get_submodule(name), forms[name])
            total += self.layer_macs[name] * share
        return total

    def _predict(self, particle: np.ndarray) -> float:
        return self.macs(particle) / self.dense


def conv_forms(space: TargetSpace, particle: np.ndarray, form: type = ConvForm) -> dict[str, Any]:
    """Per convolution, its LayerForm under the particle: kept input and output maps; G = its kernel blocks (or
    the conv's own groups; 1 for a depthwise conv, whose form stays depthwise); its intra taps."""
    out = {}
    per_layer = space.layer_counts(particle)
    forms = space.layer_forms(particle, per_layer)
    for name, c in per_layer.items():
        if isinstance(space.model.get_submodule(name), nn.Conv2d):
            chosen = forms.get(name, FormChoice())
            groups = 1 if c.depthwise else c.groups * chosen.groups
            out[name] = form(kept_in=c.kept_in, kept_out=c.kept_out, groups=groups, taps=chosen.shape)
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
        self._withdraw_unpriced()

    def _withdraw_unpriced(self) -> None:
        """Withdraw from the space each fast form the latency model cannot price on a conv (one log line per conv)."""
        for name, choice in list(self.space.choices.items()):
            conv = self.space.model.get_submodule(name)
            dense = (conv.in_channels, conv.out_channels)
            tries = [(g, None) for g in choice.blocks[1:]] + [(1, s) for s in choice.shapes[1:] if s is not None]
            missing = []
            for groups, shape in tries:
                try:
                    self.model.network_ms({name: self.form(kept_in=dense[0], kept_out=dense[1], groups=groups,
                                                           taps=shape)})
                except StructpruneError:
                    missing.append((groups, shape))
                    self.space.withdraw(name, groups=groups if shape is None else None, shape=shape)
            if missing:
                names = ", ".join(f"blocks {g}" if s is None else f"intra {s[0]}x{s[1]}" for g, s in missing)
                log.info("target forms: %s: the latency model did not measure %s; not offered there", name, names)

    def ms(self, particle: np.ndarray) -> float:
        return float(self.model.network_ms(conv_forms(self.space, particle, self.form)))

    def _predict(self, particle: np.ndarray) -> float:
        return self.ms(particle) / self.dense


def _latency_model_module(need: str) -> Any:
    """structprune.latency_model, or one line saying what needs it (`need`) when this installation lacks it."""
    try:
        return importlib.import_module(LATENCY_MODEL_MODULE)
    except ImportError:
        raise StructpruneError(f"{need} ({LATENCY_MODEL_MODULE}), which this installation lacks; use --target-macs") from None


def load_latency_model(path: str | Path, runtime: str, batch: int, threads: int) -> Any:
    """A latency model saved by an earlier target run (its latency-model.json), checked to be for this runtime,
    batch and thread count (the target run checks that it knows every convolution of the network)."""
    module = _latency_model_module("reading a latency model needs")
    try:
        model = module.LatencyModel.from_json(read_json(Path(path)))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StructpruneError(f"{path}: not a readable latency model ({exc})") from None
    asked = (runtime, batch, threads)
    if (model.runtime, model.batch, model.threads) != asked:
        raise StructpruneError(f"{path} was measured for {model.runtime}, batch {model.batch}, {model.threads} threads; "
                               f"this target asks for {runtime}, batch {batch}, {threads} threads")
    return model


def measured_latency_cost(space: TargetSpace, input_shape: tuple[int, ...], runtime: str, batch: int, threads: int,
                          round_to: int, cache: Path | None = None) -> LatencyCost:
    """A LatencyCost from a latency model measured on this machine (structprune.latency_model); with `cache`,
    read from that JSON file when it exists, else measured and written there (a resumed run predicts alike)."""
    module = _latency_model_module("speed and latency targets need the per-layer latency model")
    if cache is not None and cache.exists():
        model = module.LatencyModel.from_json(read_json(cache))
    else:
        variants: dict[str, Any] = {}  # only the forms the space offers are timed (channel only: plain convs)
        if not space.block_layers:
            variants["groups"] = (1,)
        if not space.tap_layers:
            variants["taps"] = ()
        model = module.measure_latency_model(space.model, input_shape, runtime=runtime, batch=batch, threads=threads,
                                             round_to=round_to, points=TARGET_GRID_POINTS,
                                             calibration_repeats=TARGET_CALIBRATION_REPEATS,
                                             grid_repeats=TARGET_GRID_REPEATS, **variants)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(cache, model.to_json())
    return LatencyCost(space, model, form=getattr(module, "LayerForm", ConvForm))
