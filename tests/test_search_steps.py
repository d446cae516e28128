"""The search's steps as registered strategies; --round-to and --threads on the search; progress logs."""

import json
import logging

import numpy as np
import pytest
import torch
from search_helpers import tiny_digits_run

from structprune.cli import main
from structprune.data import load_dataset
from structprune.runfolder import load_run
from structprune.search.config import SearchConfig
from structprune.search.network import SearchNet
from structprune.search.steps import STEPS, make_steps, step_names
from structprune.sparsity.granularity import Granularity, KernelForm
from structprune.sparsity.masks import NetworkMask
from structprune.sparsity.method import Method
from structprune.sparsity.selection import select_masks


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return tiny_digits_run(tmp_path_factory.mktemp("runs"), epochs=1)


def test_every_scale_is_a_registered_step():
    assert {"channel", "kernel", "kernel-blocks", "intra", "global-channel"} <= set(STEPS)
    every = (Granularity.CHANNEL, Granularity.KERNEL, Granularity.INTRA)
    assert step_names(SearchConfig(granularities=every)) == ["channel", "kernel", "intra"]
    assert step_names(SearchConfig(granularities=(Granularity.KERNEL,), kernel=KernelForm("blocks", 2))) == ["kernel-blocks"]
    assert step_names(SearchConfig(scope="global", ratio=0.5)) == ["global-channel"]


@pytest.mark.parametrize("granularity", ["channel", "kernel", "intra"])
def test_the_l1_candidate_of_a_first_rung_is_the_one_shot_l1_selection(tiny_run, granularity):
    """One L1 scorer: a rung's L1 particle decodes to what selection's L1 chooses at that ratio."""
    model = load_run(tiny_run).model
    net = SearchNet(model)
    cfg = SearchConfig(granularities=(Granularity(granularity),), ratio=0.5)
    step = make_steps(net, cfg)[0]
    layer = "features.2"
    rung = step.rungs(NetworkMask(), layer)[0]
    assert rung.length == rung.space.n
    mine = rung.to_mask(rung.l1_particle(), NetworkMask()).layers[layer]
    theirs = select_masks(model, granularity, 0.5).layers[layer]
    if granularity == "channel":
        assert torch.equal(mine.keep_out, theirs.keep_out)
    elif granularity == "kernel":
        assert torch.equal(mine.keep_kernel, theirs.keep_kernel)
    else:
        assert mine.intra == theirs.intra


def test_round_to_and_threads_apply_to_the_search(tiny_run, tmp_path, caplog):
    out = tmp_path / "rounded"
    args = ["prune", str(tiny_run), "--method", "pf", "--ratio", "0.3", "--round-to", "4", "--threads", "1",
            "--particles", "4", "--generations", "2", "--score-images", "60", "--check-images", "60",
            "--retrain-epochs", "0", "--final-epochs", "0", "--out", str(out)]
    with caplog.at_level(logging.INFO):
        assert main(args) == 0
    assert torch.get_num_threads() == 1
    masks = json.loads((out / "masks.json").read_text())["layers"]
    kept = {name: len(layer["keep_out"]) for name, layer in masks.items() if layer.get("keep_out") is not None}
    # 16 maps at ratio 0.3 keep 11, rounded up to 12; 8 maps keep 6, rounded up to all 8: not pruned
    assert kept == {"features.5": 12}
    lines = [r.getMessage() for r in caplog.records]
    assert any("generation 2/2, best MCR" in line and "left in this rung" in line for line in lines)


def test_progress_reports_the_mcr_of_the_best_particle(tiny_run, tmp_path, caplog):
    from structprune.search.driver import search_run

    cfg = SearchConfig(method=Method.PF, ratio=0.5, layers=("features.0",), particles=4, generations=2, score_images=60,
                       check_images=60, step_epochs=0, final_epochs=0)
    with caplog.at_level(logging.INFO, logger="structprune.search"):
        search_run(load_run(tiny_run), load_dataset("digits"), cfg, tmp_path / "p")
    record = json.loads((tmp_path / "p" / "search.json").read_text())
    best = record["history"][-1]["best_so_far"]
    line = next(r.getMessage() for r in caplog.records if "generation 2/2" in r.getMessage())
    mcr = float(line.split("best MCR ")[1].split(";")[0])
    assert 0 <= best - mcr < 0.01  # the score is the MCR plus a small cross-entropy term
    assert record["steps"][0]["scoring"] == "cached activations"
    assert np.isfinite(record["steps"][0]["check_mcr"])


def test_the_fast_intra_step_skips_the_first_layer_and_offers_one_rectangle_patterns(tiny_run, caplog):
    """intra_fast (the command line's default): no patterns on a layer reading one map, and every choice compacts
    into one smaller convolution."""
    from structprune.sparsity.granularity import is_one_block

    model = load_run(tiny_run).model
    net = SearchNet(model)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    fast = make_steps(net, SearchConfig(granularities=(Granularity.INTRA,), ratio=0.5, intra_fast=True,
                                        intra_shared=True))[0]
    free = make_steps(net, SearchConfig(granularities=(Granularity.INTRA,), ratio=0.5))[0]
    with caplog.at_level(logging.INFO, logger="structprune"):
        units = fast.units(convs)
    assert convs[0] not in units and free.units(convs)[0] == convs[0]
    assert "reads 3 or fewer maps" in caplog.text
    rung = fast.rungs(NetworkMask(), units[0])[0]
    size = tuple(net.conv(units[0]).kernel_size)
    assert rung.patterns and all(is_one_block(p, size) for p in rung.patterns)
    assert rung.length == 1  # one shared pattern
    assert not all(is_one_block(p, size) for p in free.rungs(NetworkMask(), units[0])[0].patterns)
    with pytest.raises(Exception, match="intra_fast"):
        SearchConfig(granularities=(Granularity.INTRA,), intra_fast=True, intra_patterns=tuple(rung.patterns[:1]))
