"""A measured per-layer latency table, for a search that trades accuracy against real time.

For every convolution, the time of `F.conv2d` is measured on this machine (torch.utils.benchmark.Timer,
median of blocked runs) on a grid of kept input maps × kept output maps, at the layer's input size and a
given batch. A channel mask's latency is predicted by bilinear interpolation in each layer's grid and summed
over layers (convolutions only: pooling, activations and FC layers are not in the table).

Latency-aware objective of a candidate (lower is better):
    score = MCR + tie · cross-entropy + λ · predicted conv latency in milliseconds per batch
λ is in MCR per millisecond: λ = 0.001 makes 1 ms worth 0.1 points of MCR. Within one layer-by-layer rung
every candidate keeps the same number of maps, so the term matters in the global search (`--scope global`),
where the filter decides how many maps each layer keeps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.benchmark import Timer

from structprune.errors import StructpruneError
from structprune.search.scoring import conv_layers

log = logging.getLogger(__name__)
LATENCY_FORMAT = "structprune-latency/1"
DEFAULT_FRACTIONS = (0.125, 0.25, 0.5, 0.75, 1.0)


@dataclass
class LatencyTable:
    """layer -> grid of kept input counts × kept output counts -> milliseconds per batch."""

    batch: int
    threads: int
    layers: dict[str, dict[str, list]] = field(default_factory=dict)  # {"in": [..], "out": [..], "ms": [[..]]}

    def predict(self, layer: str, kept_in: float, kept_out: float) -> float:
        """Bilinear interpolation (clamped to the grid) of the layer's time in ms."""
        if layer not in self.layers:
            raise StructpruneError(f"latency table has no layer {layer!r}")
        grid = self.layers[layer]
        ins, outs, ms = np.array(grid["in"], float), np.array(grid["out"], float), np.array(grid["ms"], float)
        by_in = np.array([np.interp(kept_out, outs, row) for row in ms])  # [len(ins)]
        return float(np.interp(kept_in, ins, by_in))

    def network_ms(self, kept: dict[str, tuple[float, float]]) -> float:
        """Sum of predicted times for {layer: (kept input maps, kept output maps)}."""
        return sum(self.predict(name, i, o) for name, (i, o) in kept.items())

    def to_json(self) -> dict[str, Any]:
        return {"format": LATENCY_FORMAT, "batch": self.batch, "threads": self.threads, "layers": self.layers}

    @classmethod
    def from_json(cls, data: Any) -> LatencyTable:
        if not isinstance(data, dict) or data.get("format") != LATENCY_FORMAT:
            raise StructpruneError(f"not a latency table (format {LATENCY_FORMAT!r} expected)")
        try:
            batch, threads, layers = data["batch"], data["threads"], data["layers"]
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (batch, threads)):
                raise ValueError("batch and threads must be positive integers")
            if not isinstance(layers, dict):
                raise ValueError("layers must be an object")
            for name, grid in layers.items():
                _check_grid(name, grid)
        except (KeyError, TypeError, ValueError) as exc:
            raise StructpruneError(f"malformed latency table ({exc})") from None
        return cls(batch=batch, threads=threads, layers=dict(layers))


def _check_grid(name: str, grid: Any) -> None:
    """{"in": [..], "out": [..], "ms": [[..] per in]}: increasing counts, finite non-negative times."""
    ins, outs, ms = grid["in"], grid["out"], grid["ms"]
    for axis in (ins, outs):
        values = np.asarray(axis, dtype=float)
        if values.ndim != 1 or len(values) == 0 or not np.all(np.isfinite(values)) or np.any(np.diff(values) <= 0):
            raise ValueError(f"{name}: kept-map counts must be increasing numbers")
    times = np.asarray(ms, dtype=float)
    if times.shape != (len(ins), len(outs)) or not np.all(np.isfinite(times)) or np.any(times < 0):
        raise ValueError(f"{name}: ms must be {len(ins)}×{len(outs)} finite times >= 0")


def _conv_inputs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda _m, inp, _o, n=n: shapes.__setitem__(n, tuple(inp[0].shape[1:]))) for n in conv_layers(model)]
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    for h in hooks:
        h.remove()
    return shapes


def _counts(total: int, fractions: tuple[float, ...]) -> list[int]:
    return sorted({max(1, round(f * total)) for f in fractions})


def measure_latency_table(model: nn.Module, input_shape: tuple[int, ...], batch: int = 16,
                          fractions: tuple[float, ...] = DEFAULT_FRACTIONS, min_run_time: float = 0.05,
                          threads: int | None = None) -> LatencyTable:
    """Time every conv of `model` on a grid of kept maps (the first conv's image channels stay whole)."""
    threads = threads or torch.get_num_threads()
    table = LatencyTable(batch=batch, threads=threads)
    inputs = _conv_inputs(model, input_shape)
    for i, name in enumerate(conv_layers(model)):
        conv = model.get_submodule(name)
        channels, height, width = inputs[name]
        ins = [channels] if i == 0 else _counts(channels, fractions)
        outs = _counts(conv.out_channels, fractions)
        grid = []
        for cin in ins:
            row = []
            for cout in outs:
                x = torch.randn(batch, cin, height, width)
                w = torch.randn(cout, cin, *conv.kernel_size)
                timer = Timer("F.conv2d(x, w, None, stride, padding)", globals={
                    "F": F, "x": x, "w": w, "stride": conv.stride, "padding": conv.padding}, num_threads=threads)
                row.append(timer.blocked_autorange(min_run_time=min_run_time).median * 1000)
            grid.append(row)
        table.layers[name] = {"in": ins, "out": outs, "ms": grid}
        log.info("latency table: %s measured on %d x %d kept maps", name, len(ins), len(outs))
    return table
