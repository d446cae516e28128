"""Per-layer word-length sweep (structprune/quant/sensitivity.py) and the per-layer choice."""

from __future__ import annotations

import pytest
import torch

from structprune.data import load_dataset
from structprune.errors import StructpruneError
from structprune.models import create
from structprune.quant.sensitivity import Sensitivity, choose_bits, sweep
from structprune.train import TrainConfig, train


def test_choice_is_the_shortest_word_length_that_stays_within_tolerance_at_every_longer_one():
    sens = Sensitivity(0.10, {
        "a": {2: 0.30, 3: 0.11, 4: 0.10, 5: 0.10},   # 3 bits within 0.01
        "b": {2: 0.10, 3: 0.20, 4: 0.10, 5: 0.10},   # 2 bits alone looks fine, 3 does not: take 4
        "c": {2: 0.50, 3: 0.40, 4: 0.30, 5: 0.20},   # never within: the longest allowed
    })
    assert choose_bits(sens, 5, 0.01) == {"a": 3, "b": 4, "c": 5}
    assert choose_bits(sens, 4, 0.01) == {"a": 3, "b": 4, "c": 4}
    with pytest.raises(StructpruneError):
        choose_bits(sens, 1, 0.01)


def test_sweep_quantizes_one_layer_at_a_time_and_leaves_the_network_alone():
    torch.manual_seed(0)
    data = load_dataset("digits")
    net = create("tiny-paper")
    train(net, data, TrainConfig(epochs=2))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    sens = sweep(net, data.val, bits=(2, 16), progress=False)
    assert set(sens.mcr) == {"features.0", "features.2", "features.5", "classifier.1", "classifier.3"}
    for row in sens.mcr.values():
        assert abs(row[16] - sens.base_mcr) <= 1 / len(data.val)  # 16 bits: at most one image changes
    assert max(row[2] for row in sens.mcr.values()) > sens.base_mcr  # ternary hurts some layer
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert sens.to_json()["layers"]["features.0"].keys() == {"2", "16"}
