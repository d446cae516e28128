"""The search's paired check: the paired SE, a candidate equal to the base, the resolution warning, search.json."""

import json
import logging
import math

import numpy as np
import pytest
from search_helpers import tiny_digits_run

from structprune.data import load_dataset
from structprune.errors import StructpruneError
from structprune.runfolder import load_run
from structprune.search.driver import Search, SearchConfig, search_run
from structprune.search.paired import (
    check_images_needed,
    expected_diff_se,
    paired_check,
    per_image_wrong,
    resolution_warning,
)
from structprune.sparsity.granularity import Granularity
from structprune.sparsity.masks import NetworkMask
from structprune.sparsity.method import Method

FAST = {"particles": 4, "generations": 2, "score_images": 80, "check_images": 80, "final_epochs": 0}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return tiny_digits_run(tmp_path_factory.mktemp("runs"), epochs=1)


def test_paired_se_is_the_sd_of_the_per_image_difference_over_root_n():
    base = np.array([0, 0, 1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    cand = np.array([1, 0, 0, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
    check = paired_check(base, cand)  # d = [1, 0, -1, 0, 1, 0, 0, 0, 0, 0]
    assert check.diff == pytest.approx(0.1) and check.images == 10
    assert check.to_wrong == 2 and check.to_right == 1
    sample_var = (3 - 10 * 0.1**2) / 9  # sum d² = 3, mean 0.1
    assert check.se == pytest.approx(math.sqrt(sample_var) / math.sqrt(10))
    assert check.se == pytest.approx(np.std(cand.astype(float) - base.astype(float), ddof=1) / math.sqrt(10))
    # only flips count: the same MCRs with every image agreeing but one give a smaller SE
    agree = paired_check(np.array([1, 0, 0, 0]), np.array([1, 1, 0, 0]))
    assert agree.diff == 0.25 and agree.se == pytest.approx(0.25)  # d = [0, 1, 0, 0]: sd 0.5, / 2
    with pytest.raises(StructpruneError, match="same non-empty image set"):
        paired_check(base, cand[:5])


def test_check_set_sizing():
    assert check_images_needed(0.005, 0.0) == 200  # one image at most half a point
    assert check_images_needed(0.005, 0.1) == 7200  # 2 · 0.1 · 0.9 / 0.005²
    assert expected_diff_se(0.1, 7200) == pytest.approx(0.005)
    assert resolution_warning(0.005, 0.1, 7200) is None
    line = resolution_warning(0.005, 0.1, 500)
    assert "7200 check images would be needed" in line and "one image" not in line
    assert "one image is 1 points" in resolution_warning(0.005, 0.0, 100)
    assert resolution_warning(0.0, 0.1, 100) is None  # no rise at all: nothing to resolve
    with pytest.raises(StructpruneError, match="cannot size a check set"):
        check_images_needed(0.0, 0.1)


def test_a_candidate_equal_to_the_base_has_no_difference_and_is_accepted(tiny_run, digits):
    cfg = SearchConfig(method=Method.L1, tolerance=0.0, **FAST)
    search = Search(load_run(tiny_run), digits, cfg, "unused-out")
    wrong = per_image_wrong(search.model, search.check_split)
    search.state.base_check_mcr = float(wrong.mean())
    search.state.base_check_wrong = np.flatnonzero(wrong).tolist()
    check, paired = search.check(NetworkMask())
    assert check == search.state.base_check_mcr
    assert paired.diff == 0 and paired.se == 0 and paired.to_wrong == paired.to_right == 0
    assert paired.images == len(search.check_split) == len(wrong)
    assert search.accepts(check, search.state.base_check_mcr, paired)


def test_search_json_steps_carry_the_paired_check_and_a_coarse_check_set_is_warned_about(tiny_run, digits, tmp_path,
                                                                                        caplog):
    cfg = SearchConfig(method=Method.PF, granularities=(Granularity.CHANNEL,), tolerance=0.005, ladder=(0.5, 0.9),
                       layers=("features.0",), step_epochs=1, step_images=200, **FAST)
    with caplog.at_level(logging.WARNING, logger="structprune.search.driver"):
        search_run(load_run(tiny_run), digits, cfg, tmp_path / "out")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    record = json.loads((tmp_path / "out" / "search.json").read_text())
    base, n = record["base_check_mcr"], record["check_images"]
    assert 1 / n > 0.005 and record["steps"]  # the digits validation split leaves fewer than 200 check images
    assert len(warnings) == 1 and f"below what {n} check images resolve" in warnings[0]
    assert f"one image is {100 / n:.3g} points" in warnings[0] and "check images would be needed" in warnings[0]
    for step in record["steps"]:
        for suffix in ("", "_after_retrain") if step["retrained"] else ("",):
            paired = step["paired" + suffix]
            assert set(paired) == {"diff", "se", "to_wrong", "to_right", "images"} and paired["images"] == n
            assert paired["diff"] == pytest.approx(step["check_mcr" + suffix] - base)
            assert paired["to_wrong"] - paired["to_right"] == round(paired["diff"] * n)
            assert paired["se"] >= 0
        final = step["paired_after_retrain"] if step["retrained"] else step["paired"]
        assert step["accepted"] == (final["diff"] <= 0.005 + 1e-9)
