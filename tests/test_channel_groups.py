"""Channel groups from Torch-Pruning's dependency graph: roots, coupled members, pitfalls."""

from __future__ import annotations

import pytest
import torch
from prune_nets import TinyDenseNet, TinyResNet, family_models
from torch import nn

from structprune import models
from structprune.errors import StructpruneError
from structprune.sparsity.channel_groups import find_channel_groups


def test_plain_network_groups_are_each_conv_with_its_consumer():
    model = models.create("tiny-paper", in_channels=1, input_size=8)
    groups = find_channel_groups(model, torch.randn(1, 1, 8, 8))
    assert list(groups.groups) == ["features.0", "features.2", "features.5", "classifier.1"]
    assert not any(groups[name].linear for name in ["features.0", "features.2", "features.5"])
    assert groups["features.0"].member_names("in") == ["features.2"]
    hidden = groups["classifier.1"]  # the hidden FC layer's units; the classifier (classifier.3) is never a root
    assert hidden.linear and hidden.size == 32
    assert hidden.member_names("out") == ["classifier.1"] and hidden.member_names("in") == ["classifier.3"]
    last = groups["features.5"]
    assert last.member_names("in") == ["classifier.1"]
    fc = next(m for m in last.members if m.name == "classifier.1")
    # flatten -> linear: each of the 16 maps feeds 2×2 = 4 features, in channel-major order
    assert len(fc.index) == 64 and fc.root.tolist()[:8] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_residual_partners_share_one_group_with_every_batch_norm():
    model = TinyResNet()
    groups = find_channel_groups(model, torch.randn(1, 3, 8, 8))
    stem = groups["stem.0"]
    assert set(stem.member_names("out")) >= {"stem.0", "stem.1", "b1.3", "b1.4"}
    assert set(stem.member_names("in")) >= {"b1.0", "b2.0", "short.0"}
    assert groups.root_of("b1.3") == "stem.0" and groups.root_of("short.0") == "b2.3"
    assert "head" not in groups.groups  # the classifier is never a root


def test_concatenation_members_carry_offsets_into_the_concatenated_maps():
    model = TinyDenseNet(growth=4)
    groups = find_channel_groups(model, torch.randn(1, 3, 8, 8))
    l1 = groups["l1.2"]
    bn2 = next(m for m in l1.members if m.name == "l2.0")  # BN over [stem maps (8), l1 maps (4)]
    assert bn2.index.tolist() == [8, 9, 10, 11] and bn2.root.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("family", ["plain", "plain-bn", "resnet", "densenet", "mobilenet"])
def test_every_parameterised_layer_of_a_group_is_listed_once_per_role(family):
    model, shape = family_models()[family]
    groups = find_channel_groups(model, torch.randn(1, *shape))
    assert len(groups) > 0
    for group in groups:
        roles = [(m.name, m.role) for m in group.members]
        assert len(roles) == len(set(roles))
        root = next(m for m in group.members if m.name == group.root and m.role == "out")
        assert sorted(root.index.tolist()) == list(range(group.size))


def test_graph_building_keeps_the_train_mode_and_works_under_no_grad():
    model = models.create("tiny-paper", in_channels=1, input_size=8).train()
    with torch.no_grad():
        groups = find_channel_groups(model, torch.randn(1, 1, 8, 8))
    assert model.training and len(groups) == 4  # three convs and the hidden FC layer


def test_unsupported_layer_type_in_a_group_is_named():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(16, 2))
    with pytest.raises(StructpruneError, match=r"^1: layer type GroupNorm"):
        find_channel_groups(model, torch.randn(1, 1, 6, 6))
