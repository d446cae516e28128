"""compact(model, mask)(x) equals the masked model(x): property tests over random models, masks, inputs."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from prune_nets import family_models, randomize_bn
from torch import nn

from structprune import models
from structprune.arch import describe
from structprune.compact.compaction import compact
from structprune.errors import StructpruneError
from structprune.metrics import count_params
from structprune.rebuild import rebuild
from structprune.sparsity.channel_groups import find_channel_groups
from structprune.sparsity.granularity import IntraPattern
from structprune.sparsity.masking import MaskApplier
from structprune.sparsity.masks import NetworkMask
from structprune.sparsity.selection import select_masks

HAS_KERNEL_CONV = importlib.util.find_spec("structprune.compact.kernel_conv") is not None
FAMILIES = family_models()
GROUPS = {name: find_channel_groups(m, torch.randn(1, *shape)) for name, (m, shape) in FAMILIES.items()}
RTOL = 1e-4


def note_layers(model: nn.Module) -> None:
    """Hypothesis statistics: which compact layer types the examples produced."""
    kinds = sorted({type(m).__name__ for m in model.modules() if "Kernel" in type(m).__name__})
    event("compact layers: " + (", ".join(kinds) or "none"))


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference over the largest reference value, floored at 0.01: random-init logits near 1e-3 lose
    their relative precision to float32 cancellation, while a wrong compaction differs by the logits' size."""
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-2)


def masked_output(model: nn.Module, mask: NetworkMask, groups, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), MaskApplier(model, groups).applied(mask):
        return model(x)


def random_bools(draw, n: int) -> torch.Tensor:
    bits = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    if not bits.any():
        bits[draw(st.integers(0, n - 1))] = True
    return bits


def draw_mask(draw, model: nn.Module, groups, scales: set[str]) -> NetworkMask:
    """A random mask: some channel groups, some kernels, some intra patterns."""
    mask = NetworkMask()
    if "channel" in scales:
        for group in groups:
            if draw(st.booleans()):
                mask.layer(group.root, model.get_submodule(group.root)).keep_out = random_bools(draw, group.size)
    for name, conv in model.named_modules():
        if not isinstance(conv, nn.Conv2d) or not draw(st.booleans()):
            continue
        out_ch, in_per_group, kh, kw = conv.weight.shape
        if "kernel" in scales and conv.groups == 1 and HAS_KERNEL_CONV:
            kk = torch.tensor([draw(st.lists(st.booleans(), min_size=in_per_group, max_size=in_per_group))
                               for _ in range(out_ch)])
            kk[0, 0] = True
            mask.layer(name, conv).keep_kernel = kk
        if "intra" in scales and kh * kw > 1:
            patterns = IntraPattern.all_patterns(kh * kw)
            mask.layer(name, conv).intra = [draw(st.none() | st.sampled_from(patterns)) for _ in range(in_per_group)]
    return mask


def _keeps_all_channels_somewhere(model, mask, groups) -> bool:
    """False when the channel masks leave a kernel-masked conv with no kernel at all (rejected by compact)."""
    keep = {n: lm.keep_out for n, lm in mask if lm.keep_out is not None}
    for name, lm in mask:
        if lm.keep_kernel is None:
            continue
        out_ch, in_per_group = lm.shape[:2]
        rows = groups.kept_indices(name, "out", keep, out_ch)
        cols = groups.kept_indices(name, "in", keep, in_per_group)
        if not bool(lm.keep_kernel[rows][:, cols].any()):
            return False
    return True


scale_sets = st.sampled_from([{"channel"}, {"kernel"}, {"intra"}, {"channel", "kernel"}, {"channel", "intra"},
                              {"kernel", "intra"}, {"channel", "kernel", "intra"}])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), family=st.sampled_from(sorted(FAMILIES)), scales=scale_sets, batch=st.integers(1, 3))
def test_compact_equals_masked_on_every_family(data, family, scales, batch):
    model, shape = FAMILIES[family]
    groups = GROUPS[family]
    mask = draw_mask(data.draw, model, groups, scales)
    seed = data.draw(st.integers(0, 2**31 - 1), label="input seed")
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))
    if not _keeps_all_channels_somewhere(model, mask, groups):
        with pytest.raises(StructpruneError, match="no kernel"):
            compact(model, mask, sample=x, groups=groups)
        return
    small = compact(model, mask, sample=x, groups=groups)
    note_layers(small)
    with torch.no_grad():
        got = small(x)
    assert relative_gap(got, masked_output(model, mask, groups, x)) <= RTOL
    if any(lm.keep_out is not None and not bool(lm.keep_out.all()) for _, lm in mask):
        assert count_params(small) < count_params(model)


