"""Compact layers compute exactly the masked dense convolution, store only what is kept, and round-trip."""

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from structprune.arch import describe, example_input
from structprune.compact import CsrConv2d, IntraKernelConv2d, KernelSparseConv2d, structured_kernel_mask
from structprune.compact.intra_conv import conv2d, decompose_taps
from structprune.errors import StructpruneError
from structprune.models import create
from structprune.rebuild import rebuild
from structprune.sparsity.granularity import IntraPattern
from structprune.sparsity.masks import LayerMask

KERNELS = [(1, 1), (2, 2), (3, 3), (5, 5), (3, 1), (1, 3), (2, 3), (3, 5)]


def out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


@st.composite
def conv_cases(draw, grouped: bool = True):
    """A small conv (any stride/padding/dilation/groups/bias), an input for it, and a pattern per input map."""
    groups = draw(st.sampled_from([1, 1, 2, 3])) if grouped else 1
    in_pg = draw(st.integers(1, 4))
    out_pg = draw(st.integers(1, 3))
    if grouped and draw(st.booleans()) and groups > 1:  # depthwise
        in_pg, out_pg = 1, draw(st.integers(1, 2))
    kh, kw = draw(st.sampled_from(KERNELS))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    h, w = draw(st.integers(3, 12)), draw(st.integers(3, 12))
    assume(out_size(h, kh, stride[0], padding[0], dilation[0]) >= 1)
    assume(out_size(w, kw, stride[1], padding[1], dilation[1]) >= 1)
    conv = nn.Conv2d(in_pg * groups, out_pg * groups, (kh, kw), stride, padding, dilation, groups,
                     bias=draw(st.booleans()))
    choices = [None, *IntraPattern.all_patterns(kh * kw)]
    patterns = [draw(st.sampled_from(choices)) for _ in range(in_pg)]
    x = torch.randn(draw(st.integers(1, 3)), in_pg * groups, h, w)
    if draw(st.booleans()):
        x = x.contiguous(memory_format=torch.channels_last)
    return conv, patterns, x


def masked_conv(conv: nn.Conv2d, mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, conv.weight * mask, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def assert_close(y: torch.Tensor, ref: torch.Tensor) -> None:
    assert y.shape == ref.shape
    scale = ref.abs().max().clamp_min(1e-3)
    assert float((y - ref).abs().max() / scale) < 1e-4


def assert_same_layout(y: torch.Tensor, x: torch.Tensor) -> None:
    if y.shape[1] > 1 and y.shape[2] * y.shape[3] > 1:  # otherwise both layouts are the same
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        assert y.is_contiguous(memory_format=torch.channels_last) == channels_last


# ---- intra-kernel ---------------------------------------------------------------------------------------


@settings(max_examples=250, deadline=None)
@given(conv_cases())
def test_intra_equals_masked_dense_conv(case):
    conv, patterns, x = case
    mask = LayerMask(shape=tuple(conv.weight.shape), groups=conv.groups, intra=patterns).weight_mask()
    layer = IntraKernelConv2d.from_conv(conv, patterns)
    with torch.no_grad():
        y = layer(x)
        assert_close(y, masked_conv(conv, mask, x))
    assert_same_layout(y, x)
    assert torch.equal(layer.dense_weight(), conv.weight.detach() * mask)
    # only kept taps are stored: O x (kept taps of one group's input maps)
    assert layer.blocks.dense_index.numel() * conv.out_channels == int(mask.sum()) or not mask.any()
    assert sum(p.numel() for p in layer.parameters()) == int(mask.sum()) + (conv.out_channels if conv.bias is not None else 0)


@settings(max_examples=80, deadline=None)
@given(conv_cases(), st.data())
def test_one_pattern_for_every_map_equals_masked_conv_and_its_gradient(case, data):
    # one single-block pattern read by every input map runs as one cropped / padded convolution (direct_forward)
    conv, patterns, x = case
    pattern = data.draw(st.sampled_from(IntraPattern.all_patterns(conv.kernel_size[0] * conv.kernel_size[1])))
    patterns = [pattern] * len(patterns)
    mask = LayerMask(shape=tuple(conv.weight.shape), groups=conv.groups, intra=patterns).weight_mask()
    layer = IntraKernelConv2d.from_conv(conv, patterns)
    x = x.clone().requires_grad_(True)
    y = layer(x)
    want = masked_conv(conv, mask, x)
    assert_close(y.detach(), want.detach())
    assert_same_layout(y, x)
    (grad,) = torch.autograd.grad(y.square().sum(), x)
    (want_grad,) = torch.autograd.grad(want.square().sum(), x)
    assert_close(grad, want_grad)


@settings(max_examples=40, deadline=None)
@given(conv_cases())
def test_intra_spec_round_trip_gives_identical_outputs(case):
    conv, patterns, x = case
    layer = IntraKernelConv2d.from_conv(conv, patterns)
    again = IntraKernelConv2d.from_spec(json.loads(json.dumps(layer.to_spec())))
    again.load_state_dict(layer.state_dict())
    with torch.no_grad():
        assert torch.equal(again(x), layer(x))


def test_one_channel_lowered_inputs_are_computed_right():
    # found by hypothesis: a one-map lowered input with strides (H·W, 1, W, 1) made oneDNN return wrong rows
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 1, 5, stride=(1, 2), padding=(0, 1), bias=False)
    patterns = [None, IntraPattern(1, 1)]
    x = torch.randn(1, 2, 7, 3)
    mask = LayerMask(shape=(1, 2, 5, 5), intra=patterns).weight_mask()
    with torch.no_grad():
        assert_close(IntraKernelConv2d.from_conv(conv, patterns)(x), masked_conv(conv, mask, x))


