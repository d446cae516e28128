"""prune --method tp-l2 one shot: Torch-Pruning's own pruner decides, the result is an ordinary mask."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from torch import nn

from structprune import models
from structprune.compact.compaction import compact
from structprune.errors import StructpruneError
from structprune.metrics import count_macs
from structprune.sparsity.channel_groups import find_channel_groups
from structprune.sparsity.masking import MaskApplier
from structprune.sparsity.selection import select_masks

NETS = ["resnet20", "mobilenetv2", "densenet", "paper-cifar10"]


def _net(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = models.create(name, num_classes=10, in_channels=3, input_size=32).eval()
    return model, torch.randn(2, 3, 32, 32)


def _torch_pruning_itself(model: nn.Module, x: torch.Tensor, ratio: float, scope: str) -> nn.Module:
    work = copy.deepcopy(model).eval()
    pruner = tp.pruner.MetaPruner(work, x[:1], importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=ratio, global_pruning=scope == "global", round_to=8,
                                  ignored_layers=[m for m in work.modules() if isinstance(m, nn.Linear)])
    pruner.step()
    return work


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_tp_mask_compacts_to_what_torch_pruning_removes(name: str, scope: str) -> None:
    model, x = _net(name)
    groups = find_channel_groups(model, x[:1])
    mask = select_masks(model, "channel", 0.5, method="tp-l2", scope=scope, groups=groups, round_to=8)
    small = compact(model, mask, sample=x, groups=groups).eval()
    with torch.no_grad(), MaskApplier(model, groups).applied(mask):
        want = model(x)
    with torch.no_grad():
        got = small(x)
    assert float((got - want).abs().max()) <= 1e-4 * max(float(want.abs().max()), 1e-2)
    theirs = _torch_pruning_itself(model, x, 0.5, scope)
    shape = tuple(x.shape[1:])
    assert count_macs(small, shape) == count_macs(theirs, shape)  # the same channels go, hence the same MACs
    with torch.no_grad():
        assert float((theirs(x) - got).abs().max()) <= 1e-4 * max(float(got.abs().max()), 1e-2)


def test_uniform_tp_keeps_multiples_of_round_to() -> None:
    model, x = _net("resnet20")
    groups = find_channel_groups(model, x[:1])
    mask = select_masks(model, "channel", 0.5, method="tp-l2", groups=groups, round_to=8)
    kept = [int(layer.keep_out.sum()) for _, layer in mask if layer.keep_out is not None]
    assert kept and all(k % 8 == 0 for k in kept)


def test_tp_is_refused_at_the_kernel_scale() -> None:
    model, _ = _net("paper-cifar10")
    with pytest.raises(StructpruneError, match="channels only"):
        select_masks(model, "channel,kernel", 0.5, method="tp-l2")


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_group_l2_importance_is_torch_prunings_own_per_root_channel(name: str) -> None:
    from structprune.sparsity.tp_selection import tp_group_l2_importance

    model, x = _net(name)
    groups = find_channel_groups(model, x[:1])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = tp_group_l2_importance(model, groups, x[:1])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model is not changed
    assert set(scores) == {g.root for g in groups if not g.linear}
    graph = tp.DependencyGraph().build_dependency(copy.deepcopy(model), example_inputs=x[:1])
    copy_modules = dict(graph.model.named_modules())
    for root in list(scores)[:4]:
        conv = copy_modules[root]
        group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(conv.out_channels)))
        expected = tp.importance.GroupMagnitudeImportance(p=2)(group).double()
        assert scores[root].shape == (groups[root].size,)
        assert torch.allclose(scores[root], expected, rtol=1e-6)
    only = tp_group_l2_importance(model, groups, x[:1], roots=[next(iter(scores))])
    assert list(only) == [next(iter(scores))] and torch.equal(only[next(iter(scores))], scores[next(iter(scores))])
