"""Dead units: maps that never fire on the validation data, found through the ReLU they feed, and counted among
what a pruning result removes."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from torch import nn

from structprune.sparsity.dead_units import dead_unit_summary, never_active
from structprune.sparsity.masks import LayerMask, NetworkMask


class _Net(nn.Module):
    """conv -> BN -> ReLU (module), conv -> F.relu, flatten, linear -> relu_ (method), linear (not judged)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(6 * 8 * 8, 5), nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(x))
        return self.fc2(self.fc1(x.flatten(1)).relu_())


def _killed() -> _Net:
    net = _Net().eval()
    with torch.no_grad():
        net.bn1.bias[2] = -1e4  # map 2 of conv1: the batch norm pushes it below zero everywhere
        net.conv2.weight[4].zero_()
        net.conv2.bias[4] = -1.0  # map 4 of conv2: constant -1 before its ReLU
        net.fc1.weight[1].zero_()
        net.fc1.bias[1] = -0.5  # hidden unit 1
    return net


def test_units_that_never_fire_are_found_through_bn_and_every_relu_spelling():
    torch.manual_seed(0)
    dead = never_active(_killed(), [torch.randn(8, 1, 8, 8), torch.randn(8, 1, 8, 8)])
    assert dead is not None and set(dead) == {"conv1", "conv2", "fc1"}  # fc2 feeds no ReLU: not judged
    assert dead["conv1"].nonzero().flatten().tolist() == [2]
    assert dead["conv2"].nonzero().flatten().tolist() == [4]
    assert dead["fc1"].nonzero().flatten().tolist() == [1]


def test_the_summary_counts_removed_dead_maps_and_hidden_units_apart():
    net = _killed()
    dead = never_active(net, [torch.randn(16, 1, 8, 8)])
    keep1 = torch.ones(4, dtype=torch.bool)
    keep1[[0, 2]] = False  # removes the dead map 2 and the live map 0
    keep_fc = torch.ones(5, dtype=torch.bool)
    keep_fc[1] = False
    mask = NetworkMask({"conv1": LayerMask(tuple(net.conv1.weight.shape), keep_out=keep1),
                        "fc1": LayerMask(tuple(net.fc1.weight.shape), keep_out=keep_fc)})
    s = dead_unit_summary(net, dead, mask)
    assert (s["dead_maps"], s["removed_maps"], s["removed_dead_maps"]) == (2, 2, 1)
    assert (s["dead_hidden"], s["removed_hidden"], s["removed_dead_hidden"]) == (1, 1, 1)
    assert s["layers"]["conv2"] == {"units": 6, "dead": 1, "removed": 0, "removed_dead": 0}
    json.dumps(s)  # a metrics.json record


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.conv(x).relu()
        return self.conv(-x).relu()


def test_a_network_fx_cannot_trace_is_not_counted():
    assert never_active(_Untraceable(), [torch.randn(2, 1, 5, 5)]) is None
    assert dead_unit_summary(_Untraceable(), None, NetworkMask()) == {"counted": False}



def test_a_map_that_fires_at_one_pixel_of_one_image_is_alive_and_the_weights_keep_their_layout():
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU()).eval()
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.copy_(torch.tensor([-0.5, -2.0]))  # map 0 fires where the input exceeds 0.5, map 1 above 2
    x = torch.zeros(4, 1, 6, 6)
    x[3, 0, 5, 2] = 1.0  # one pixel of the last image
    dead = never_active(net, [x[:2], x[2:]])
    assert dead is not None and dead["0"].tolist() == [False, True]
    assert net[0].weight.is_contiguous()
