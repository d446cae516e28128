"""The calibration of a latency model: whole networks measured against the sum of their convolutions' times.

Standalone convolution times do not add up to a network's time: each standalone call pays one session call's
overhead that the network pays once, and a convolution's cost inside the network (its node's fixed cost, fused
activations, warm caches) shrinks less with its maps than its standalone time. Both are absorbed by one straight
line through a few whole networks, each measured whole and predicted as the sum S of its convolutions' times:
    network_ms ≈ α · S + β
fitted by least squares on the relative residuals ((α·S + β) / measured − 1: the goal is a relative error).
α is clipped to [ALPHA_MIN, ALPHA_MAX] (β refitted for the clipped α); with one network, or networks of (nearly)
one S, α = 1 and β closes the gap to their mean (the dense network alone: β = its time − its convolutions').
Subtracting a measured per-call overhead from every standalone time would change nothing here: every network of
the model runs the same convolutions, so n · overhead is a constant that β absorbs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

ALPHA_MIN, ALPHA_MAX = 0.1, 10.0
_FLAT = 0.05  # relative spread of S below which the networks say too little about α


@dataclass(frozen=True)
class CalibrationPoint:
    """One whole network: a name, the share of maps it keeps, its convolutions' summed and its measured time."""

    name: str
    keep: float  # the share of every channel group's maps kept (1.0: the dense network)
    conv_ms: float  # Σ of its convolutions' predicted (standalone) times
    network_ms: float  # measured whole

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "keep": self.keep, "conv_ms": self.conv_ms, "network_ms": self.network_ms}

    @classmethod
    def from_json(cls, data: Any) -> CalibrationPoint:
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise ValueError("a calibration point must be an object with a name")
        keep, conv, network = (data[k] for k in ("keep", "conv_ms", "network_ms"))
        for key, value in (("keep", keep), ("conv_ms", conv), ("network_ms", network)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"calibration {data['name']}: {key} must be a positive number, not {value!r}")
        return cls(data["name"], float(keep), float(conv), float(network))


def fit_calibration(points: list[CalibrationPoint] | tuple[CalibrationPoint, ...]) -> tuple[float, float]:
    """(α, β) of network_ms ≈ α · conv_ms + β over `points` (module doc); (1, 0) for none."""
    if not points:
        return 1.0, 0.0
    x = np.array([p.conv_ms for p in points], float)
    y = np.array([p.network_ms for p in points], float)
    if len(points) < 2 or np.ptp(x) <= _FLAT * float(np.max(np.abs(x))):
        return 1.0, float(np.mean(y - x))
    weights = 1.0 / y  # rows scaled by 1/measured: residuals relative to the measured time
    design = np.stack([x * weights, weights], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(design, np.ones_like(y), rcond=None)
    if not ALPHA_MIN <= alpha <= ALPHA_MAX:
        alpha = float(np.clip(alpha, ALPHA_MIN, ALPHA_MAX))
        beta = float(np.sum(weights ** 2 * (y - alpha * x)) / np.sum(weights ** 2))  # best β for that α
    return float(alpha), float(beta)
