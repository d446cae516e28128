"""Granularities and intra-kernel patterns."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from structprune.errors import StructpruneError
from structprune.sparsity.granularity import Granularity, IntraPattern


def test_parse_list_keeps_order_and_drops_repeats():
    assert Granularity.parse_list("intra,channel,intra") == [Granularity.INTRA, Granularity.CHANNEL]


def test_parse_list_rejects_unknown_names():
    with pytest.raises(StructpruneError, match="unknown granularity 'filter'"):
        Granularity.parse_list("channel,filter")


def test_pattern_taps_follow_start_and_stride():
    assert IntraPattern(0, 3).taps(9) == (0, 3, 6)
    assert IntraPattern(1, 2).taps(9) == (1, 3, 5, 7)
    assert IntraPattern(0, 2).taps(25) == tuple(range(0, 25, 2))


@given(st.integers(1, 7))
def test_all_patterns_are_distinct_and_complete(k):
    positions = k * k
    patterns = IntraPattern.all_patterns(positions)
    tap_sets = [p.taps(positions) for p in patterns]
    assert len(set(tap_sets)) == len(tap_sets)
    assert tap_sets[0] == tuple(range(positions))  # the full kernel comes first
    # every (start, stride) pair maps to one of the listed tap sets
    for stride in range(1, positions + 1):
        for start in range(positions):
            assert IntraPattern(start, stride).taps(positions) in tap_sets


def test_patterns_outside_the_kernel_are_rejected():
    with pytest.raises(StructpruneError, match="outside a kernel of 9 positions"):
        IntraPattern(9, 1).validate(9, where="conv1")


@pytest.mark.parametrize(("start", "stride"), [(-1, 2), (0, 0), (3, -1)])
def test_a_negative_start_or_a_stride_below_one_is_no_pattern(start, stride):
    with pytest.raises(StructpruneError, match="start must be >= 0 and stride >= 1"):
        IntraPattern(start, stride)
