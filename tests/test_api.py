"""The Python API on networks of the user's own class: prune, compact, apply_masks, search, save/load, mcr_scorer."""

from __future__ import annotations

import copy

import pytest
import torch
from prune_nets import TinyResNet, randomize_bn
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import structprune
from structprune.cli import main
from structprune.errors import StructpruneError
from structprune.models import create
from structprune.sparsity.masks import NetworkMask


def resnet() -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(TinyResNet(in_channels=3, num_classes=5, width=8)).eval()


X = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
EXACT = {"kernel": "unstructured", "intra_free": True, "round_to": 1}  # the library's own forms (not the fast defaults)


def masked_copy(model: nn.Module, masks: NetworkMask) -> nn.Module:
    return structprune.apply_masks(copy.deepcopy(model), masks)


def loader(images: int = 48, seed: int = 2) -> DataLoader:
    """Class-dependent images (the class sets the mean of one colour channel), in a fixed order."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(images) % 5
    x = torch.randn(images, 3, 8, 8, generator=g) * 0.5
    x[:, 0] += y.view(-1, 1, 1).float() - 2
    return DataLoader(TensorDataset(x, y), batch_size=16)


@pytest.mark.parametrize("granularity", ["channel", "kernel", "intra", "channel,kernel,intra"])
def test_prune_then_compact_computes_the_masked_residual_network(granularity):
    model = resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = structprune.prune(model, X, granularity=granularity, ratio=0.5, **EXACT)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # prune leaves the model alone
    assert masks.input_shape == (3, 8, 8)
    small = structprune.compact(model, masks)  # no input needed: the masks remember its shape
    masked = masked_copy(model, masks)
    assert torch.allclose(small(X), masked(X), atol=1e-5)
    assert not torch.allclose(masked(X), model(X), atol=1e-3)  # the masks did remove something
    full = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in small.parameters()) < 0.8 * full
    if "channel" in granularity:  # the residual adds couple stem, b1 and the shortcut: one group, halved together
        roots = [name for name, lm in masks if lm.keep_out is not None]
        assert "stem.0" in roots and "b1.3" not in roots
        assert int(masks.layers["stem.0"].keep_out.sum()) == 4
        assert small.stem[0].out_channels == 4 and small.b1[3].out_channels == 4


def test_prune_takes_one_ratio_per_granularity_and_nests_in_a_base():
    model = resnet()
    first = structprune.prune(model, X, granularity="channel", ratio=0.25, **EXACT)
    both = structprune.prune(model, X, granularity=["channel", "intra"], ratio=[0.5, 0.6], base=first, **EXACT)
    for name, lm in first:
        assert not bool((~lm.keep_out & both.layers[name].keep_out).any())  # pruned before stays pruned
    taps = {len(p.taps(9)) for _, lm in both if lm.intra for p in lm.intra if p is not None}
    assert taps == {4}  # 1 - 0.6 of 9 positions, rounded


def test_random_method_is_seeded():
    model = resnet()
    a = structprune.prune(model, X, ratio=0.5, method="random", seed=3, **EXACT)
    b = structprune.prune(model, X, ratio=0.5, method="random", seed=3, **EXACT)
    c = structprune.prune(model, X, ratio=0.5, method="random", seed=4, **EXACT)
    assert a.to_json() == b.to_json() and a.to_json() != c.to_json()


def test_search_finds_the_maps_the_score_asks_for_where_l1_does_not():
    """A score that counts zeroed even-numbered maps of the stem group: the best masks keep exactly those."""
    model = resnet()
    with torch.no_grad():  # L1 prefers the odd maps of the stem/b1/shortcut group
        for conv in (model.stem[0], model.b1[3]):
            conv.weight[1::2] *= 10

    def even_maps_lost(net: nn.Module) -> float:
        return float((net.stem[0].weight[0::2].flatten(1).abs().sum(1) == 0).sum())

    l1 = structprune.prune(model, X, granularity="channel", ratio=0.5, **EXACT)
    assert even_maps_lost(masked_copy(model, l1)) == 4
    found = structprune.search(model, X, even_maps_lost, granularity="channel", ratio=0.5, particles=12,
                               generations=6, temperature=0.5)
    assert even_maps_lost(masked_copy(model, found)) == 0
    assert found.layers["stem.0"].keep_out.tolist() == [True, False] * 4
    assert {n: int(lm.keep_out.sum()) for n, lm in found} == {n: int(lm.keep_out.sum()) for n, lm in l1}
    small = structprune.compact(model, found)
    assert torch.allclose(small(X), masked_copy(model, found)(X), atol=1e-5)


@pytest.mark.parametrize("granularity", ["channel", "kernel", "intra"])
def test_search_scores_no_worse_than_l1_and_keeps_its_counts(granularity):
    model = resnet()
    score = structprune.mcr_scorer(loader())
    l1 = structprune.prune(model, X, granularity=granularity, ratio=0.5, **EXACT)
    found = structprune.search(model, X, score, granularity=granularity, ratio=0.5, particles=4, generations=2)
    assert score(masked_copy(model, found)) <= score(masked_copy(model, l1))
    field = {"channel": "keep_out", "kernel": "keep_kernel"}.get(granularity)
    for name, lm in l1:
        if field:
            assert int(getattr(found.layers[name], field).sum()) == int(getattr(lm, field).sum())
        else:
            assert {len(p.taps(9)) for p in found.layers[name].intra} == {len(p.taps(9)) for p in lm.intra}


def test_search_at_three_scales_compacts():
    model = resnet()
    found = structprune.search(model, X, structprune.mcr_scorer(loader()), granularity="channel,kernel,intra",
                               ratio=[0.25, 0.25, 0.5], particles=4, generations=2, evolutionary=True)
    assert {n for n, lm in found if lm.keep_out is not None} and {n for n, lm in found if lm.intra}
    assert {n for n, lm in found if lm.keep_kernel is not None}
    small = structprune.compact(model, found)
    assert torch.allclose(small(X), masked_copy(model, found)(X), atol=1e-5)


def test_mcr_scorer_counts_mistakes_and_restores_the_mode():
    model = resnet()
    data = loader(images=20)
    model.train()
    plain = structprune.mcr_scorer(data, tie=0.0)(model)
    assert model.training
    with torch.no_grad():
        model.eval()
        x, y = next(iter(DataLoader(data.dataset, batch_size=20)))
        assert plain == pytest.approx(float((model(x).argmax(1) != y).float().mean()))
    assert structprune.mcr_scorer(data)(model) > plain or plain == 1.0  # the cross-entropy tie-break adds a little


def test_save_and_load_a_network_of_the_users_own_class(tmp_path):
    model = resnet()
    masks = structprune.prune(model, X, granularity="channel,intra", ratio=0.5)
    small = structprune.compact(model, masks)
    structprune.save(tmp_path / "small", small, example_input=X)
    with pytest.raises(StructpruneError, match=r"TinyResNet.*model_factory"):
        structprune.load(tmp_path / "small")
    again = structprune.load(tmp_path / "small", model_factory=lambda: TinyResNet(3, 5, 8))
    assert torch.allclose(again(X), small(X), atol=1e-6)
    assert not again.training
    with pytest.raises(StructpruneError, match=r"layer 'stem\.0' does not exist in Sequential"):
        structprune.load(tmp_path / "small", model_factory=lambda: nn.Sequential(nn.Conv2d(3, 8, 3)))

    def with_extra_parameter() -> nn.Module:
        net = TinyResNet(3, 5, 8)
        net.scale = nn.Parameter(torch.ones(1))
        return net

    with pytest.raises(StructpruneError, match="does not match the network model_factory builds"):
        structprune.load(tmp_path / "small", model_factory=with_extra_parameter)
    structprune.save(tmp_path / "masked", masked_copy(model, masks), masks=masks)  # shape from the masks
    assert structprune.load_masks(tmp_path / "masked").to_json() == masks.to_json()


def test_a_registered_network_saved_through_the_api_is_read_by_the_cli(tmp_path, capsys):
    model = randomize_bn(create("tiny-resnet", num_classes=4, in_channels=3, input_size=8)).eval()
    masks = structprune.prune(model, None, granularity="channel", ratio=0.5, **EXACT)  # the registry knows the input
    structprune.save(tmp_path / "masked", masked_copy(model, masks), masks=masks, metrics={"note": 1})
    assert main(["compact", str(tmp_path / "masked"), "--out", str(tmp_path / "small")]) == 0
    small = structprune.load(tmp_path / "small")
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(small(x), masked_copy(model, masks)(x), atol=1e-5)
    assert main(["info", str(tmp_path / "small")]) == 0


class Unrunnable(nn.Module):
    def forward(self, x):
        raise ValueError("boom\nsecond line")


@pytest.mark.parametrize(("call", "message"), [
    (lambda m: structprune.prune("resnet", X), "must be a torch.nn.Module"),
    (lambda m: structprune.prune(m, "x"), "example_input must be"),
    (lambda m: structprune.prune(m, torch.randn(1, 5, 8, 8)), "does not run on example_input"),
    (lambda m: structprune.prune(Unrunnable(), X), "does not run on example_input .*ValueError: boom"),
    (lambda m: structprune.prune(m, X, granularity="filter"), "unknown granularity 'filter'"),
    (lambda m: structprune.prune(m, X, ratio=1.5), "pruning ratio 1.5"),
    (lambda m: structprune.prune(m, X, ratio="half"), "ratio must be a number"),
    (lambda m: structprune.prune(m, X, granularity="channel,intra", ratio=[0.1, 0.2, 0.3]), "3 ratios given for 2"),
    (lambda m: structprune.prune(m, X, method="pf"), "unknown selection method 'pf'"),
    (lambda m: structprune.prune(m, X, colour="red"), "unknown option.*colour"),
    (lambda m: structprune.compact(m, "masks"), "masks must be a NetworkMask"),
    (lambda m: structprune.compact(m, NetworkMask()), "give example_input"),
    (lambda m: structprune.compact(nn.Sequential(nn.Conv2d(3, 4, 3)), structprune.prune(m, X)), "does not have"),
    (lambda m: structprune.search(m, X, 42), "score_fn must be a function"),
    (lambda m: structprune.search(m, X, lambda net: "low", particles=2, generations=1), "returned str, not a number"),
    (lambda m: structprune.search(m, X, lambda net: float("nan"), particles=2, generations=1), "finite number"),
    (lambda m: structprune.search(m, X, lambda net: 0.0, kernel="blocks:2"), "free kernel masks"),
    (lambda m: structprune.search(m, X, lambda net: 0.0, particles=1), "at least 2 particles"),
    (lambda m: structprune.mcr_scorer([{"x": X}])(m), r"\(inputs, labels\) batches"),
    (lambda m: structprune.mcr_scorer([])(m), "yielded no images"),
    (lambda m: structprune.mcr_scorer(3), "needs a data loader"),
    (lambda m: structprune.load("/nonexistent/run"), "no such run folder"),
    (lambda m: structprune.load("/nonexistent/run", model_factory=TinyResNet), "not a run folder"),
    (lambda m: structprune.load("/nonexistent/run", model_factory=42), "model_factory must be a callable"),
    (lambda m: structprune.save("/nonexistent/run", m, masks=structprune.prune(m, X)) and None, None),
])
def test_bad_arguments_give_one_clear_line(call, message, tmp_path):
    if message is None:  # save of masks with the compact network they do not fit
        model = resnet()
        masks = structprune.prune(model, X, **EXACT)
        with pytest.raises(StructpruneError, match="masks do not fit this network") as info:
            structprune.save(tmp_path / "run", structprune.compact(model, masks), masks=masks)
    else:
        with pytest.raises(StructpruneError, match=message) as info:
            call(resnet())
    assert "\n" not in str(info.value)
