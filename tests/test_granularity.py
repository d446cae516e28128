"""Granularities and intra-kernel patterns."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from structprune.errors import StructpruneError
from structprune.sparsity.granularity import Granularity, IntraPattern, KernelForm


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


@given(st.sampled_from(["unstructured", "structured", "blocks"]), st.integers(1, 64))
def test_kernel_form_text_round_trips(structure, groups):
    if structure == "unstructured":
        groups = 1
    elif structure == "blocks":
        groups = max(groups, 2)
    form = KernelForm(structure, groups)
    assert KernelForm.parse(str(form)) == form


def test_kernel_form_text():
    assert KernelForm.parse("blocks:2") == KernelForm("blocks", 2)
    assert KernelForm.parse(" structured:4 ") == KernelForm("structured", 4)
    assert KernelForm.parse("unstructured") == KernelForm()
    assert str(KernelForm()) == "unstructured" and str(KernelForm("blocks", 3)) == "blocks:3"


@pytest.mark.parametrize("text", ["lattice:2", "structured", "blocks:", "blocks:two", "unstructured:2", "structured:-1", ""])
def test_kernel_form_bad_text_is_one_line(text):
    with pytest.raises(StructpruneError, match="write unstructured, structured:G or blocks:G") as info:
        KernelForm.parse(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("args", "message"), [
    (("lattice", 2), "unknown kernel structure 'lattice'"),
    (("structured", 0), "kernel groups 0 must be a whole number >= 1"),
    (("structured", 2.0), "kernel groups 2.0 must be"),
    (("structured", True), "kernel groups True must be"),
    (("unstructured", 4), "unstructured kernels take no groups"),
    (("blocks", 1), "at least 2 blocks"),
    (("blocks", 0), "kernel groups 0 must be"),
])
def test_kernel_form_validates_in_one_line(args, message):
    with pytest.raises(StructpruneError, match=message) as info:
        KernelForm(*args)
    assert "\n" not in str(info.value)
