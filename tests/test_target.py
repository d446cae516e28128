"""Pruning to a target: the structure ladder, MAC targets met exactly (chain and ResNet), a synthetic latency budget
respected, the verify-and-tighten loop (a fake timer: no timing here), resume, and the command line's flags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from target_helpers import FAST, SyntheticLatency, tiny_target_runs

from structprune.cli import build_parser, main
from structprune.compact.compaction import compact
from structprune.errors import StructpruneError
from structprune.metrics import count_macs
from structprune.models import create
from structprune.runfolder import load_run
from structprune.search import target_search
from structprune.search.target_cost import MacCost, conv_forms
from structprune.search.target_search import Target, TargetSearchConfig
from structprune.search.target_space import TargetSpace, ladder
from structprune.sparsity.masks import NetworkMask
from structprune.sparsity.selection import channel_groups_of
from structprune.stages.target import TargetConfig, target_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    return tiny_target_runs(tmp_path_factory.mktemp("target"))


def _compact_macs(out: Path) -> tuple[int, int]:
    run = load_run(out)
    mask = NetworkMask.from_json(json.loads((out / "masks.json").read_text()))
    return count_macs(compact(run.model, mask)), count_macs(run.model)


def test_ladder_rungs_are_multiples_of_the_rounding_down_to_the_floor():
    assert ladder(64, 8, 0.25) == [64, 56, 48, 40, 32, 24, 16]
    assert ladder(16, 8, 0.25) == [16, 8]
    assert ladder(10, 4, 0.25) == [10, 8, 4]
    assert ladder(4, 8, 0.25) == [4]  # a group smaller than the rounding keeps its maps
    assert ladder(8, 1, 0.5) == [8, 7, 6, 5, 4]


def test_choices_mean_the_same_keep_fraction_in_every_group(runs):
    model = load_run(runs["tiny-paper"]).model
    space = TargetSpace(model, channel_groups_of(model), round_to=2, min_keep=0.25)
    assert space.k == 7  # the 16-map group: 16, 14, ..., 4
    assert space.counts(space.uniform(0)) == {"features.0": 8, "features.2": 8, "features.5": 16}
    assert space.counts(space.uniform(space.k - 1)) == {"features.0": 2, "features.2": 2, "features.5": 4}
    assert space.mask(space.uniform(0)).layers == {}


@pytest.mark.parametrize("name", ["tiny-paper", "tiny-resnet"])
def test_mac_target_is_met(runs, tmp_path, name):
    out, metrics = target_run(runs[name], tmp_path / "out", Target("macs", 2.5), TargetConfig(search=FAST))
    small, dense = _compact_macs(out)
    assert small * 2.5 <= dense
    assert metrics["compact_macs"] == small and metrics["target"]["mac_reduction"] >= 2.5
    record = json.loads((out / "target.json").read_text())
    assert record["budget"] == pytest.approx(0.4) and len(record["tries"]) == 1
    assert record["tries"][0]["predicted_cost"] == pytest.approx(small / dense)  # the MAC model is exact
    assert len(record["tries"][0]["history"]) == FAST.generations
    assert all(s["kept"] <= s["maps"] for s in record["structure"].values())
    assert json.loads((out / "config.json").read_text())["prune"]["target"] == {"kind": "macs", "value": 2.5}


def test_synthetic_latency_budget_is_respected(runs, tmp_path):
    model = load_run(runs["tiny-resnet"]).model
    table = SyntheticLatency(model, fixed=0.01)
    cfg = TargetConfig(search=FAST, verify=False)
    out, metrics = target_run(runs["tiny-resnet"], tmp_path / "out", Target("speedup", 1.8), cfg, latency_model=table)
    record = json.loads((out / "target.json").read_text())
    space = TargetSpace(model, channel_groups_of(model), FAST.round_to, FAST.min_keep)
    chosen = np.array(record["tries"][0]["choices"], dtype=np.int16)
    assert table.network_ms(conv_forms(space, chosen)) * 1.8 <= table.dense_ms() + 1e-9
    assert record["cost_model"] == "latency" and "measured_speedup" not in metrics["target"]


def test_latency_in_milliseconds_and_a_latency_out_of_reach(runs, tmp_path):
    model = load_run(runs["tiny-paper"]).model
    table = SyntheticLatency(model, fixed=0.01)
    budget_ms = 0.6 * table.dense_ms()
    cfg = TargetConfig(search=FAST, verify=False)
    out, _ = target_run(runs["tiny-paper"], tmp_path / "out", Target("latency", budget_ms), cfg, latency_model=table)
    assert json.loads((out / "target.json").read_text())["budget"] == pytest.approx(0.6)
    with pytest.raises(StructpruneError, match="out of reach"):
        target_run(runs["tiny-paper"], tmp_path / "out2", Target("latency", 0.01 * table.dense_ms()), cfg,
                   latency_model=table)
    assert not (tmp_path / "out2").exists()


def test_a_measured_shortfall_tightens_the_budget_at_most_twice(runs, tmp_path):
    model = load_run(runs["tiny-paper"]).model
    timings = []

    def slow(dense, small, shape, runtime, batch, threads):  # measures 1.5x whatever the table promised
        timings.append((runtime, batch, threads))
        return 1.5, 1.0

    cfg = TargetConfig(search=FAST, runtime="eager", batch=4, threads=2)
    out, metrics = target_run(runs["tiny-paper"], tmp_path / "out", Target("speedup", 2.0), cfg,
                              latency_model=SyntheticLatency(model, fixed=0.0), measure=slow)
    tries = json.loads((out / "target.json").read_text())["tries"]
    assert timings == [("eager", 4, 2)] * 3 and len(tries) == 3
    assert [t["budget"] for t in tries] == pytest.approx([0.5, 0.5 * 0.75, 0.5 * 0.75**2])  # by the shortfall
    assert not any(t["accepted"] for t in tries)
    assert all(t["predicted_cost"] <= t["budget"] for t in tries)
    assert metrics["target"]["measured_speedup"] == 1.5 and metrics["target"]["tries"] == 3


def test_an_accepted_speedup_is_not_searched_again(runs, tmp_path):
    model = load_run(runs["tiny-paper"]).model
    cfg = TargetConfig(search=FAST, runtime="eager")
    _, metrics = target_run(runs["tiny-paper"], tmp_path / "out", Target("speedup", 1.5), cfg,
                              latency_model=SyntheticLatency(model), measure=lambda *a: (3.0, 1.0))
    assert metrics["target"]["tries"] == 1 and metrics["target"]["measured_speedup"] == 3.0


def test_a_killed_search_resumes_to_the_same_result(runs, tmp_path, monkeypatch):
    cfg = TargetConfig(search=FAST)
    _, whole = target_run(runs["tiny-paper"], tmp_path / "whole", Target("macs", 2.0), cfg)
    real = target_search.ParticleFilter.step

    def dies_in_generation_two(self, score_fn):
        if self.generation == 1:
            raise KeyboardInterrupt
        return real(self, score_fn)

    monkeypatch.setattr(target_search.ParticleFilter, "step", dies_in_generation_two)
    with pytest.raises(KeyboardInterrupt):
        target_run(runs["tiny-paper"], tmp_path / "again", Target("macs", 2.0), cfg)
    monkeypatch.setattr(target_search.ParticleFilter, "step", real)
    _, resumed = target_run(runs["tiny-paper"], tmp_path / "again", Target("macs", 2.0), cfg)
    assert resumed["target"] == whole["target"] and resumed["compact_macs"] == whole["compact_macs"]


@pytest.mark.parametrize("name", ["tiny-resnet", "tiny-mobilenet", "tiny-densenet"])
def test_the_mac_model_counts_what_the_flop_counter_counts(name):
    torch.manual_seed(0)
    model = create(name, in_channels=3, input_size=16).eval()
    space = TargetSpace(model, channel_groups_of(model), round_to=2, min_keep=0.25)
    cost = MacCost(space, (3, 16, 16))
    for particle in np.random.default_rng(0).integers(0, space.k, (2, space.n)).astype(np.int16):
        assert cost.macs(particle) == pytest.approx(count_macs(compact(model, space.mask(particle)), (3, 16, 16)))


# ------------------------------------------------------------------------------------------------ the CLI
def test_target_flags_parse():
    args = build_parser().parse_args(["prune", "run", "--out", "o", "--target-speedup", "2", "--runtime", "eager",
                                      "--batch", "4", "--threads", "2", "--min-keep", "0.5"])
    assert (args.target_speedup, args.runtime, args.batch, args.threads, args.min_keep) == (2.0, "eager", 4, 2, 0.5)
    defaults = build_parser().parse_args(["prune", "run", "--out", "o", "--target-macs", "3"])
    assert (defaults.target_macs, defaults.runtime, defaults.batch, defaults.target_latency) == (3.0, "onnxruntime", 1,
                                                                                                 None)


def test_cli_prunes_to_a_mac_target(runs, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["prune", str(runs["tiny-paper"]), "--target-macs", "2", "--round-to", "2", "--particles", "4",
                 "--generations", "1", "--score-images", "50", "--out", str(out)]) == 0
    assert "--target-macs 2: predicted" in capsys.readouterr().out
    small, dense = _compact_macs(out)
    assert small * 2 <= dense


@pytest.mark.parametrize(("argv", "message"), [
    (["--target-macs", "2", "--target-latency", "3"], "give exactly one target"),
    (["--target-speedup", "0.9"], "must be above 1"),
    (["--target-macs", "2"], "out of reach"),
])
def test_bad_targets_are_one_line(runs, tmp_path, capsys, argv, message):
    assert main(["prune", str(runs["tiny-paper"]), *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("structprune: error:") and message in err[0]


# ------------------------------------------------------------------------------------------------ the API
def test_prune_to_target_on_a_network_of_your_own():
    import structprune

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3),
                                torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 4))
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 4, (32,))
    masks = structprune.prune_to_target(model, x, structprune.mcr_scorer([(x, y)]), target_macs=2, round_to=4,
                                        particles=4, generations=2)
    small = structprune.compact(model, masks)
    assert count_macs(small, (3, 8, 8)) * 2 <= count_macs(model, (3, 8, 8))
    with pytest.raises(StructpruneError, match="give exactly one target"):
        structprune.prune_to_target(model, x, structprune.mcr_scorer([(x, y)]))


@pytest.fixture(scope="module")
def tiny_latency_model(runs, tmp_path_factory):
    """A real latency model of tiny-paper, measured with the fewest shapes (no timing is asserted)."""
    from structprune.jsonio import write_json_atomic
    from structprune.latency_model import measure_latency_model
    from structprune.runcheck import load_checked_run

    run = load_checked_run(runs["tiny-paper"])
    model = measure_latency_model(run.model.eval(), tuple(run.arch["input_shape"]), runtime="eager", batch=1, threads=1,
                                  round_to=2, groups=(1,), taps=(), points=2, variant_points=2, min_run_time=0.001,
                                  network_rounds=1, network_seconds=0.01, calibration_keeps=(1.0,))
    path = tmp_path_factory.mktemp("latency") / "latency-model.json"
    write_json_atomic(path, model.to_json())
    return path


def test_cli_reuses_a_saved_latency_model(runs, tmp_path, tiny_latency_model):
    from structprune.jsonio import read_json

    out = tmp_path / "reuse"
    assert main(["prune", str(runs["tiny-paper"]), "--target-latency", "1000", "--runtime", "eager", "--round-to", "2",
                 "--latency-model", str(tiny_latency_model), "--no-verify", "--particles", "4", "--generations", "1",
                 "--score-images", "50", "--out", str(out)]) == 0
    assert read_json(out / "latency-model.json") == read_json(tiny_latency_model)
    assert read_json(out / "target.json")["cost_model"] == "latency"


@pytest.mark.parametrize(("argv", "message"), [
    (["--target-speedup", "1.3", "--runtime", "eager", "--batch", "4"], "was measured for eager, batch 1"),
    (["--target-macs", "2"], "--latency-model serves"),
])
def test_a_latency_model_that_does_not_fit_is_refused(runs, tmp_path, capsys, tiny_latency_model, argv, message):
    assert main(["prune", str(runs["tiny-paper"]), *argv, "--latency-model", str(tiny_latency_model),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "o").exists()


def test_finalists_are_chosen_by_a_short_finetune(runs, tmp_path):
    from structprune.search.finalists import FinalistConfig
    from structprune.search.target_cost import MacCost
    from structprune.search.target_repair import BudgetRepair
    from structprune.search.target_search import seed_structures

    cfg = TargetConfig(search=FAST, finalists=FinalistConfig(count=3, images=64, check_images=40))
    out, metrics = target_run(runs["tiny-resnet"], tmp_path / "out", Target("macs", 2.0), cfg)
    record = json.loads((out / "target.json").read_text())
    finalists = record["tries"][0]["finalists"]
    assert 2 <= len(finalists) <= 5 and [f["position"] for f in finalists] == list(range(1, len(finalists) + 1))
    chosen = [f for f in finalists if f.get("chosen")]
    assert len(chosen) == 1 and chosen[0]["choices"] == record["tries"][0]["choices"]
    assert chosen[0]["finetune_mcr"] == min(f["finetune_mcr"] for f in finalists)
    assert all(0.0 <= f["finetune_mcr"] <= 1.0 for f in finalists)
    assert len({tuple(f["choices"]) for f in finalists}) == len(finalists)  # distinct structures
    from structprune.arch import example_input
    from structprune.search.target_space import map_importance

    model = load_run(runs["tiny-resnet"]).model
    groups = channel_groups_of(model)
    space = TargetSpace(model, groups, FAST.round_to, FAST.min_keep,
                        importance=map_importance(FAST.importance, model, groups, example_input(model)))
    cost = MacCost(space, (1, 8, 8))
    starts = seed_structures(space, cost, 0.5, FAST, BudgetRepair(space, cost, 0.5))[:2]
    for start in starts:  # the search's uniform and global-importance starts compete
        assert any(f["choices"] == start.tolist() for f in finalists)
    assert "finalists" not in metrics["target"]
    assert _compact_macs(out)[0] * 2.0 <= _compact_macs(out)[1]


def test_finalists_need_validation_images_the_search_did_not_use(runs, tmp_path):
    from structprune.search.finalists import FinalistConfig

    search = TargetSearchConfig(particles=6, generations=2, round_to=2, score_images=100_000, bn_batches=1)
    with pytest.raises(StructpruneError, match="did not score on"):
        target_run(runs["tiny-paper"], tmp_path / "out", Target("macs", 2.0),
                   TargetConfig(search=search, finalists=FinalistConfig(count=2)))
    assert not (tmp_path / "out").exists()
