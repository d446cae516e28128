"""masks.json: weight masks at three scales and their JSON round trip."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from structprune.errors import StructpruneError
from structprune.sparsity.granularity import IntraPattern
from structprune.sparsity.masks import LayerMask, NetworkMask


@st.composite
def layer_masks(draw):
    out_ch, in_ch, k = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.sampled_from([1, 3, 5]))
    keep_out = torch.tensor(draw(st.lists(st.booleans(), min_size=out_ch, max_size=out_ch)))
    if not keep_out.any():
        keep_out[0] = True
    kernel = torch.tensor(draw(st.lists(st.lists(st.booleans(), min_size=in_ch, max_size=in_ch), min_size=out_ch,
                                        max_size=out_ch)))
    if not kernel.any():
        kernel[0, 0] = True
    patterns = IntraPattern.all_patterns(k * k)
    intra = [draw(st.none() | st.sampled_from(patterns)) for _ in range(in_ch)]
    return LayerMask(shape=(out_ch, in_ch, k, k), keep_out=keep_out, keep_kernel=kernel, intra=intra)


@settings(max_examples=60, deadline=None)
@given(layer_masks())
def test_json_round_trip_keeps_the_weight_mask(mask):
    again = LayerMask.from_json(mask.to_json(), "layer")
    assert torch.equal(again.weight_mask(), mask.weight_mask())


@settings(max_examples=60, deadline=None)
@given(layer_masks())
def test_weight_mask_combines_the_three_scales(mask):
    w = mask.weight_mask()
    out_ch, in_ch, kh, kw = mask.shape
    for o in range(out_ch):
        for i in range(in_ch):
            kept = w[o, i].flatten().nonzero().flatten().tolist()
            if not (mask.keep_out[o] and mask.keep_kernel[o, i]):
                assert kept == []
            elif mask.intra[i] is None:
                assert kept == list(range(kh * kw))
            else:
                assert tuple(kept) == mask.intra[i].taps(kh * kw)


def test_network_mask_rejects_unknown_layers_and_wrong_shapes():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten())
    with pytest.raises(StructpruneError, match="'conv9'"):
        NetworkMask({"conv9": LayerMask(shape=(4, 3, 3, 3))}).validate(model)
    with pytest.raises(StructpruneError, match="0: mask is for weight"):
        NetworkMask({"0": LayerMask(shape=(5, 3, 3, 3))}).validate(model)
    with pytest.raises(StructpruneError, match="not ReLU"):
        NetworkMask({"1": LayerMask(shape=(4, 3, 3, 3))}).validate(model)


def test_removing_every_feature_map_is_rejected():
    mask = LayerMask(shape=(4, 3, 3, 3), keep_out=torch.zeros(4, dtype=torch.bool))
    with pytest.raises(StructpruneError, match="conv1: mask removes every feature map"):
        mask.validate("conv1")


def test_malformed_json_gets_one_line_naming_the_layer():
    with pytest.raises(StructpruneError, match="layer 'conv1'"):
        LayerMask.from_json({"shape": [4, 3, 3, 3], "keep_out": [7]}, "conv1")
    with pytest.raises(StructpruneError, match="not a structprune masks file"):
        NetworkMask.from_json({"layers": {}})
