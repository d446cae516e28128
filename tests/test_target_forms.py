"""The target search's budget repair (every scored structure uses the budget: no group can go one rung up) and its
fast forms (kernel blocks and intra shapes per conv): priced exactly by the MAC model, compacting into one grouped
convolution without data movement, equal to the masked network, withdrawn where a latency model cannot price them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from target_helpers import FAST, SyntheticLatency, tiny_target_runs

from structprune.cli import build_parser
from structprune.compact.compaction import compact
from structprune.compact.kernel_conv import KernelSparseConv2d
from structprune.errors import StructpruneError
from structprune.metrics import count_macs
from structprune.models import create
from structprune.runfolder import load_run
from structprune.search.target_cost import LatencyCost, MacCost
from structprune.search.target_forms import parse_forms
from structprune.search.target_repair import BudgetRepair
from structprune.search.target_search import Target, TargetSearchConfig
from structprune.search.target_space import TargetSpace
from structprune.sparsity.masking import MaskApplier
from structprune.sparsity.masks import NetworkMask
from structprune.sparsity.selection import channel_groups_of
from structprune.stages.target import TargetConfig, target_run

FORMS = ("channel", "blocks", "intra")
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    return tiny_target_runs(tmp_path_factory.mktemp("forms"))


def _space(name: str, forms=FORMS, round_to: int = 2, min_keep: float = 0.25):
    torch.manual_seed(0)
    model = create(name, in_channels=3, input_size=16).eval()
    groups = channel_groups_of(model)
    return model, groups, TargetSpace(model, groups, round_to, min_keep, forms=forms)


def _one_rung_up(space: TargetSpace, particle: np.ndarray) -> list[np.ndarray]:
    """Each group one rung up (those not at the top), nothing else changed."""
    out = []
    for i, root in enumerate(space.roots):
        rung = space.rung(root, particle[i])
        if rung > 0:
            raised = particle.copy()
            raised[i] = next(c for c in range(space.k) if space.rung(root, c) == rung - 1)
            out.append(raised)
    return out


# ------------------------------------------------------------------------------------------------ the repair
@pytest.mark.parametrize("forms", [("channel",), FORMS])
def test_repair_meets_the_budget_and_no_group_can_go_up(forms):
    _, _, space = _space("tiny-resnet", forms)
    cost = MacCost(space, (3, 16, 16))
    repair = BudgetRepair(space, cost, 0.5)
    for particle in np.random.default_rng(1).integers(0, space.k, (6, space.n)).astype(np.int16):
        fixed = repair(particle)
        assert cost.predict(fixed) <= 0.5 + 1e-12
        assert all(cost.predict(up) > 0.5 for up in _one_rung_up(space, fixed))
        if any(space.rung(r, c) > 0 for r, c in zip(space.roots, fixed.tolist(), strict=False)):
            assert np.array_equal(fixed[space.channel_dims:], particle[space.channel_dims:])  # forms as chosen


def test_the_global_importance_structure_fills_the_budget_and_follows_importance():
    model, groups, space = _space("tiny-paper", ("channel",))
    cost = MacCost(space, (3, 16, 16))
    repair = BudgetRepair(space, cost, 0.5)
    ranked = repair.by_importance(space.uniform(0))
    assert cost.predict(ranked) <= 0.5 + 1e-12
    assert all(cost.predict(up) > 0.5 for up in _one_rung_up(space, ranked))
    # half the maps of one group made near worthless: the ranking keeps at most the other half of that group,
    # while the uniform start keeps more of it
    root = space.roots[1]
    size = groups[root].size
    with torch.no_grad():
        weak = torch.argsort(model.get_submodule(root).weight.abs().flatten(1).sum(1))[: size // 2]
        model.get_submodule(root).weight[weak] *= 1e-4
    skewed = TargetSpace(model, groups, 2, 0.25, forms=("channel",))
    skewed_repair = BudgetRepair(skewed, MacCost(skewed, (3, 16, 16)), 0.8)
    uniform = skewed.counts(skewed_repair(skewed.uniform(0)))[root]
    assert skewed.counts(skewed_repair.by_importance(skewed.uniform(0)))[root] <= size // 2 < uniform


def test_maps_go_by_torch_pruning_group_l2_when_asked(runs, tmp_path):
    from structprune.arch import example_input
    from structprune.search.target_space import map_importance
    from structprune.stages.prune import load_masks

    model = load_run(runs["tiny-resnet"]).model.eval()
    groups = channel_groups_of(model)
    scores = map_importance("tp-l2", model, groups, example_input(model))
    space = TargetSpace(model, groups, FAST.round_to, FAST.min_keep, importance=scores)
    assert set(scores) == set(space.roots) and all(scores[r].numel() == groups[r].size for r in space.roots)
    by_l1 = TargetSpace(model, groups, FAST.round_to, FAST.min_keep)
    assert any(not torch.equal(space.order[r], by_l1.order[r]) for r in space.roots)  # the ranking is another
    search = TargetSearchConfig(**{**FAST.__dict__, "importance": "tp-l2"})
    out, _ = target_run(runs["tiny-resnet"], tmp_path / "out", Target("macs", 2.0), TargetConfig(search=search))
    masks = load_masks(load_run(out))
    cut = [root for root in space.roots if root in masks.layers and masks.layers[root].keep_out is not None
           and not bool(masks.layers[root].keep_out.all())]
    assert cut  # some group lost maps: the test is not vacuous
    for root in cut:
        keep = masks.layers[root].keep_out
        kept = int(keep.sum())
        assert set(torch.nonzero(keep).flatten().tolist()) == set(space.order[root][:kept].tolist())
    with pytest.raises(StructpruneError, match="unknown map importance"):
        TargetSearchConfig(importance="l3")


def test_repair_steps_forms_back_when_every_map_is_kept_and_budget_is_left():
    _, _, space = _space("tiny-paper")
    cost = MacCost(space, (3, 16, 16))
    heavy = space.with_forms(0, groups=4, shape=(1, 3))  # every map kept, forms cut most MACs
    assert cost.predict(heavy) < 0.5
    fixed = BudgetRepair(space, cost, 0.9)(heavy)
    assert 0.5 < cost.predict(fixed) <= 0.9
    assert space.layer_forms(fixed) != space.layer_forms(heavy)


def test_the_chosen_structure_uses_the_mac_budget(runs, tmp_path):
    out, _ = target_run(runs["tiny-paper"], tmp_path / "out", Target("macs", 2.0), TargetConfig(search=FAST))
    record = json.loads((out / "target.json").read_text())
    chosen = np.array(record["tries"][0]["choices"], dtype=np.int16)
    model = load_run(runs["tiny-paper"]).model
    space = TargetSpace(model, channel_groups_of(model), FAST.round_to, FAST.min_keep)
    cost = MacCost(space, (1, 8, 8))
    assert cost.predict(chosen) <= 0.5 + 1e-12
    assert all(cost.predict(up) > 0.5 for up in _one_rung_up(space, chosen))  # within one rung of the budget
    history = record["tries"][0]["history"]
    assert history[-1]["budget"] == pytest.approx(0.5) and 0.5 < history[-1]["budget_used"] <= 1.0 + 1e-9
    assert record["tries"][0]["budget_used"] == pytest.approx(cost.predict(chosen) / 0.5)


# ------------------------------------------------------------------------------------------------ the forms
def test_forms_are_offered_where_they_apply(caplog):
    with caplog.at_level(logging.INFO, logger="structprune.search"):
        _, _, space = _space("tiny-resnet")
    assert space.block_layers == ["layer1.0.conv2", "layer2.0.conv2", "layer3.0.conv2"]  # after a conv of its own
    assert "conv1" not in space.tap_layers and "layer2.0.shortcut.0" not in space.tap_layers
    assert len(space.tap_layers) == 6
    lines = [r.getMessage() for r in caplog.records if "target forms" in r.getMessage()]
    assert len(lines) == len({line.split(":")[1] for line in lines})  # one line per layer
    assert any("conv1: no kernel blocks (it reads the network's input)" in line for line in lines)
    _, _, plain = _space("tiny-resnet", ("channel",))
    assert plain.n == plain.channel_dims and plain.choices == {}


@pytest.mark.parametrize(("first", "second"), [(2, 4), (4, 2), (1, 4), (2, 2)])
def test_kernel_blocks_per_layer_compact_into_one_grouped_conv(first, second):
    model, groups, space = _space("tiny-paper", ("channel", "blocks"))
    particle = space.with_forms(0)
    for name, g in (("features.2", first), ("features.5", second)):
        i = space.channel_dims + space.block_layers.index(name)
        particle[i] = space.form_choice(space.choices[name].blocks.index(g), len(space.choices[name].blocks))
    assert {n: f.groups for n, f in space.layer_forms(particle).items()} == {"features.2": first, "features.5": second}
    small = compact(model, space.mask(particle), groups=groups)
    for name, g in (("features.2", first), ("features.5", second)):
        layer = small.get_submodule(name)
        if g > 1:
            assert isinstance(layer, KernelSparseConv2d) and len(layer.branches) == 1
            assert layer.branches[0].groups == g and not layer.moves_maps
    assert count_macs(small, (3, 16, 16)) == pytest.approx(MacCost(space, (3, 16, 16)).macs(particle))


@pytest.mark.parametrize("name", ["tiny-paper", "tiny-resnet"])
def test_random_structures_with_forms_compact_to_the_masked_network_at_the_predicted_macs(name):
    model, groups, space = _space(name)
    cost = MacCost(space, (3, 16, 16))
    x = torch.randn(4, 3, 16, 16)
    for particle in np.random.default_rng(0).integers(0, space.k, (4, space.n)).astype(np.int16):
        mask = space.mask(particle)
        small = compact(model, mask, groups=groups)
        assert count_macs(small, (3, 16, 16)) == pytest.approx(cost.macs(particle))
        masked = create(name, in_channels=3, input_size=16)
        masked.load_state_dict(model.state_dict())
        MaskApplier(masked.eval(), groups).apply_(mask)
        with torch.no_grad():
            assert torch.allclose(small(x), masked(x), atol=1e-5, rtol=1e-4)


def test_target_search_with_forms_meets_a_mac_budget_that_channels_alone_cannot(runs, tmp_path):
    # at least 3/4 of every group's maps: 2.5x fewer MACs is out of reach by channels alone
    cfg = TargetSearchConfig(particles=6, generations=2, round_to=2, min_keep=0.75, score_images=100, bn_batches=1)
    with pytest.raises(StructpruneError, match="out of reach"):
        target_run(runs["tiny-paper"], tmp_path / "plain", Target("macs", 2.5), TargetConfig(search=cfg))
    forms = TargetSearchConfig(**{**cfg.__dict__, "forms": FORMS})
    out, metrics = target_run(runs["tiny-paper"], tmp_path / "out", Target("macs", 2.5), TargetConfig(search=forms))
    run = load_run(out)
    mask = NetworkMask.from_json(json.loads((out / "masks.json").read_text()))
    assert any(layer.keep_kernel is not None or layer.intra is not None for _, layer in mask)
    small = compact(run.model, mask)  # run.model: the masked network saved by the stage
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(small(x), run.model.eval()(x), atol=1e-5, rtol=1e-4)
    dense = count_macs(create("tiny-paper", in_channels=1, input_size=8), (1, 8, 8))
    assert count_macs(small, (1, 8, 8)) * 2.5 <= dense and metrics["target"]["mac_reduction"] >= 2.5
    record = json.loads((out / "target.json").read_text())
    assert record["forms"] and record["tries"][0]["predicted_cost"] == pytest.approx(count_macs(small, (1, 8, 8)) / dense)


class _NoIntraLatency(SyntheticLatency):
    """A latency model that measured no intra variant."""

    def network_ms(self, forms):
        if any(getattr(f, "taps", None) is not None for f in forms.values()):
            raise StructpruneError("form g1:2x3 was not measured")
        return super().network_ms(forms)


def test_a_latency_model_without_a_variant_withdraws_that_form(caplog):
    model, _, space = _space("tiny-paper")
    assert space.tap_layers
    with caplog.at_level(logging.INFO, logger="structprune.search"):
        cost = LatencyCost(space, _NoIntraLatency(model, fixed=0.01))
    assert space.tap_layers == [] and space.block_layers == ["features.2", "features.5"]
    lines = [r.getMessage() for r in caplog.records if "did not measure" in r.getMessage()]
    assert len(lines) == 2 and "intra 2x3" in lines[0]
    blocked = space.with_forms(0, groups=4)
    assert cost.predict(blocked) < cost.predict(space.with_forms(0))  # kernel blocks are priced


def test_forms_parse_and_the_flag():
    assert parse_forms("blocks, channel") == ("channel", "blocks")
    assert parse_forms("intra") == ("channel", "intra")
    with pytest.raises(StructpruneError, match="comma-separated list"):
        parse_forms("channel,kernel")
    args = build_parser().parse_args(["prune", "run", "--out", "o", "--target-macs", "3",
                                      "--target-forms", "channel,blocks,intra"])
    assert parse_forms(args.target_forms) == FORMS


def test_a_measured_latency_model_prices_the_variants_it_has_and_withdraws_the_rest(caplog):
    from structprune.latency_model import LatencyModel, LayerForm
    from structprune.latency_model.model import Grid, LayerTimes

    _, _, space = _space("tiny-paper")

    def grids(cin: int, cout: int, variants: tuple[str, ...]) -> dict[str, Grid]:
        scale = {"g1": 1.0, "g2": 0.6, "g1:3x1": 0.4}
        return {v: Grid([2, cin], [2, cout], [[scale[v] * i * o / 64 for o in (2, cout)] for i in (2, cin)])
                for v in variants}

    layers = {"features.0": LayerTimes(3, 8, (3, 3), (16, 16), grids={"g1": Grid([3], [2, 8], [[0.1, 0.4]])}),
              "features.2": LayerTimes(8, 8, (3, 3), (8, 8), grids=grids(8, 8, ("g1", "g2", "g1:3x1"))),
              "features.5": LayerTimes(8, 16, (3, 3), (4, 4), grids=grids(8, 16, ("g1", "g1:3x1")))}
    latency = LatencyModel("eager", 1, 1, (3, 16, 16), layers, network_dense_ms=5.0)
    with caplog.at_level(logging.INFO, logger="structprune.search"):
        cost = LatencyCost(space, latency, form=LayerForm)
    assert space.choices["features.2"].blocks == [1, 2] and space.choices["features.5"].blocks == [1]
    assert space.choices["features.2"].shapes == [None, (3, 1)] == space.choices["features.5"].shapes
    assert len([r for r in caplog.records if "did not measure" in r.getMessage()]) == 2
    both = space.with_forms(0, groups=2, shape=(3, 1))
    assert space.describe_forms(both) == {"features.2": {"blocks": 2, "taps": "3x1"},
                                          "features.5": {"blocks": 1, "taps": "3x1"}}
    assert cost.predict(both) < cost.predict(space.with_forms(0, shape=(3, 1))) < cost.predict(space.with_forms(0))


def test_prune_to_target_with_forms_on_a_network_of_your_own():
    import structprune

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, padding=1),
                                torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 4))
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 4, (32,))
    masks = structprune.prune_to_target(model, x, structprune.mcr_scorer([(x, y)]), target_macs=3, round_to=4,
                                        min_keep=0.75, particles=4, generations=2, forms="channel,blocks,intra")
    assert any(layer.keep_kernel is not None or layer.intra is not None for _, layer in masks)
    small = structprune.compact(model, masks)
    assert count_macs(small, (3, 8, 8)) * 3 <= count_macs(model, (3, 8, 8))
