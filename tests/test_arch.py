"""arch.json: describing and rebuilding networks, pruned shapes included."""

import pytest
import torch
from torch import nn

from structprune.arch import describe
from structprune.errors import StructpruneError
from structprune.models import create
from structprune.rebuild import rebuild


def test_rebuild_restores_changed_layer_shapes():
    model = create("tiny-paper")
    model.features[0] = nn.Conv2d(1, 5, 3, padding=1)  # a "pruned" first layer
    model.features[2] = nn.Conv2d(5, 8, 3, padding=1)
    arch = describe(model)
    again = rebuild(arch)
    again.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 8, 8)
    model.eval(), again.eval()
    assert torch.equal(model(x), again(x))


def test_rebuild_rejects_foreign_files_and_unknown_layers():
    with pytest.raises(StructpruneError, match="not a structprune arch file"):
        rebuild({"model": "tiny-paper"})
    arch = describe(create("tiny-paper"))
    arch["modules"]["features.99"] = arch["modules"]["features.0"]
    with pytest.raises(StructpruneError, match=r"'features\.99'"):
        rebuild(arch)


def test_describe_needs_a_registered_model():
    with pytest.raises(StructpruneError, match=r"not created by structprune\.models\.create"):
        describe(nn.Sequential(nn.Conv2d(1, 1, 1)))