def test_block_decomposition_covers_each_tap_once():
    for kh, kw in [*KERNELS, (7, 7)]:
        for pattern in IntraPattern.all_patterns(kh * kw):
            taps = pattern.taps(kh * kw)
            cells = [c for b in decompose_taps(taps, (kh, kw)) for c in b.cells()]
            assert sorted(r * kw + c for r, c in cells) == sorted(taps)


def test_regular_patterns_become_single_small_convs():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    for pattern, shape in [(IntraPattern(0, 3), (4, 4, 3, 1)), (IntraPattern(6, 1), (4, 4, 1, 3))]:
        layer = IntraKernelConv2d.from_conv(conv, [pattern] * 4)
        assert [tuple(w.shape) for w in layer.blocks.weights] == [shape]
    corners = IntraKernelConv2d.from_conv(conv, [IntraPattern(0, 2)] * 4)  # taps 0,2,4,6,8
    assert sorted(tuple(w.shape) for w in corners.blocks.weights) == [(4, 4, 1, 1), (4, 4, 2, 2)]


@pytest.mark.parametrize("patterns, path", [
    ([IntraPattern(1, 3)] * 6, "direct"),  # centre column read by every map: a plain 3×1 conv
    ([IntraPattern(0, 4)] * 6, "views"),  # diagonal: three shifted views side by side, one 1×1 conv
    ([IntraPattern(0, 3), IntraPattern(2, 3), IntraPattern(0, 4)] * 2, "gather"),  # per-map: index_select
])
def test_each_lowering_path_equals_masked_conv(patterns, path):
    conv = nn.Conv2d(6, 5, 3, padding=1)
    layer = IntraKernelConv2d.from_conv(conv, patterns)
    blocks = layer.blocks
    views = [v and not d for v, d in zip(blocks._by_views, blocks._direct, strict=True)]
    used = {"direct": any(blocks._direct), "views": any(views), "gather": not all(blocks._by_views)}
    assert used[path]
    x = torch.randn(3, 6, 7, 9).contiguous(memory_format=torch.channels_last)
    mask = LayerMask(shape=(5, 6, 3, 3), intra=patterns).weight_mask()
    with torch.no_grad():
        assert_close(layer(x), masked_conv(conv, mask, x))


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_layer_that_is_one_smaller_conv_runs_as_that_conv_in_the_input_layout(channels_last):
    conv = nn.Conv2d(6, 5, 3, padding=1)
    centre = IntraKernelConv2d.from_conv(conv, [IntraPattern(1, 3)] * 6)  # a 3×1 conv, padding (1, 0)
    assert centre.blocks.direct_conv(7, 9) == ((0, 7, 0, 9), (0, 0, 0, 0), (1, 0), (1, 1))  # no crop, no pad
    left = IntraKernelConv2d.from_conv(conv, [IntraPattern(0, 3)] * 6)  # output column j reads input j - 1
    assert left.blocks.direct_conv(7, 9) == ((0, 7, 0, 8), (1, 0, 0, 0), (1, 0), (1, 1))  # one zero column in front
    rows = IntraKernelConv2d.from_conv(conv, [IntraPattern(3, 1)] * 6)  # taps 3..8: a 2×3 conv, a zero row below
    assert rows.blocks.direct_conv(7, 9) == ((0, 7, 0, 9), (0, 0, 0, 1), (0, 1), (1, 1))
    corners = IntraKernelConv2d.from_conv(conv, [IntraPattern(0, 2)] * 6)  # two blocks: not one convolution
    assert corners.blocks.direct_conv(7, 9) is None
    kernels = KernelSparseConv2d.from_conv(conv, torch.ones(5, 6, dtype=torch.bool), [IntraPattern(1, 3)] * 6)
    x = torch.randn(2, 6, 7, 9)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for layer, pattern, taps in [(centre, IntraPattern(1, 3), 3), (kernels, IntraPattern(1, 3), 3),
                                 (left, IntraPattern(0, 3), 3), (rows, IntraPattern(3, 1), 6)]:
        mask = LayerMask(shape=(5, 6, 3, 3), intra=[pattern] * 6).weight_mask()
        with torch.no_grad():
            with FlopCounterMode(display=False) as counter:
                y = layer(x)
            assert_close(y, masked_conv(conv, mask, x))
        assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert counter.get_total_flops() == 2 * 2 * 7 * 9 * 5 * 6 * taps  # 2 × MACs of the kept taps


