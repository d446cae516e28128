"""A measured per-layer latency model of a network over its pruned forms: predictions and the JSON format.

Each convolution (by module name) has grids of measured milliseconds per batch over kept input maps × kept output
maps, one grid per variant: "g1" (the plain convolution), "gG" (kernel blocks: one grouped convolution with G
groups), "gG:KHxKW" (a rectangular intra pattern of KH×KW taps kept of the kernel, with G groups). A layer's time
in a form is the bilinear interpolation of its variant's grid (clamped to the grid's ends). A form with both G > 1
and taps whose variant was not measured is predicted as t(gG) · t(g1:taps) / t(g1) at the same counts.

A network's time is calibrated on whole networks (structprune.latency_model.calibration): with S(forms) the sum
of its convolutions' times in their forms, n_blocks the convolutions with kernel blocks (G other than the conv's
own groups; a depthwise conv never) and n_taps those with an intra shape,
    network_ms(forms) = α · S(forms) + β + γ_blocks · n_blocks + γ_taps · n_taps
where α, β are fitted on the dense network, a few uniformly pruned copies and a few randomly pruned ones (each
channel group keeping a share of its own), the γ's on the half-width copy
with kernel blocks, and with an intra shape, on every conv that may take them; each measured whole. With the
dense network alone (and in a /1 file) α = 1, γ = 0 and β = fixed_ms = the dense network's measured time − its
dense convolutions' times (everything that is not a convolution, less the per-call overhead each standalone
timing carries: it can be negative); a /2 file has no γ's (0).
Limits: the line is fitted on a handful of pruned networks, the γ's on networks formed everywhere; what they do
not show (one layer pruned far more than the others, a form's cost inside the network depending on its width, a
linear layer's input shrinking) is in the error.

JSON ("structprune-latency-model/3"; "/1" and "/2" files still read):
  {"format", "runtime", "batch", "threads", "input_shape": [C, H, W], "network_dense_ms",
   "calibration": [{"name", "keep", "conv_ms", "network_ms", "blocks", "taps"}], "alpha", "beta_ms",
   "gamma_blocks_ms", "gamma_taps_ms", "fixed_ms" (the last five derived, informative),
   "layers": {name: {"in_channels", "out_channels", "kernel": [kh, kw], "output_size": [H_out, W_out],
   "depthwise": bool, "groups": the conv's own groups (1 when absent),
   "grids": {variant: {"in": [counts], "out": [counts], "ms": [[ms per out] per in]}}}}}
A depthwise layer keeps its depthwise form (kept_in == kept_out); its grids have "in": [1] (one map per group).
A variant's G counts kernel blocks within the conv's own groups ("g1": its own groups); a LayerForm's groups are
the convolution's groups in all (as compaction writes them).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from structprune.errors import StructpruneError
from structprune.latency_model.calibration import CalibrationPoint, Coefficients, fit_calibration

MODEL_FORMAT = "structprune-latency-model/3"
READ_FORMATS = ("structprune-latency-model/1", "structprune-latency-model/2", MODEL_FORMAT)
MODEL_RUNTIMES = ("onnxruntime", "eager")
_VARIANT = re.compile(r"^g([1-9][0-9]*)(?::([1-9][0-9]*)x([1-9][0-9]*))?$")


@dataclass(frozen=True)
class LayerForm:
    """One convolution's pruned form."""

    kept_in: int  # input maps read
    kept_out: int  # output maps written
    groups: int = 1  # kernel blocks G (a grouped convolution), 1 = none
    taps: tuple[int, int] | None = None  # (kh, kw) of a rectangular intra pattern kept of the kernel; None = full


def variant_key(groups: int, taps: tuple[int, int] | None) -> str:
    """'g1', 'g2', 'g1:3x1', ... the name of a measured grid."""
    return f"g{groups}" if taps is None else f"g{groups}:{taps[0]}x{taps[1]}"


