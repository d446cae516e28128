"""Fixed-point formats: error bounds, saturation, L2-optimal steps, word-length checks."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from structprune.errors import StructpruneError
from structprune.quant.fixed_point import FixedPoint, check_bits, l2_error, optimal_format

bits_st = st.integers(2, 16)
step_st = st.floats(1e-4, 10.0, allow_nan=False, allow_infinity=False)
values_st = st.lists(st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32), min_size=1, max_size=64)


@settings(max_examples=120, deadline=None)
@given(bits=bits_st, step=step_st, values=values_st)
def test_error_is_at_most_half_a_step_inside_the_range_and_saturates_outside(bits, step, values):
    fmt = FixedPoint(bits, step)
    w = torch.tensor(values, dtype=torch.float32)
    codes = fmt.quantize(w)
    back = fmt.dequantize(codes)
    assert int(codes.min()) >= fmt.qmin and int(codes.max()) <= fmt.qmax
    inside = w.abs() <= fmt.limit
    slack = 1e-6 * (w.abs() + fmt.step)  # float32 rounding of w/step
    assert bool(((w - back).abs() <= fmt.step / 2 + slack)[inside].all())
    # beyond the range: saturated to ±limit, with the sign of w
    outside = ~inside
    expected = torch.sign(w[outside]) * fmt.qmax * torch.tensor(fmt.step, dtype=torch.float32)
    assert torch.equal(back[outside], expected)
    assert torch.equal(codes[outside].abs(), torch.full_like(codes[outside], fmt.qmax))


@settings(max_examples=100, deadline=None)
@given(bits=bits_st, step=step_st, values=values_st)
def test_round_trip_is_idempotent_and_keeps_zero(bits, step, values):
    fmt = FixedPoint(bits, step)
    w = torch.tensor([*values, 0.0], dtype=torch.float32)
    once = fmt.round_trip(w)
    assert torch.equal(fmt.round_trip(once), once)
    assert float(once[-1]) == 0.0


@settings(max_examples=25, deadline=None)
@given(bits=st.integers(2, 8), seed=st.integers(0, 10_000), scale=st.floats(1e-3, 10.0))
def test_optimal_step_is_as_good_as_a_fine_brute_force_grid(bits, seed, scale):
    w = torch.randn(300, generator=torch.Generator().manual_seed(seed)) * scale
    best = optimal_format(w, bits)
    top = float(w.abs().max()) / (2 ** (bits - 1) - 1)
    brute = min(l2_error(w, FixedPoint(bits, top * f)) for f in torch.linspace(0.02, 1.2, 1000).tolist())
    # few values and many levels make the error surface rugged: allow 0.1% at 2–4 bits, 1% above
    assert l2_error(w, best) <= brute * (1 + (1e-3 if bits <= 4 else 1e-2)) + 1e-12
    # and clearly better than the naive step that maps max|w| to the largest code (when that clips nothing useful)
    assert l2_error(w, best) <= l2_error(w, FixedPoint(bits, top)) * (1 + 1e-6)


def test_more_bits_never_increase_the_error():
    w = torch.randn(4000, generator=torch.Generator().manual_seed(1))
    errors = [l2_error(w, optimal_format(w, b)) for b in range(2, 17)]
    assert all(a >= b for a, b in itertools.pairwise(errors))
    assert errors[-1] < 1e-6 * errors[0]


def test_two_bits_are_ternary_and_gaussian_step_is_the_known_optimum():
    w = torch.randn(50_000, generator=torch.Generator().manual_seed(0))
    fmt = optimal_format(w, 2)
    assert set(fmt.quantize(w).unique().tolist()) == {-1, 0, 1}
    # the MSE-optimal 3-level uniform quantizer of N(0,1) has step ≈ 1.224 (Max, 1960)
    assert abs(fmt.step - 1.224) < 0.02


def test_all_zero_weights_stay_zero():
    fmt = optimal_format(torch.zeros(10), 4)
    assert torch.equal(fmt.round_trip(torch.zeros(10)), torch.zeros(10))


@pytest.mark.parametrize("bad", [0, 1, 17, 32, -4, 2.5, True])
def test_word_lengths_outside_2_to_16_are_refused_in_one_line(bad):
    with pytest.raises(StructpruneError) as info:
        check_bits(bad)
    assert "\n" not in str(info.value) and "2–16" in str(info.value)
    with pytest.raises(StructpruneError):
        FixedPoint(bad, 0.1)


@pytest.mark.parametrize("step", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_steps_are_refused(step):
    with pytest.raises(StructpruneError):
        FixedPoint(4, step)
