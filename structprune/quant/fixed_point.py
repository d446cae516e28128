"""Signed fixed-point numbers with a word length of 2–16 bits and a per-layer step size.

A value w is stored as an integer code q in [qmin, qmax] and read back as q·step. With the symmetric
range used here (qmin = −qmax, qmax = 2^(bits−1) − 1) a 2-bit word is ternary {−1, 0, +1}·step and
zero is always exact, so pruned weights stay pruned. Values beyond ±qmax·step saturate.

The step of a layer minimises the L2 error ‖w − step·q(w/step)‖²: a coarse grid over the clipping
range, refined by alternating the two closed-form half-steps (codes given step; step = ⟨w,q⟩/⟨q,q⟩
given codes), as in Lloyd's algorithm. Example: weights N(0, 1), 4 bits -> step ≈ 0.34 (clip ≈ 2.4σ).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from structprune.errors import StructpruneError

MIN_BITS = 2
MAX_BITS = 16


def check_bits(bits: int, where: str = "") -> int:
    """Return `bits` if it is a supported word length, else raise a one-line error."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        prefix = f"{where}: " if where else ""
        raise StructpruneError(f"{prefix}word length {bits!r} bits is outside {MIN_BITS}–{MAX_BITS}")
    return bits


@dataclass(frozen=True)
class FixedPoint:
    """A signed fixed-point format: `bits`-bit codes times a float32 `step`."""

    bits: int
    step: float

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if not self.step > 0 or self.step != self.step or self.step == float("inf"):
            raise StructpruneError(f"fixed-point step must be a positive finite number, got {self.step!r}")
        # Keep the step exactly representable in float32 so quantize and dequantize agree bit for bit.
        object.__setattr__(self, "step", float(torch.tensor(self.step, dtype=torch.float32)))

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def qmin(self) -> int:
        return -self.qmax

    @property
    def limit(self) -> float:
        """The largest magnitude the format represents; anything beyond saturates to it."""
        return self.qmax * self.step

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        """Integer codes (int32, same shape), rounded to nearest and saturated to [qmin, qmax]."""
        scaled = w.detach().float() / self.step
        return torch.clamp(torch.round(scaled), self.qmin, self.qmax).to(torch.int32)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """Float32 values code·step (exact products in float32)."""
        return codes.to(torch.float32) * torch.tensor(self.step, dtype=torch.float32)

    def round_trip(self, w: torch.Tensor) -> torch.Tensor:
        """w as the fixed-point format represents it (float32)."""
        return self.dequantize(self.quantize(w))


def l2_error(w: torch.Tensor, fmt: FixedPoint) -> float:
    """Sum of squared quantisation errors of `w` in format `fmt`."""
    return float(((w.detach().float() - fmt.round_trip(w)) ** 2).sum())


def _error_at(w: torch.Tensor, step: float, qmax: int) -> float:
    q = torch.clamp(torch.round(w / step), -qmax, qmax)
    return float(((w - q * step) ** 2).sum())


def _lloyd(flat: torch.Tensor, step: float, qmax: int, iterations: int) -> float:
    """Alternate codes-given-step and step-given-codes; return the best step seen."""
    best, best_err = step, _error_at(flat, step, qmax)
    for _ in range(iterations):
        q = torch.clamp(torch.round(flat / step), -qmax, qmax)
        denom = float((q * q).sum())
        if denom == 0.0:
            break
        new = float((flat * q).sum()) / denom
        if not new > 0 or abs(new - step) <= 1e-9 * step:
            break
        step = new
        err = _error_at(flat, step, qmax)
        if err < best_err:
            best, best_err = step, err
    return best


def optimal_format(
    w: torch.Tensor, bits: int, grid: int = 256, refine: int = 20, sample: int = 65_536, starts: int = 4
) -> FixedPoint:
    """The step of a `bits`-bit format that minimises the L2 quantisation error of `w`.

    A grid of `grid` steps between 5% and 120% of max|w|/qmax is scored; each of the best `starts` is
    refined by Lloyd iterations, then by finer grids of ±5% and ±1% around it with Lloyd again (the error is piecewise
    quadratic in the step, so a single descent can stop at a kink). Large tensors are scored on a fixed
    random `sample` of their values.
    """
    check_bits(bits)
    flat = w.detach().float().flatten()
    if flat.numel() > sample:
        idx = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[:sample]
        flat = flat[idx]
    top = float(flat.abs().max()) if flat.numel() else 0.0
    qmax = 2 ** (bits - 1) - 1
    if top == 0.0:
        return FixedPoint(bits, 1.0)  # all zeros: any step is exact
    # Steps up to 1.2·max|w|/qmax: a step a little above max|w|/qmax can win (max|w| still rounds to qmax).
    # The error is rugged in the step when there are few values per level, so the best few grid points are
    # each refined, and the best result kept.
    coarse = sorted((top * f / qmax for f in torch.linspace(0.05, 1.2, grid).tolist()),
                    key=lambda s: _error_at(flat, s, qmax))
    finalists = []
    for start in coarse[:starts]:
        best = start
        for spread in (None, 0.05, 0.01):
            if spread is not None:
                candidates = [best * f for f in torch.linspace(1 - spread, 1 + spread, grid // 4 + 1).tolist()]
                best = min([best, *candidates], key=lambda s: _error_at(flat, s, qmax))
            best = _lloyd(flat, best, qmax, refine)  # never worse than its start
        finalists.append(best)
    best = min(finalists, key=lambda s: _error_at(flat, s, qmax))
    return FixedPoint(bits, best)