def parse_variant(key: str) -> tuple[int, tuple[int, int] | None]:
    match = _VARIANT.match(key)
    if match is None:
        raise ValueError(f"{key!r} is not a variant name (gG or gG:KHxKW)")
    groups, kh, kw = match.groups()
    return int(groups), None if kh is None else (int(kh), int(kw))


@dataclass
class Grid:
    """Measured ms over kept input maps (rows) × kept output maps (columns)."""

    ins: list[int]
    outs: list[int]
    ms: list[list[float]]

    def __post_init__(self) -> None:
        self._arrays = (np.asarray(self.ins, float), np.asarray(self.outs, float), np.asarray(self.ms, float))

    def at(self, kept_in: float, kept_out: float) -> float:
        """Bilinear interpolation, clamped to the grid's ends."""
        ins, outs, ms = self._arrays
        i = int(np.clip(np.searchsorted(ins, kept_in) - 1, 0, max(len(ins) - 2, 0)))
        rows = ms[i:i + 2]
        by_in = [float(np.interp(kept_out, outs, row)) for row in rows]
        return float(np.interp(kept_in, ins[i:i + 2], by_in))

    def to_json(self) -> dict[str, Any]:
        return {"in": list(self.ins), "out": list(self.outs), "ms": [list(r) for r in self.ms]}

    @classmethod
    def from_json(cls, data: Any, where: str) -> Grid:
        if not isinstance(data, dict):
            raise ValueError(f"{where}: a grid must be an object")
        ins, outs, ms = data["in"], data["out"], data["ms"]
        for axis in (ins, outs):
            if (not isinstance(axis, list) or not axis or not all(_is_int(v, 1) for v in axis)
                    or any(b <= a for a, b in itertools.pairwise(axis))):
                raise ValueError(f"{where}: kept-map counts must be increasing positive integers")
        if (not isinstance(ms, list) or len(ms) != len(ins)
                or not all(isinstance(r, list) and len(r) == len(outs) for r in ms)):
            raise ValueError(f"{where}: ms must be {len(ins)}×{len(outs)}")
        times = [[_finite(v, where) for v in row] for row in ms]
        return cls(list(ins), list(outs), times)


@dataclass
class LayerTimes:
    """One convolution: its dense shape and its measured grids by variant name."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    output_size: tuple[int, int] = (1, 1)  # (H, W) of its output maps in the network
    depthwise: bool = False
    grids: dict[str, Grid] = field(default_factory=dict)
    groups: int = 1  # the conv's own groups (a depthwise conv: 1, it keeps its form)

    def dense_form(self) -> LayerForm:
        return LayerForm(self.in_channels, self.out_channels, self.groups)

    def blocked(self, form: LayerForm) -> bool:
        """Whether `form` has kernel blocks: G other than the conv's own groups (never on a depthwise conv)."""
        return not self.depthwise and form.groups > 1 and form.groups != self.groups

    def to_json(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels, "kernel": list(self.kernel),
                "output_size": list(self.output_size), "depthwise": self.depthwise, "groups": self.groups,
                "grids": {k: g.to_json() for k, g in self.grids.items()}}

    @classmethod
    def from_json(cls, data: Any, name: str) -> LayerTimes:
        if not isinstance(data, dict):
            raise ValueError(f"{name}: a layer must be an object")
        cin, cout, kernel, depthwise = data["in_channels"], data["out_channels"], data["kernel"], data["depthwise"]
        size = data["output_size"]
        if not (_is_int(cin, 1) and _is_int(cout, 1)):
            raise ValueError(f"{name}: in_channels and out_channels must be positive integers")
        for what, pair in (("kernel", kernel), ("output_size", size)):
            if not (isinstance(pair, list) and len(pair) == 2 and all(_is_int(k, 1) for k in pair)):
                raise ValueError(f"{name}: {what} must be a pair of positive integers")
        if not isinstance(depthwise, bool):
            raise ValueError(f"{name}: depthwise must be true or false")
        groups = data.get("groups", 1)
        if not _is_int(groups, 1) or cin % groups or cout % groups:
            raise ValueError(f"{name}: groups must be a positive integer dividing its maps, not {groups!r}")
        grids = data["grids"]
        if not isinstance(grids, dict) or "g1" not in grids:
            raise ValueError(f"{name}: grids must be an object holding at least 'g1'")
        for key in grids:
            parse_variant(key)
        return cls(cin, cout, (kernel[0], kernel[1]), (size[0], size[1]), depthwise,
                   {k: Grid.from_json(g, f"{name} {k}") for k, g in grids.items()}, groups)


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _finite(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}: {value!r} is not a finite number")
    return float(value)