class RandomConvNet(nn.Module):
    """Convs with random kernel size, stride, padding, dilation and optional batch norm; global pool head."""

    def __init__(self, layers: list[dict], in_channels: int, num_classes: int = 5):
        super().__init__()
        body: list[nn.Module] = []
        c = in_channels
        for spec in layers:
            body.append(nn.Conv2d(c, spec["out"], spec["k"], stride=spec["stride"], padding=spec["pad"],
                                  dilation=spec["dil"], bias=spec["bias"]))
            if spec["bn"]:
                body.append(nn.BatchNorm2d(spec["out"]))
            body.append(nn.ReLU())
            c = spec["out"]
        self.body = nn.Sequential(*body)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


layer_specs = st.fixed_dictionaries({
    "out": st.integers(2, 7), "k": st.sampled_from([1, 2, 3, 5]), "stride": st.integers(1, 2),
    "pad": st.integers(0, 2), "dil": st.integers(1, 2), "bias": st.booleans(), "bn": st.booleans(),
})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), layers=st.lists(layer_specs, min_size=1, max_size=3), in_channels=st.integers(1, 4),
       size=st.integers(9, 15), batch=st.integers(1, 3), scales=scale_sets)
def test_compact_equals_masked_over_strides_paddings_and_odd_sizes(data, layers, in_channels, size, batch, scales):
    torch.manual_seed(0)
    model = randomize_bn(RandomConvNet(layers, in_channels)).eval()
    x = torch.randn(batch, in_channels, size, size)
    try:
        model(x)
    except RuntimeError:
        event("input too small for the drawn layers")
        return
    groups = find_channel_groups(model, x[:1])
    mask = draw_mask(data.draw, model, groups, scales)
    if not _keeps_all_channels_somewhere(model, mask, groups):
        return
    small = compact(model, mask, sample=x, groups=groups)
    note_layers(small)
    with torch.no_grad():
        got = small(x)
    assert relative_gap(got, masked_output(model, mask, groups, x)) <= RTOL


def test_compact_model_round_trips_through_arch_json():
    torch.manual_seed(3)
    model = models.create("tiny-paper", in_channels=1, input_size=8).eval()
    groups = find_channel_groups(model, torch.randn(1, 1, 8, 8))
    mask = NetworkMask()
    mask.layer("features.0", model.features[0]).keep_out = torch.tensor([1, 0, 1, 1, 0, 1, 1, 0], dtype=torch.bool)
    mask.layer("features.2", model.features[2]).intra = [IntraPattern(0, 2)] * 8
    small = compact(model, mask, groups=groups)
    again = rebuild(describe(small))
    again.load_state_dict(small.state_dict())
    again.eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(again(x), small(x))
    assert describe(small)["modules"]["features.0"]["out_channels"] == 5


def test_hidden_units_leave_both_linear_layers_at_every_scale():
    """Hidden units pruned with channels, kernels and intra patterns: both FC layers shrink, outputs match, and
    the masks (a 2-D shape for the linear layer) and the compact network round-trip through JSON."""
    torch.manual_seed(4)
    model = models.create("plain", spec="8C3-MP2-8C3-MP2-12FC-10FC", in_channels=3, input_size=8).eval()
    x = torch.randn(3, 3, 8, 8)
    groups = find_channel_groups(model, x[:1])
    mask = select_masks(model, "channel,kernel,intra", [0.25, 0.5, 0.5], groups=groups, linear_ratio=0.5)
    assert mask.layers["classifier.1"].shape == (12, 32)
    assert NetworkMask.from_json(mask.to_json()).layers["classifier.1"].keep_out.tolist() == \
        mask.layers["classifier.1"].keep_out.tolist()
    small = compact(model, mask, sample=x, groups=groups)
    assert (small.classifier[1].out_features, small.classifier[3].in_features) == (6, 6)
    assert small.classifier[1].in_features == 6 * 2 * 2  # the flatten follows the 6 maps kept of 8
    with torch.no_grad():
        assert relative_gap(small(x), masked_output(model, mask, groups, x)) <= RTOL
    again = rebuild(describe(small))
    again.load_state_dict(small.state_dict())
    with torch.no_grad():
        assert torch.equal(again.eval()(x), small(x))


