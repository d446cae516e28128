"""The calibration of a latency model: whole networks measured against the sum of their convolutions' times.

Standalone convolution times do not add up to a network's time: each standalone call pays one session call's
overhead that the network pays once, and a convolution's cost inside the network (its node's fixed cost, fused
activations, warm caches) shrinks less with its maps than its standalone time. A convolution in a fast form
also costs the network more than its standalone time: in the exported network a layer with kernel blocks adds
Gather/Transpose/Reshape nodes and keeps its BatchNormalization unfused, one with an intra shape adds Pad/Slice
nodes, each with a fixed cost per call. All of it is absorbed by a few whole networks, each measured whole and
predicted from the sum S of its convolutions' times and its counts of layers with kernel blocks (n_blocks) and
with an intra shape (n_taps):
    network_ms ≈ α · S + β + γ_blocks · n_blocks + γ_taps · n_taps
fitted by least squares on the relative residuals (prediction / measured − 1: the goal is a relative error).
A γ term is fitted only where the points' counts of it differ, and only while the design stays well-posed
(at least as many points as parameters, full rank); else it is 0 (the form costs what its convolution costs).
α is clipped to [ALPHA_MIN, ALPHA_MAX] (the rest refitted for the clipped α); with one network, or networks of
(nearly) one S, α = 1 and β (with the γ's) closes the gap in the mean (the dense network alone: β = its time −
its convolutions'). Subtracting a measured per-call overhead from every standalone time would change nothing
here: every network of the model runs the same convolutions, so n · overhead is a constant that β absorbs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

ALPHA_MIN, ALPHA_MAX = 0.1, 10.0
_FLAT = 0.05  # relative spread of S below which the networks say too little about α


class Coefficients(NamedTuple):
    """The calibration: network_ms ≈ alpha · Σ convolutions + beta + gamma_blocks · n_blocks + gamma_taps · n_taps."""

    alpha: float
    beta: float
    gamma_blocks: float = 0.0  # ms per convolution with kernel blocks
    gamma_taps: float = 0.0  # ms per convolution with an intra shape

    def predict(self, conv_ms: float, blocks: int = 0, taps: int = 0) -> float:
        return self.alpha * conv_ms + self.beta + self.gamma_blocks * blocks + self.gamma_taps * taps


@dataclass(frozen=True)
class CalibrationPoint:
    """One whole network: a name, the share of maps it keeps, its convolutions' summed and its measured time, and
    how many of its convolutions have kernel blocks and an intra shape."""

    name: str
    keep: float  # the share of every channel group's maps kept (1.0: the dense network)
    conv_ms: float  # Σ of its convolutions' predicted (standalone) times
    network_ms: float  # measured whole
    blocks: int = 0  # convolutions with kernel blocks (G > 1)
    taps: int = 0  # convolutions with an intra shape

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "keep": self.keep, "conv_ms": self.conv_ms, "network_ms": self.network_ms,
                "blocks": self.blocks, "taps": self.taps}

    @classmethod
    def from_json(cls, data: Any) -> CalibrationPoint:
        """A point of a /2 or /3 file (a /2 point, without form counts, has none)."""
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise ValueError("a calibration point must be an object with a name")
        keep, conv, network = (data[k] for k in ("keep", "conv_ms", "network_ms"))
        for key, value in (("keep", keep), ("conv_ms", conv), ("network_ms", network)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"calibration {data['name']}: {key} must be a positive number, not {value!r}")
        counts = [data.get(k, 0) for k in ("blocks", "taps")]
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts):
            raise ValueError(f"calibration {data['name']}: blocks and taps must be counts of layers, not {counts}")
        return cls(data["name"], float(keep), float(conv), float(network), counts[0], counts[1])


def _solve(columns: list[np.ndarray], target: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Least squares of Σ columns · params ≈ target, rows scaled by `weights`."""
    design = np.stack([c * weights for c in columns], axis=1)
    params, *_ = np.linalg.lstsq(design, target * weights, rcond=None)
    return params


def _form_columns(points: list[CalibrationPoint] | tuple[CalibrationPoint, ...],
                  x: np.ndarray) -> dict[str, np.ndarray]:
    """The γ columns the points can fit: a count that varies, kept while the design (S, 1, counts) stays of full
    rank with at least as many points as parameters."""
    columns: dict[str, np.ndarray] = {}
    base = [x, np.ones_like(x)]
    for key in ("blocks", "taps"):
        count = np.array([getattr(p, key) for p in points], float)
        if np.ptp(count) == 0:
            continue
        trial = [*base, *columns.values(), count]
        if len(points) >= len(trial) and np.linalg.matrix_rank(np.stack(trial, axis=1)) == len(trial):
            columns[key] = count
    return columns


def fit_calibration(points: list[CalibrationPoint] | tuple[CalibrationPoint, ...]) -> Coefficients:
    """The Coefficients of network_ms over `points` (module doc); (1, 0, 0, 0) for none."""
    if not points:
        return Coefficients(1.0, 0.0)
    x = np.array([p.conv_ms for p in points], float)
    y = np.array([p.network_ms for p in points], float)
    forms = _form_columns(points, x)
    ones = np.ones_like(x)
    # the spread of S that the form counts do not explain: what tells α apart (without forms: the spread of S)
    spread = x - np.stack([ones, *forms.values()], axis=1) @ _solve([ones, *forms.values()], x, ones)
    flat = len(points) < 2 or np.ptp(spread) <= _FLAT * float(np.max(np.abs(x)))
    weights = 1.0 / y  # rows scaled by 1/measured: residuals relative to the measured time
    if flat:
        alpha, rest = 1.0, _solve([ones, *forms.values()], y - x, ones)  # in the mean (the fixed part)
    else:
        alpha, *rest = _solve([x, ones, *forms.values()], y, weights)
        if not ALPHA_MIN <= alpha <= ALPHA_MAX:
            alpha = float(np.clip(alpha, ALPHA_MIN, ALPHA_MAX))
            rest = _solve([ones, *forms.values()], y - alpha * x, weights)  # the best rest for that α
    gammas = dict(zip(forms, (float(v) for v in rest[1:]), strict=True))
    return Coefficients(float(alpha), float(rest[0]), gammas.get("blocks", 0.0), gammas.get("taps", 0.0))