@dataclass
class LatencyModel:
    """Predicted time of a network in any of its pruned forms (module doc), for one runtime, batch and threads."""

    runtime: str  # "onnxruntime" or "eager"
    batch: int
    threads: int
    input_shape: tuple[int, ...] = ()
    layers: dict[str, LayerTimes] = field(default_factory=dict)
    network_dense_ms: float = 0.0  # the dense network, measured whole
    calibration: list[CalibrationPoint] = field(default_factory=list)  # whole networks measured; none: the dense one

    @property
    def fixed_ms(self) -> float:
        """The dense network's measured time minus its dense convolutions' (β when nothing else is calibrated)."""
        return self.network_dense_ms - self.conv_ms({})

    def coefficients(self) -> Coefficients:
        """(α, β, γ_blocks, γ_taps) of network_ms = α · Σ convolutions + β + γ_blocks · n_blocks + γ_taps · n_taps
        (module doc)."""
        if self.calibration:
            return fit_calibration(self.calibration)
        return Coefficients(1.0, self.fixed_ms)

    def _layer(self, layer: str) -> LayerTimes:
        if layer not in self.layers:
            raise StructpruneError(f"the latency model has no convolution {layer!r}")
        return self.layers[layer]

    def layer_ms(self, layer: str, form: LayerForm) -> float:
        """Predicted milliseconds per batch of convolution `layer` in `form`."""
        times = self._layer(layer)
        if not (_is_int(form.kept_in, 1) and _is_int(form.kept_out, 1) and _is_int(form.groups, 1)):
            raise StructpruneError(f"{layer}: kept maps and groups must be positive integers, not {form}")
        if form.kept_in > times.in_channels or form.kept_out > times.out_channels:
            raise StructpruneError(f"{layer}: {form.kept_in}×{form.kept_out} kept maps exceed the layer's "
                                   f"{times.in_channels}×{times.out_channels}")
        kept_in: float = form.kept_in
        if times.depthwise:
            if form.kept_in != form.kept_out:
                raise StructpruneError(f"{layer}: a depthwise convolution keeps as many input maps as output maps "
                                       f"({form.kept_in} != {form.kept_out})")
            kept_in = 1
        taps = self._taps(layer, times, form.taps)
        blocks = form.groups
        if times.groups > 1:  # a grouped conv: G counts blocks within its own groups
            if form.groups % times.groups:
                raise StructpruneError(f"{layer}: {form.groups} groups do not split its own {times.groups}")
            blocks = form.groups // times.groups
        key = variant_key(blocks, taps)
        if key in times.grids:
            return times.grids[key].at(kept_in, form.kept_out)
        base, shape = f"g{blocks}", variant_key(1, taps)
        if taps is not None and base in times.grids and shape in times.grids:
            plain = times.grids["g1"].at(kept_in, form.kept_out)
            ratio = times.grids[shape].at(kept_in, form.kept_out) / plain if plain > 0 else 1.0
            return times.grids[base].at(kept_in, form.kept_out) * ratio
        measured = ", ".join(sorted(times.grids))
        raise StructpruneError(f"{layer}: form {key} was not measured (measured: {measured})")

    @staticmethod
    def _taps(layer: str, times: LayerTimes, taps: tuple[int, int] | None) -> tuple[int, int] | None:
        if taps is None or tuple(taps) == times.kernel:
            return None
        if len(taps) != 2 or not all(_is_int(t, 1) for t in taps) or taps[0] > times.kernel[0] \
                or taps[1] > times.kernel[1]:
            raise StructpruneError(f"{layer}: taps {taps} do not fit its {times.kernel[0]}×{times.kernel[1]} kernel")
        return (taps[0], taps[1])

    def conv_ms(self, forms: dict[str, LayerForm]) -> float:
        """Σ of the convolutions' predicted times: those in `forms` in their forms, the others dense."""
        unknown = sorted(set(forms) - set(self.layers))
        if unknown:
            raise StructpruneError(f"the latency model has no convolution {unknown[0]!r}")
        return sum(self.layer_ms(n, forms.get(n, t.dense_form())) for n, t in self.layers.items())

    def form_counts(self, forms: dict[str, LayerForm]) -> tuple[int, int]:
        """(convolutions with kernel blocks, convolutions with an intra shape) among `forms`."""
        blocks = sum(self._layer(n).blocked(f) for n, f in forms.items())
        taps = sum(self._taps(n, self._layer(n), f.taps) is not None for n, f in forms.items())
        return blocks, taps

    def network_ms(self, forms: dict[str, LayerForm]) -> float:
        """Predicted whole network, the convolutions in `forms` in their forms, the others dense:
        α · Σ + β + γ_blocks · n_blocks + γ_taps · n_taps."""
        return self.coefficients().predict(self.conv_ms(forms), *self.form_counts(forms))

    def dense_ms(self) -> float:
        """Predicted dense network (the measured one without calibration; else on the fitted line)."""
        return self.network_ms({})

    def to_json(self) -> dict[str, Any]:
        c = self.coefficients()
        return {"format": MODEL_FORMAT, "runtime": self.runtime, "batch": self.batch, "threads": self.threads,
                "input_shape": list(self.input_shape), "network_dense_ms": self.network_dense_ms,
                "calibration": [p.to_json() for p in self.calibration], "alpha": c.alpha, "beta_ms": c.beta,
                "gamma_blocks_ms": c.gamma_blocks, "gamma_taps_ms": c.gamma_taps, "fixed_ms": self.fixed_ms,
                "layers": {n: t.to_json() for n, t in self.layers.items()}}

    @classmethod
    def from_json(cls, data: Any) -> LatencyModel:
        if not isinstance(data, dict) or data.get("format") not in READ_FORMATS:
            raise StructpruneError(f"not a latency model (format {MODEL_FORMAT!r} expected)")
        try:
            runtime, batch, threads = data["runtime"], data["batch"], data["threads"]
            if runtime not in MODEL_RUNTIMES:
                raise ValueError(f"runtime must be one of {', '.join(MODEL_RUNTIMES)}")
            if not (_is_int(batch, 1) and _is_int(threads, 1)):
                raise ValueError("batch and threads must be positive integers")
            shape = data["input_shape"]
            if not isinstance(shape, list) or not all(_is_int(v, 1) for v in shape):
                raise ValueError("input_shape must be a list of positive integers")
            dense = _finite(data["network_dense_ms"], "network_dense_ms")
            points = data["calibration"] if data["format"] != READ_FORMATS[0] else []  # /1: the dense network only
            if not isinstance(points, list):
                raise ValueError("calibration must be a list")
            calibration = [CalibrationPoint.from_json(p) for p in points]
            layers = data["layers"]
            if not isinstance(layers, dict) or not layers:
                raise ValueError("layers must be a non-empty object")
            parsed = {str(n): LayerTimes.from_json(t, str(n)) for n, t in layers.items()}
        except KeyError as exc:
            raise StructpruneError(f"malformed latency model (missing {exc})") from None
        except (TypeError, ValueError) as exc:
            raise StructpruneError(f"malformed latency model ({exc})") from None
        return cls(runtime, batch, threads, tuple(shape), parsed, dense, calibration)
