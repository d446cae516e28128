"""Cached scoring on the traced graph (scoring_fx) gives every candidate the score of a full forward pass, on
residual, inverted-residual, dense and user networks, with and without batch-norm re-estimation; graphs it
cannot cache, and rungs whose tail is nearly the whole network, fall back to the full forward pass with one log
line."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from search_helpers import UserResNet  # noqa: F401  (registers test-search-user-resnet)
from torch import nn

from structprune.errors import StructpruneError
from structprune.models import create, register
from structprune.search.config import SearchConfig
from structprune.search.fx_graph import split_graph, trace
from structprune.search.network import SearchNet, conv_names
from structprune.search.scoring import ScoreSet
from structprune.search.scoring_full import SCORING_FULL, SCORING_FX, FullForwardScorer
from structprune.search.scoring_fx import FULL_FORWARD_SHARE, FxCachedScorer, full_forward_reason, tail_conv_share
from structprune.search.steps import make_steps
from structprune.sparsity.granularity import Granularity
from structprune.sparsity.masks import NetworkMask

NETWORKS = ["tiny-resnet", "tiny-mobilenet", "tiny-densenet", "test-search-user-resnet"]


def model_of(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = create(name, num_classes=10, in_channels=3, input_size=16).eval()
    for m in model.modules():  # statistics and shifts of their own, so that pruned maps change the logits
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


def images(count: int, seed: int) -> torch.Tensor:
    return torch.randn(count, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def data() -> ScoreSet:
    return ScoreSet(images(24, 1), torch.randint(0, 10, (24,), generator=torch.Generator().manual_seed(2)))


def rungs(net: SearchNet, grans: tuple[Granularity, ...], base: NetworkMask):
    cfg = SearchConfig(ratio=0.5, granularities=grans)
    for step in make_steps(net, cfg):
        for unit in step.units(conv_names(net.model)):
            yield from step.rungs(base, unit)[:1]


def same_scores(net: SearchNet, rung, data: ScoreSet, recal: torch.Tensor | None, count: int = 2,
                varying: bool = True) -> None:
    """`varying`: the base's masks of the other layers written once (else every candidate writes them all)."""
    masks = rung.network_masks(rung.space.sample(np.random.default_rng(0), count))
    cached = FxCachedScorer(net.model, net.applier, net.traced(), rung.touched_modules(), rung.base, data,
                            tie=0.0, batch=16, recalibrate=recal, recal_batch=16,
                            varying=rung.varying_layers() if varying else None)
    full = FullForwardScorer(net.model, net.applier, data, tie=0.0, batch=16, recalibrate=recal, recal_batch=16)
    (mcr, ce), (ref_mcr, ref_ce) = cached.mcr_and_ce(masks), full.mcr_and_ce(masks)
    assert np.array_equal(mcr, ref_mcr), rung.layer
    np.testing.assert_allclose(ce, ref_ce, rtol=1e-5, err_msg=rung.layer)
    assert cached.split.tail_nodes < cached.split.nodes  # something was cached


@pytest.mark.parametrize("name", NETWORKS)
def test_every_channel_group_scores_as_the_full_forward_pass(name, data):
    net = SearchNet(model_of(name))
    before = {k: v.clone() for k, v in net.model.state_dict().items()}
    for rung in rungs(net, (Granularity.CHANNEL,), NetworkMask()):
        same_scores(net, rung, data, None)
    assert all(torch.equal(before[k], v) for k, v in net.model.state_dict().items())  # weights restored


@pytest.mark.parametrize("name", NETWORKS)
def test_kernel_and_intra_rungs_and_batch_norm_reestimation_score_as_the_full_forward_pass(name, data):
    net = SearchNet(model_of(name))
    recal = images(40, 3)
    before = {k: v.clone() for k, v in net.model.state_dict().items()}
    found = list(rungs(net, (Granularity.KERNEL, Granularity.INTRA, Granularity.CHANNEL), NetworkMask()))
    for rung in found[::3]:
        same_scores(net, rung, data, recal, count=1)
    assert all(torch.equal(before[k], v) for k, v in net.model.state_dict().items())  # statistics restored


@pytest.mark.parametrize("name", ["tiny-resnet", "tiny-densenet"])
def test_candidates_on_a_pruned_base_score_as_the_full_forward_pass(name, data):
    """A base mask with channel, kernel and intra masks elsewhere in the network (not written into the model:
    the scorer applies the base where it caches and the candidate's masks where it runs)."""
    net = SearchNet(model_of(name))
    rng = np.random.default_rng(1)
    base = NetworkMask()
    for rung in rungs(net, (Granularity.CHANNEL, Granularity.INTRA), NetworkMask()):
        if rng.random() < 0.5:
            base = rung.to_mask(rung.space.sample(rng, 1)[0], base)
    assert base.layers
    for i, rung in enumerate(list(rungs(net, (Granularity.CHANNEL, Granularity.KERNEL), base))[::2]):
        same_scores(net, rung, data, None, varying=i % 2 == 0)


