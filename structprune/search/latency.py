"""The latency term of the mask search's objective (`--latency-weight`), predicted by structprune.latency_model.

Latency-aware objective of a candidate (lower is better):
    score = MCR + tie · cross-entropy + λ · predicted conv latency in milliseconds per batch
λ is in MCR per millisecond: λ = 0.001 makes 1 ms worth 0.1 points of MCR. Within one layer-by-layer rung
every candidate keeps the same number of maps, so the term matters in the global search (`--scope global`),
where the filter decides how many maps each layer keeps.

The prediction is the sum of the convolutions' times in a LatencyModel, the per-layer model `prune
--target-speedup` uses, read at each conv's kept input × output maps (its plain-convolution grid): measured here
in eager PyTorch at batch SEARCH_BATCH when none is given, or read from a latency-model JSON (`--latency-table`:
e.g. the latency-model.json of a target run, any runtime and batch). Pooling, activations and fully connected
layers are not in the sum.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from structprune.errors import StructpruneError
from structprune.latency_model import LatencyModel, LayerForm, measure_latency_model

SEARCH_BATCH = 16  # images per call of the latency model measured for the search
GRID_POINTS = 5  # kept-map counts per grid axis, evenly spread from 1 to the layer's width
OLD_TABLE_FORMAT = "structprune-latency/1"  # the search's own table before it used the latency model


class ConvLatency:
    """Predicted convolution time, in ms per batch, of kept-map counts {conv: (kept input maps, kept output maps)}."""

    def __init__(self, model: LatencyModel):
        self.model = model

    @property
    def layers(self) -> dict[str, Any]:
        return self.model.layers

    def network_ms(self, kept: dict[str, tuple[int, int]]) -> float:
        """Σ of the named convs' predicted times (counts clamped to [1, the layer's width]; a depthwise conv keeps
        as many inputs as outputs)."""
        total = 0.0
        for name, (kept_in, kept_out) in kept.items():
            if name not in self.model.layers:
                raise StructpruneError(f"the latency model has no convolution {name!r}")
            times = self.model.layers[name]
            out = max(1, min(int(kept_out), times.out_channels))
            inp = out if times.depthwise else max(1, min(int(kept_in), times.in_channels))
            total += self.model.layer_ms(name, LayerForm(inp, out, 1 if times.depthwise else times.groups))
        return total

    def to_json(self) -> dict[str, Any]:
        return self.model.to_json()

    @classmethod
    def from_json(cls, data: Any) -> ConvLatency:
        if isinstance(data, dict) and data.get("format") == OLD_TABLE_FORMAT:
            raise StructpruneError(f"an old latency table ({OLD_TABLE_FORMAT}); give a latency-model.json, or leave "
                                   "--latency-table out to measure one")
        return cls(LatencyModel.from_json(data))


def measure_conv_latency(model: nn.Module, input_shape: tuple[int, ...], batch: int = SEARCH_BATCH,
                         threads: int | None = None, min_run_time: float = 0.02) -> ConvLatency:
    """Every plain convolution of `model` timed in eager PyTorch on a grid of kept maps (the first conv's image
    channels stay whole), with the dense network timed whole."""
    return ConvLatency(measure_latency_model(model, input_shape, "eager", batch, threads or torch.get_num_threads(),
                                             round_to=1, groups=(1,), taps=(), points=GRID_POINTS,
                                             min_run_time=min_run_time, calibration_keeps=(1.0,)))