def test_compaction_leaves_the_source_model_unchanged():
    model, shape = FAMILIES["resnet"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mask = NetworkMask()
    root = next(iter(GROUPS["resnet"])).root
    keep = torch.ones(GROUPS["resnet"][root].size, dtype=torch.bool)
    keep[:2] = False
    mask.layer(root, model.get_submodule(root)).keep_out = keep
    compact(model, mask, sample=torch.randn(1, *shape), groups=GROUPS["resnet"])
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_channel_compaction_of_each_family_halves_and_matches(family):
    """Every group loses half its maps: smaller parameter count, same outputs."""
    model, shape = FAMILIES[family]
    groups = GROUPS[family]
    mask = NetworkMask()
    for group in groups:
        keep = torch.zeros(group.size, dtype=torch.bool)
        keep[::2] = True
        mask.layer(group.root, model.get_submodule(group.root)).keep_out = keep
    x = torch.randn(2, *shape)
    small = compact(model, mask, sample=x, groups=groups)
    with torch.no_grad():
        assert relative_gap(small(x), masked_output(model, mask, groups, x)) <= RTOL
    assert count_params(small) < 0.75 * count_params(model)


def test_channel_mask_on_a_non_root_conv_names_the_root():
    model, _ = FAMILIES["resnet"]
    mask = NetworkMask()
    mask.layer("b1.3", model.get_submodule("b1.3")).keep_out = torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool)
    with pytest.raises(StructpruneError, match=r"b1\.3.*stem\.0"):
        compact(model, mask, sample=torch.randn(1, 3, 8, 8), groups=GROUPS["resnet"])


@torch.no_grad()
def calibrate_bn(model: nn.Module, x: torch.Tensor) -> None:
    """Running statistics from `x`, so that pruned random networks keep a healthy signal to compare."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    model(x)
    model.eval()


@pytest.mark.parametrize("name", ["vgg11", "resnet20", "mobilenetv2", "densenet"])
def test_full_size_zoo_models_compact_at_every_scale(name):
    """The real zoo networks (random weights): half the channels, kernels and taps; same outputs, fewer params."""
    from structprune.sparsity.masking import apply_mask_
    from structprune.sparsity.selection import select_masks

    torch.manual_seed(0)
    model = models.create(name).eval()
    shape = tuple(model.structprune_factory["input_shape"])
    x = torch.randn(2, *shape)
    groups = find_channel_groups(model, x[:1])
    mask = select_masks(model, "channel,kernel,intra", 0.5, groups=groups)
    apply_mask_(model, mask, groups)  # the masked network itself ...
    calibrate_bn(model, torch.randn(16, *shape))  # ... with statistics of its own activations
    small = compact(model, mask, sample=x[:1], groups=groups)
    with torch.no_grad():
        reference = model(x)
        assert float(reference.std(0).mean()) > 1e-3  # the inputs still matter
        assert relative_gap(small(x), reference) <= RTOL
    assert count_params(small) < 0.5 * count_params(model)


def test_maps_no_kept_kernel_reads_leave_with_their_producer():
    torch.manual_seed(0)
    model = models.create("tiny-paper", in_channels=1, input_size=8).eval()
    mask = NetworkMask()
    kk = torch.ones(8, 8, dtype=torch.bool)
    kk[:, :3] = False  # no output map of features.2 reads input maps 0, 1, 2
    mask.layer("features.2", model.features[2]).keep_kernel = kk
    small = compact(model, mask)
    assert small.features[0].out_channels == 5  # features.0 no longer computes maps 0, 1, 2
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad(), MaskApplier(model, None).applied(mask):
        reference = model(x)
    with torch.no_grad():
        assert relative_gap(small(x), reference) <= RTOL


def test_maps_a_residual_partner_still_reads_are_kept():
    model, shape = FAMILIES["resnet"]
    mask = NetworkMask()
    kk = torch.ones(6, 6, dtype=torch.bool)
    kk[:, 0] = False
    mask.layer("b1.0", model.get_submodule("b1.0")).keep_kernel = kk  # the identity path still reads map 0
    small = compact(model, mask, sample=torch.randn(1, *shape), groups=GROUPS["resnet"])
    assert small.get_submodule("stem.0").out_channels == 6


def test_irregular_kernel_masks_warn_that_the_layer_may_be_slower(caplog):
    torch.manual_seed(0)
    model = models.create("paper-cifar10").eval()
    conv = model.features[2]
    irregular = NetworkMask()
    irregular.layer("features.2", conv).keep_kernel = torch.rand(conv.out_channels, conv.in_channels) > 0.5
    with caplog.at_level("WARNING", logger="structprune.compact.compaction"):
        compact(model, irregular)
    assert "features.2: its kernel masks differ from output map to output map" in caplog.text
    caplog.clear()
    same_inputs = NetworkMask()  # every output map reads the same half of the input maps: one convolution
    keep = torch.zeros(conv.out_channels, conv.in_channels, dtype=torch.bool)
    keep[:, ::2] = True
    same_inputs.layer("features.2", conv).keep_kernel = keep
    with caplog.at_level("WARNING", logger="structprune.compact.compaction"):
        compact(model, same_inputs)
    assert "differ from output map" not in caplog.text