def test_the_tail_computes_the_masked_networks_logits(data):
    net = SearchNet(model_of("tiny-mobilenet"))
    rung = list(rungs(net, (Granularity.CHANNEL,), NetworkMask()))[3]
    mask = rung.network_masks(rung.space.sample(np.random.default_rng(0), 1))[0]
    cached = FxCachedScorer(net.model, net.applier, net.traced(), rung.touched_modules(), rung.base, data)
    with torch.no_grad(), cached._written(mask):
        (values, _), = cached.cache
        logits = cached.split.tail(*values)
    with torch.no_grad(), net.applier.applied(mask):
        reference = net.model(data.x)
    torch.testing.assert_close(logits, reference)
    assert not torch.equal(reference, net.model(data.x))  # the candidate changes the logits


class InPlace(nn.Module):
    """`out += x` and `relu_` on values nothing reads again: rewritten out of place, cached exactly."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, input_size: int = 16, hazard: bool = False):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 6, 3, padding=1)
        self.conv1 = nn.Conv2d(6, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Linear(6, num_classes)
        self.hazard = hazard

    def forward(self, x):
        x = self.stem(x).relu_()
        out = self.conv2(torch.relu(self.conv1(x)))
        if self.hazard:  # relu_ changes `out`, which the add reads afterwards
            y = torch.relu_(out)
            out = y + out
        else:
            out += x
        return self.head(out.mean((2, 3)))


@register("test-fx-inplace")
def in_place(num_classes: int = 10, in_channels: int = 3, input_size: int = 16, hazard: bool = False) -> InPlace:
    return InPlace(num_classes, in_channels, input_size, hazard)


class ChangesKept(nn.Module):
    """`add_` on the stem's output after conv1 read it: for conv1's rung, a value the head keeps."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, input_size: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 6, 3, padding=1)
        self.conv1 = nn.Conv2d(6, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Linear(6, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = x.add_(torch.relu(self.conv1(x)))
        return self.head(self.conv2(x).mean((2, 3)))


@register("test-fx-changes-kept")
def changes_kept(num_classes: int = 10, in_channels: int = 3, input_size: int = 16) -> ChangesKept:
    return ChangesKept(num_classes, in_channels, input_size)


def test_the_tail_changes_its_own_values_in_place_and_never_the_kept_ones(data):
    net = SearchNet(model_of("test-fx-changes-kept"))
    methods = {name: {str(n.target) for n in split_graph(net.traced(), net.model, {name}).tail.graph.nodes}
               for name in ("stem", "conv1")}
    assert "add_" in methods["stem"]  # the stem's output is the tail's own: changed in place, as the model does
    assert "add" in methods["conv1"] and "add_" not in methods["conv1"]  # here the head keeps it: out of place
    rung = next(r for r in rungs(net, (Granularity.KERNEL,), NetworkMask()) if r.layer == "conv1")
    assert rung.touched_modules() == {"conv1"}
    cached = FxCachedScorer(net.model, net.applier, net.traced(), rung.touched_modules(), rung.base, data,
                            tie=0.0, batch=16, varying=rung.varying_layers())
    kept = [tuple(v.clone() for v in values) for values, _ in cached.cache]
    same_scores(net, rung, data, None, count=3)
    cached.mcr_and_ce(rung.network_masks(rung.space.sample(np.random.default_rng(0), 2)))
    assert all(torch.equal(a, b) for (values, _), before in zip(cached.cache, kept, strict=True)
               for a, b in zip(values, before, strict=True))


class Untraceable(InPlace):
    def forward(self, x):
        if x.sum() > 0:  # control flow on a value: torch.fx cannot trace it
            x = x * 2
        return super().forward(x)


@register("test-fx-untraceable")
def untraceable(num_classes: int = 10, in_channels: int = 3, input_size: int = 16) -> Untraceable:
    return Untraceable(num_classes, in_channels, input_size)


def test_in_place_operations_are_rewritten_and_hazards_refused(data):
    net = SearchNet(model_of("test-fx-inplace"))
    ops = {str(n.target) for n in net.traced().graph.nodes}
    assert "relu_" not in ops and "<built-in function iadd>" not in ops
    for rung in rungs(net, (Granularity.CHANNEL, Granularity.KERNEL), NetworkMask()):
        same_scores(net, rung, data, None)
    with pytest.raises(StructpruneError, match=r"in-place operation at relu_.* changes conv2"):
        trace(create("test-fx-inplace", hazard=True))


def test_graphs_the_cache_cannot_use_fall_back_with_one_log_line(data, caplog):
    with caplog.at_level(logging.INFO, logger="structprune.search"):
        net = SearchNet(model_of("test-fx-untraceable"))
        found = list(rungs(net, (Granularity.CHANNEL,), NetworkMask()))
        assert len(found) > 1
        assert {rung.scorer(data, 0.0, None)[2] for rung in found} == {SCORING_FULL}
    lines = [r.getMessage() for r in caplog.records if "full forward" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("torch.fx cannot trace Untraceable")
    net = SearchNet(model_of("tiny-resnet"))
    rung = list(rungs(net, (Granularity.CHANNEL,), NetworkMask()))[2]
    assert rung.scorer(data, 0.0, None)[2] == SCORING_FX
    with pytest.raises(StructpruneError, match="never runs"):
        split_graph(net.traced(), net.model, {"no.such.module"})


@pytest.mark.parametrize("name", ["tiny-resnet", "test-fx-inplace"])
def test_the_first_rung_falls_back_to_the_full_forward_pass_and_a_late_one_does_not(name, data, caplog):
    net = SearchNet(model_of(name))
    found = list(rungs(net, (Granularity.CHANNEL,), NetworkMask()))
    with caplog.at_level(logging.INFO, logger="structprune.search"):
        first, late = found[0].scorer(data, 0.0, None), found[-1].scorer(data, 0.0, None)
        found[0].scorer(data, 0.0, None)  # a second rung of the same unit: said once
    assert first.how == SCORING_FULL and isinstance(first.scorer, FullForwardScorer)
    assert first.why == "no convolution runs before the searched layers, so the tail is the whole network"
    assert late.how == SCORING_FX and isinstance(late.scorer, FxCachedScorer)
    assert late.why.startswith("the tail to rerun holds ") and late.why.endswith("% of the conv MACs")
    lines = [r.getMessage() for r in caplog.records if "full forward" in r.getMessage()]
    assert lines == [f"{found[0].layer}: {first.why}; scoring by a full forward pass per candidate"]
    full = FullForwardScorer(net.model, net.applier, data, tie=0.0)
    for rung, scoring in ((found[0], first), (found[-1], late)):
        particles = rung.space.sample(np.random.default_rng(3), 3)
        (mcr, ce), (ref_mcr, ref_ce) = scoring.scorer.mcr_and_ce(scoring.decode(particles)), \
            full.mcr_and_ce(rung.network_masks(particles))
        assert np.array_equal(mcr, ref_mcr), rung.layer
        np.testing.assert_allclose(ce, ref_ce, rtol=1e-5, err_msg=rung.layer)


def test_a_tail_holding_most_of_the_conv_macs_falls_back(data):
    """tiny-resnet's layer1.0.conv1: the head runs conv1 only; with conv1's MACs shrunk the tail holds more
    than FULL_FORWARD_SHARE of them."""
    net = SearchNet(model_of("tiny-resnet"))
    rung = next(r for r in rungs(net, (Granularity.CHANNEL,), NetworkMask()) if r.layer == "layer1.0.conv1")
    split = split_graph(net.traced(), net.model, rung.touched_modules())
    macs = net.layer_macs((3, 16, 16))
    assert "conv1" in split.head_modules and "conv1" not in split.tail_modules
    assert tail_conv_share(split, macs) == 1 - macs["conv1"] / sum(macs.values()) < FULL_FORWARD_SHARE
    assert full_forward_reason(split, macs) is None
    shrunk = {**macs, "conv1": 1}
    assert full_forward_reason(split, shrunk) == "the tail to rerun holds 100% of the conv MACs (at least 90%)"
    shares = [tail_conv_share(split_graph(net.traced(), net.model, r.touched_modules()), macs)
              for r in rungs(net, (Granularity.CHANNEL,), NetworkMask())]
    assert shares[0] == 1.0 and shares == sorted(shares, reverse=True)  # input side first: less and less to rerun


def test_the_tail_runs_without_gradients_on_the_model_in_eval_mode(data):
    net = SearchNet(model_of("tiny-resnet"))
    rung = list(rungs(net, (Granularity.CHANNEL,), NetworkMask()))[-1]
    scoring = rung.scorer(data, 0.0, None)
    assert scoring.how == SCORING_FX
    seen: list[tuple[bool, bool]] = []
    conv = net.model.get_submodule(rung.layer)
    hook = conv.register_forward_hook(lambda m, i, o: seen.append((torch.is_grad_enabled(), m.training)))
    try:
        scoring.scorer.mcr_and_ce(scoring.decode(rung.space.sample(np.random.default_rng(0), 2)))
    finally:
        hook.remove()
    assert seen and set(seen) == {(False, False)}