@settings(max_examples=40, deadline=None)
@given(case=conv_cases(), grad=st.booleans())
def test_conv2d_helper_equals_f_conv2d_and_is_counted_alike(case, grad):
    conv, _, x = case
    args = (conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    with torch.set_grad_enabled(grad), FlopCounterMode(display=False) as ours:
        y = conv2d(x, *args)
    with torch.no_grad(), FlopCounterMode(display=False) as reference:
        want = F.conv2d(x, *args)
    assert_close(y.detach(), want)
    assert ours.get_total_flops() == reference.get_total_flops()


def test_intra_macs_are_those_of_the_kept_taps():
    conv = nn.Conv2d(8, 6, 3, padding=1)
    patterns = [IntraPattern(0, 3), IntraPattern(0, 2), None, IntraPattern(0, 4)] * 2
    layer = IntraKernelConv2d.from_conv(conv, patterns)
    x = torch.randn(2, 8, 7, 9)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        layer(x)
    kept = sum(len((p or IntraPattern(0, 1)).taps(9)) for p in patterns)
    assert counter.get_total_flops() == 2 * 2 * 7 * 9 * 6 * kept


def test_intra_trains_and_keeps_dropped_taps_out():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    layer = IntraKernelConv2d.from_conv(conv, [IntraPattern(1, 3), IntraPattern(0, 2), None])
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.randn(2, 3, 6, 6)
    before = layer(x).detach()
    layer(x).square().mean().backward()
    opt.step()
    assert not torch.allclose(layer(x), before)
    mask = LayerMask(shape=(4, 3, 3, 3), intra=layer.patterns).weight_mask()
    assert torch.equal(layer.dense_weight().detach() * (1 - mask), torch.zeros(4, 3, 3, 3))


def test_intra_bad_input_is_one_clear_error():
    conv = nn.Conv2d(2, 2, 3)
    with pytest.raises(StructpruneError, match="outside a kernel of 9"):
        IntraKernelConv2d.from_conv(conv, [IntraPattern(9, 1), None])
    with pytest.raises(StructpruneError, match="1 intra-kernel patterns, layer has 2"):
        IntraKernelConv2d.from_conv(conv, [None])
    with pytest.raises(StructpruneError, match="numeric zero padding"):
        IntraKernelConv2d.from_conv(nn.Conv2d(2, 2, 3, padding="same"), [None, None])


# ---- kernel level ---------------------------------------------------------------------------------------


@st.composite
def kernel_cases(draw):
    conv, patterns, x = draw(conv_cases(grouped=False))
    out_ch, in_ch = conv.weight.shape[:2]
    if draw(st.booleans()):
        groups = draw(st.sampled_from([g for g in range(1, out_ch + 1) if out_ch % g == 0]))
        keep = structured_kernel_mask(conv.weight, groups, draw(st.floats(0.05, 1.0)))
    else:
        bits = draw(st.lists(st.booleans(), min_size=out_ch * in_ch, max_size=out_ch * in_ch))
        assume(any(bits))
        keep = torch.tensor(bits).view(out_ch, in_ch)
    return conv, keep, patterns if draw(st.booleans()) else None, x


@settings(max_examples=200, deadline=None)
@given(kernel_cases())
def test_kernel_sparse_equals_masked_dense_conv(case):
    conv, keep, patterns, x = case
    mask = LayerMask(shape=tuple(conv.weight.shape), keep_kernel=keep, intra=patterns).weight_mask()
    layer = KernelSparseConv2d.from_conv(conv, keep, patterns)
    with torch.no_grad():
        y = layer(x)
        assert_close(y, masked_conv(conv, mask, x))
    assert_same_layout(y, x)
    assert torch.equal(layer.dense_weight(), conv.weight.detach() * mask)
    bias = conv.out_channels if conv.bias is not None else 0
    assert sum(p.numel() for p in layer.parameters()) == int(mask.sum()) + bias


@settings(max_examples=40, deadline=None)
@given(kernel_cases())
def test_kernel_sparse_spec_round_trip_gives_identical_outputs(case):
    conv, keep, patterns, x = case
    layer = KernelSparseConv2d.from_conv(conv, keep, patterns)
    again = KernelSparseConv2d.from_spec(json.loads(json.dumps(layer.to_spec())))
    again.load_state_dict(layer.state_dict())
    with torch.no_grad():
        assert torch.equal(again(x), layer(x))


def test_structured_kernel_mask_is_one_grouped_conv():
    conv = nn.Conv2d(12, 8, 3, padding=1)
    keep = structured_kernel_mask(conv.weight, groups=4, keep_fraction=0.5)
    assert keep.shape == (8, 12) and keep.sum(dim=1).eq(6).all()
    assert all(torch.equal(keep[2 * g], keep[2 * g + 1]) for g in range(4))
    l1 = conv.weight.detach().abs().sum(dim=(2, 3))[0:2].sum(0)  # scores of group 0
    assert l1[keep[0]].min() >= l1[~keep[0]].max()
    layer = KernelSparseConv2d.from_conv(conv, keep)
    assert len(layer.branches) == 1 and layer.branches[0].groups == 4 and not layer._permute
    scores = torch.zeros(8, 12)
    scores[:, :3] = 1.0
    assert keep.new_tensor([True] * 3 + [False] * 9).equal(structured_kernel_mask(conv.weight, 2, 0.25, scores)[5])


def test_kernel_sparse_drops_unread_inputs_and_bias_only_outputs():
    conv = nn.Conv2d(4, 3, 3, padding=1)
    keep = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    layer = KernelSparseConv2d.from_conv(conv, keep)
    read = set().union(*(getattr(layer, f"inputs_{k}").tolist() for k in range(len(layer.branches))))
    assert read == {0, 2}
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        y = layer(x)
    assert torch.allclose(y[0, 1], conv.bias[1].detach().expand(5, 5))


def test_kernel_macs_are_those_of_the_kept_kernels():
    conv = nn.Conv2d(16, 8, 3, padding=1)
    keep = structured_kernel_mask(conv.weight, groups=2, keep_fraction=0.5)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        KernelSparseConv2d.from_conv(conv, keep)(torch.randn(2, 16, 6, 6))
    assert counter.get_total_flops() == 2 * 2 * 6 * 6 * 9 * int(keep.sum())


def test_kernel_bad_input_is_one_clear_error():
    conv = nn.Conv2d(4, 4, 3)
    with pytest.raises(StructpruneError, match="groups=1 convolutions only, not groups=2"):
        KernelSparseConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2), torch.ones(4, 2, dtype=torch.bool))
    with pytest.raises(StructpruneError, match=r"kernel mask is \(4, 3\), layer needs \(4, 4\)"):
        KernelSparseConv2d.from_conv(conv, torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(StructpruneError, match="removes every kernel"):
        KernelSparseConv2d.from_conv(conv, torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(StructpruneError, match="must divide the 4 output maps"):
        structured_kernel_mask(conv.weight, 3, 0.5)


# ---- CSR reference ----------------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(conv_cases(), st.floats(0.0, 0.95))
def test_csr_equals_masked_dense_conv(case, sparsity):
    conv, _, x = case
    mask = (torch.rand(conv.weight.shape) >= sparsity).float()
    assume(mask.any())
    layer = CsrConv2d.from_conv(conv, mask)
    with torch.no_grad():
        y = layer(x)
        assert_close(y, masked_conv(conv, mask, x))
    assert_same_layout(y, x)
    assert torch.equal(layer.dense_weight(), conv.weight.detach() * mask)
    again = CsrConv2d.from_spec(json.loads(json.dumps(layer.to_spec())))
    again.load_state_dict(layer.state_dict())
    with torch.no_grad():
        assert torch.equal(again(x), y)


def test_csr_counts_only_nonzero_macs_and_trains():
    conv = nn.Conv2d(6, 4, 3, padding=1)
    mask = (torch.rand(4, 6, 3, 3) > 0.6).float()
    layer = CsrConv2d.from_conv(conv, mask)
    x = torch.randn(2, 6, 5, 5, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        y = layer(x)
    assert counter.get_total_flops() == 2 * int(mask.sum()) * 2 * 5 * 5
    y.square().sum().backward()
    w = (conv.weight.detach() * mask).requires_grad_()
    x_ref = x.detach().requires_grad_()
    F.conv2d(x_ref, w, conv.bias.detach(), 1, 1).square().sum().backward()
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-4)
    assert torch.allclose(layer.values.grad, w.grad.flatten()[layer.dense_index], atol=1e-4)


def test_csr_bad_input_is_one_clear_error():
    conv = nn.Conv2d(2, 2, 3)
    with pytest.raises(StructpruneError, match="removes every weight"):
        CsrConv2d.from_conv(conv, torch.zeros(2, 2, 3, 3))
    with pytest.raises(StructpruneError, match="weight mask is"):
        CsrConv2d.from_conv(conv, torch.ones(2, 2, 1, 1))


def test_load_dense_weight_round_trips_on_every_layer():
    conv = nn.Conv2d(6, 4, 3, padding=1)
    keep = structured_kernel_mask(conv.weight, 2, 0.5)
    layers = [IntraKernelConv2d.from_conv(conv, [IntraPattern(0, 2), None, IntraPattern(1, 3)] * 2),
              KernelSparseConv2d.from_conv(conv, keep, [IntraPattern(0, 4)] * 6),
              CsrConv2d.from_conv(conv, (torch.rand(4, 6, 3, 3) > 0.5).float())]
    for layer in layers:
        doubled = 2 * layer.dense_weight().detach()
        layer.load_dense_weight(doubled + 100 * (doubled == 0))  # dropped positions are ignored
        assert torch.equal(layer.dense_weight().detach(), doubled)


# ---- in a network: arch.json rebuild and ONNX --------------------------------------------------------------


def compact_tiny_model() -> nn.Module:
    model = create("tiny-paper").eval()
    first, second = model.features[0], model.features[2]
    model.features[0] = IntraKernelConv2d.from_conv(first, [IntraPattern(0, 2)] * first.in_channels)
    keep = structured_kernel_mask(second.weight, groups=2, keep_fraction=0.5)
    model.features[2] = KernelSparseConv2d.from_conv(second, keep, [IntraPattern(1, 3)] * second.in_channels)
    return model


def test_network_with_compact_layers_rebuilds_from_arch_json():
    model = compact_tiny_model()
    arch = json.loads(json.dumps(describe(model)))
    assert arch["modules"]["features.0"]["type"] == "IntraKernelConv2d"
    assert arch["modules"]["features.2"]["type"] == "KernelSparseConv2d"
    again = rebuild(arch).eval()
    again.load_state_dict(model.state_dict())
    x = example_input(model, batch=2)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_bad_compact_layer_spec_in_arch_json_is_one_clear_error():
    arch = json.loads(json.dumps(describe(compact_tiny_model())))
    arch["modules"]["features.0"]["patterns"] = [[9, 1]]
    with pytest.raises(StructpruneError, match="outside a kernel of 9 positions"):
        rebuild(arch)
    arch["modules"]["features.0"]["patterns"] = [[0, 1], [0, 1]]
    with pytest.raises(StructpruneError, match="2 intra-kernel patterns, layer has 1"):
        rebuild(arch)


def test_compact_layers_export_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = compact_tiny_model()
    model.features[5] = CsrConv2d.from_conv(model.features[5], (torch.rand(16, 8, 3, 3) > 0.5).float())
    x = example_input(model, batch=2)
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"])
    (got,) = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})
    with torch.no_grad():
        assert_close(torch.from_numpy(got), model(x))


def test_layer_table_counts_compact_layers_as_layers_with_all_their_weights_and_macs():
    from structprune.layers import layer_table
    from structprune.metrics import count_macs, count_params

    torch.manual_seed(0)
    model = create("plain", spec="8C3-MP2-16C3-MP2-10FC", in_channels=3, input_size=8).eval()
    model.features[3] = KernelSparseConv2d.from_conv(model.features[3], torch.rand(16, 8) < 0.6,
                                                      [IntraPattern(1, 3)] * 8)
    model.features[0] = IntraKernelConv2d.from_conv(model.features[0], [IntraPattern(0, 2)] * 3)
    rows = layer_table(model)
    assert [r["type"] for r in rows if "Conv" in r["type"]] == ["IntraKernelConv2d", "KernelSparseConv2d"]
    assert not any(r["name"].count(".") > 1 for r in rows)  # no parts of compact layers listed on their own
    assert sum(r["macs"] for r in rows) == count_macs(model) and sum(r["params"] for r in rows) == count_params(model)
