"""Model zoo: every registered network builds, gives [N, classes] logits, and rebuilds from arch.json."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from structprune.arch import describe
from structprune.errors import StructpruneError
from structprune.metrics import count_macs, count_params
from structprune.models import available, create, register
from structprune.rebuild import rebuild

FULL = ["paper-mnist", "paper-cifar10", "vgg11", "vgg16", "resnet20", "resnet56", "mobilenetv2", "densenet"]
TINY = ["tiny-paper", "tiny-vgg", "tiny-resnet", "tiny-mobilenet", "tiny-densenet"]



def test_registry_lists_the_zoo():
    names = set(available())
    assert set(FULL + TINY) <= names


@pytest.mark.parametrize("name", FULL)
def test_full_models_map_images_to_logits(name):
    in_ch, size = (1, 28) if name == "paper-mnist" else (3, 32)
    model = create(name, num_classes=7, in_channels=in_ch, input_size=size).eval()
    with torch.no_grad():
        out = model(torch.randn(1, in_ch, size, size))
    assert out.shape == (1, 7)
    assert torch.isfinite(out).all()


# Published sizes of the CIFAR variants (parameters, 10 classes): ResNet-20 0.27 M, ResNet-56 0.85 M.
@pytest.mark.parametrize(("name", "low", "high"), [("resnet20", 0.26e6, 0.28e6), ("resnet56", 0.84e6, 0.87e6),
                                                    ("vgg16", 14.6e6, 14.8e6), ("mobilenetv2", 2.1e6, 2.4e6)])
def test_parameter_counts_match_the_published_architectures(name, low, high):
    assert low <= count_params(create(name)) <= high


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("size", [8, 16])
def test_tiny_models_run_on_small_inputs(name, size):
    in_ch = 1 if name == "tiny-paper" else 3
    model = create(name, num_classes=10, in_channels=in_ch, input_size=size).eval()
    x = torch.randn(3, in_ch, size, size)
    with torch.no_grad():
        assert model(x).shape == (3, 10)
    assert count_params(model) < 20_000
    assert 0 < count_macs(model) < 1_000_000


@pytest.mark.parametrize("name", TINY)
def test_arch_json_rebuilds_an_identical_network(name):
    in_ch = 1 if name == "tiny-paper" else 3
    model = create(name, in_channels=in_ch, input_size=16).eval()
    copy = rebuild(describe(model))
    copy.load_state_dict(model.state_dict())
    copy.eval()
    x = torch.randn(2, in_ch, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), copy(x))


def test_mobilenet_uses_depthwise_convolutions():
    convs = [m for m in create("tiny-mobilenet").modules() if isinstance(m, nn.Conv2d)]
    assert any(c.groups == c.in_channels == c.out_channels > 1 for c in convs)


def test_densenet_concatenates_features():
    layer = create("tiny-densenet").features[1]
    x = torch.randn(1, layer.bn1.num_features, 8, 8)
    out = layer(x)
    assert out.shape[1] == x.shape[1] + layer.conv2.out_channels
    assert torch.equal(out[:, : x.shape[1]], x)  # the input maps pass through unchanged


def test_resnet_shortcuts_are_convolutions_not_padding():
    model = create("resnet20")
    shortcuts = [m.shortcut for m in model.modules() if hasattr(m, "shortcut") and not isinstance(m.shortcut, nn.Identity)]
    assert len(shortcuts) == 2
    assert all(isinstance(s[0], nn.Conv2d) and s[0].kernel_size == (1, 1) for s in shortcuts)


def test_unknown_model_is_a_user_error():
    with pytest.raises(StructpruneError, match="unknown model 'nope'"):
        create("nope")


def test_bad_depth_is_a_user_error():
    with pytest.raises(StructpruneError, match="6n\\+2"):
        create("resnet", depth=21)


def test_vgg_rejects_inputs_pooled_below_one_pixel():
    with pytest.raises(StructpruneError, match="below 1 pixel"):
        create("vgg11", input_size=16)


def test_users_can_register_their_own_network():
    @register("test-models-user-net")
    def user_net(num_classes=10, in_channels=3, input_size=8):
        return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * input_size * input_size, num_classes))

    model = create("test-models-user-net", num_classes=5, in_channels=2, input_size=8)
    assert describe(model)["model"] == "test-models-user-net"
    assert model(torch.randn(1, 2, 8, 8)).shape == (1, 5)
    with pytest.raises(ValueError, match="already registered"):
        register("test-models-user-net")(user_net)
