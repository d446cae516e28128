"""Every mask the search can produce compacts into a smaller network computing what the masked one computes.

The search decodes particles into masks through its steps (channel, kernel, kernel-blocks, intra,
global-channel): per unit a ladder of rungs, per rung a particle space, `Rung.to_mask` the decoding. Here,
on every zoo family's tiny variant and a registered residual network of a user's, for each kind of step the
network has, hypothesis draws a configuration that runs it (other scales before or after it, kernel forms,
intra sharing, rounding), a run of (step, unit) visits in the driver's order starting with that kind, a rung of
each ladder and a particle of its space (a drawn one, the L1 candidate the search starts from, or one bred
from them by the filter's own crossover and mutation), applies the decodings in sequence, and compacts the
result as `structprune compact` does (the mask through its JSON form, the masked weights). Each example must
compact to the masked network's outputs and be smaller; an example whose mask removes no weight is a skip, and
skips stay under 10% per network. Then real pf and epf searches at the kernel and intra scales on every
family, and the case the property found: a channel step after a kernel step can leave a kernel-masked layer without
kernels, which compaction refuses; the search rules such candidates out.
"""
from __future__ import annotations

import functools
import itertools
import json
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from prune_nets import randomize_bn
from torch import nn

from structprune.compact.compaction import compact
from structprune.data import Dataset, Split, load_dataset
from structprune.errors import StructpruneError
from structprune.metrics import count_macs, count_params
from structprune.models import create, register
from structprune.runfolder import load_run, save_run
from structprune.search.config import SearchConfig
from structprune.search.driver import search_run
from structprune.search.feasible import INFEASIBLE, feasible_only
from structprune.search.network import SearchNet, conv_names
from structprune.search.particle_filter import ChoiceSpace
from structprune.search.steps import Rung, Step, make_steps
from structprune.search.steps.global_channel import GlobalChannelRung
from structprune.sparsity.channel_groups import layers_without_kernels
from structprune.sparsity.granularity import Granularity, KernelForm
from structprune.sparsity.masks import NetworkMask
from structprune.sparsity.method import Method
from structprune.sparsity.selection import select_masks
from structprune.stages.prune import load_masks

RTOL = 1e-4  # as the compaction tests
EXAMPLES_PER_KIND = 11  # per family and kind of step: 29 pairs, 319 examples
SMALL_SPACE = 24  # particles longer than this are drawn from a seed (hypothesis draws of 2000 entries are slow)
SKIP_LIMIT = 0.10
NO_SHRINK = (Phase.explicit, Phase.generate)  # a failure prints its draws; shrinking one can take minutes


class UserBottleneckNet(nn.Module):
    """A user's residual network: stem, an identity basic block, a stride-2 bottleneck with a 1×1 shortcut."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 8):
        super().__init__()
        w, h = width, width // 2

        def conv_bn(c_in: int, c_out: int, k: int, stride: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(c_out)]

        self.stem = nn.Sequential(*conv_bn(in_channels, w, 3), nn.ReLU())
        self.basic = nn.Sequential(*conv_bn(w, w, 3), nn.ReLU(), *conv_bn(w, w, 3))
        self.bottleneck = nn.Sequential(*conv_bn(w, h, 1), nn.ReLU(), *conv_bn(h, h, 3, stride=2), nn.ReLU(),
                                        *conv_bn(h, 2 * w, 1))
        self.shortcut = nn.Sequential(*conv_bn(w, 2 * w, 1, stride=2))
        self.head = nn.Linear(2 * w, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.basic(x))
        x = torch.relu(self.bottleneck(x) + self.shortcut(x))
        return self.head(x.mean((2, 3)))


@register("test-masks-user-bottleneck")
def user_bottleneck(num_classes: int = 10, in_channels: int = 3, input_size: int = 12) -> UserBottleneckNet:
    return UserBottleneckNet(num_classes, in_channels)


FAMILIES = ("tiny-paper", "tiny-vgg", "tiny-resnet", "tiny-mobilenet", "tiny-densenet", "test-masks-user-bottleneck")
SCALES = (Granularity.CHANNEL, Granularity.KERNEL, Granularity.INTRA)
BLOCKS = KernelForm("blocks", 2)
KERNEL_FORMS = (KernelForm(), KernelForm("structured", 2), KernelForm("structured", 3))


@dataclass
class Family:
    model: nn.Module
    net: SearchNet
    shape: tuple[int, ...]
    convs: list[str]
    params: int
    macs: int


@functools.cache
def family(name: str) -> Family:
    """The family's tiny network with random weights and batch-norm statistics, built once."""
    torch.manual_seed(0)
    model = randomize_bn(create(name)).eval()
    shape = tuple(model.structprune_factory["input_shape"])
    return Family(model, SearchNet(model), shape, conv_names(model), count_params(model), count_macs(model, shape))


@functools.cache
def plan(name: str, cfg: SearchConfig) -> list[tuple[Step, str]]:
    """The driver's (step, unit) visits for a configuration."""
    fam = family(name)
    return [(step, unit) for step in make_steps(fam.net, cfg) for unit in step.units(fam.convs)]


@functools.cache
def first_visits(name: str, cfg: SearchConfig) -> list[int]:
    """Plan positions whose ladder has a rung on the unpruned network."""
    return [i for i, (step, unit) in enumerate(plan(name, cfg)) if step.rungs(NetworkMask(), unit)]


def step_kinds(name: str) -> list[str]:
    """The kinds of step that have a rung somewhere on the unpruned network."""
    kinds = {"global-channel"}
    for cfg in (SearchConfig(granularities=SCALES), SearchConfig(granularities=(Granularity.KERNEL,), kernel=BLOCKS)):
        kinds |= {plan(name, cfg)[i][0].name for i in first_visits(name, cfg)}
    return sorted(kinds)


@st.composite
def configs(draw, kind: str) -> SearchConfig:
    """A configuration that runs a kind of step: a global channel search, or a layer-by-layer one (the default
    ladder) with the kind's scale and others in any order, a kernel form, shared or per-map intra patterns,
    rounded or free channel counts."""
    if kind == "global-channel":
        return SearchConfig(scope="global", ratio=draw(st.sampled_from([0.25, 0.5, 0.75])))
    scale = {"channel": Granularity.CHANNEL, "intra": Granularity.INTRA}.get(kind, Granularity.KERNEL)
    others = draw(st.lists(st.sampled_from([g for g in SCALES if g != scale]), unique=True, max_size=2))
    order = tuple(draw(st.permutations([scale, *others])))
    form = BLOCKS if kind == "kernel-blocks" else draw(st.sampled_from(KERNEL_FORMS))
    return SearchConfig(granularities=order, kernel=form, intra_shared=draw(st.booleans()),
                        round_to=draw(st.sampled_from([1, 2])))


def layer_spans(rung: Rung) -> list[range]:
    """A global rung's particle positions per layer. Its objective rules out particles that empty a layer (the
    search picks one only if every candidate does, and the L1 candidate it starts from never does)."""
    if not isinstance(rung, GlobalChannelRung):
        return []
    counts = [int(part.sum()) for part in rung.alive.split(rung.sizes)]
    starts = np.cumsum([0, *counts])
    return [range(int(a), int(b)) for a, b in itertools.pairwise(starts)]


def empties_a_layer(particle: np.ndarray, spans: list[range]) -> bool:
    return any(not particle[span.start:span.stop].any() for span in spans)


def draw_vector(draw, rung: Rung) -> np.ndarray:
    """Entry by entry from hypothesis in small spaces; in large ones (kernel bits, global maps) from a drawn seed."""
    space = rung.space
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1))) if space.n > SMALL_SPACE else None
    if isinstance(space, ChoiceSpace):
        if rng is not None:
            return space.sample(rng, 1)[0]
        return np.array(draw(st.lists(st.integers(0, space.k - 1), min_size=space.n, max_size=space.n)), dtype=np.int16)
    particle = np.zeros(space.n, dtype=np.int16)
    for span in layer_spans(rung):  # one map per layer first, where the objective asks for it
        particle[span[int(rng.integers(len(span)))] if rng is not None else draw(st.sampled_from(span))] = 1
    order = rng.permutation(space.n).tolist() if rng is not None else draw(st.permutations(range(space.n)))
    rest = [i for i in order if not particle[i]]
    particle[rest[:space.keep - int(particle.sum())]] = 1
    return particle


def draw_particle(draw, rung: Rung) -> np.ndarray:
    """A particle of the rung's space: drawn, the L1 candidate, or bred by the filter's crossover and mutation."""
    space = rung.space
    how = draw(st.sampled_from(["drawn", "drawn", "l1", "bred"]))
    if how == "l1":
        particle = rung.l1_particle()
    else:
        particle = draw_vector(draw, rung)
        if how == "bred":
            rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
            bred = space.mutate(rng, space.crossover(rng, particle, rung.l1_particle()), draw(st.integers(1, 3)))
            particle = particle if empties_a_layer(bred, layer_spans(rung)) else bred
    assert space.contains(particle), (how, particle)
    assert not empties_a_layer(particle, layer_spans(rung)), (how, particle)
    return particle


def draw_search_mask(draw, name: str, cfg: SearchConfig, kind: str) -> tuple[NetworkMask, list[str]]:
    """Rungs applied in the driver's order, the first by a step of `kind` (a unit may take several of its
    ladder); (mask, the steps applied)."""
    fam, visits = family(name), plan(name, cfg)
    mask = NetworkMask()
    position = draw(st.sampled_from([i for i in first_visits(name, cfg) if visits[i][0].name == kind]))
    applied = []
    for _ in range(draw(st.integers(1, 4))):
        step, unit = visits[position]
        ladder = step.rungs(mask, unit)
        if ladder:
            rung = ladder[draw(st.integers(0, len(ladder) - 1))]
            mask = rung.to_mask(draw_particle(draw, rung), mask)
            mask.validate(fam.model)
            applied.append(step.name)
        position = draw(st.integers(position, len(visits) - 1))  # the same unit (its next rung) or a later one
    return mask, applied


def removes_weights(fam: Family, mask: NetworkMask) -> bool:
    return any(fam.net.kept_weight_fraction(mask, conv) < 1.0 for conv in fam.convs)


def leaves_a_layer_without_kernels(fam: Family, mask: NetworkMask) -> bool:
    """A candidate the search rules out (search/feasible.py): a kernel-masked layer left without kernels."""
    return bool(layers_without_kernels(fam.model, mask, fam.net.groups))


def check_compacts_to_the_masked_network(name: str, mask: NetworkMask, seed: int) -> bool:
    """Compact as `structprune compact` does; outputs equal the masked network's. True: something was removed."""
    fam = family(name)
    mask = NetworkMask.from_json(json.loads(json.dumps(mask.to_json())))  # as the search saves it
    x = torch.randn(3, *fam.shape, generator=torch.Generator().manual_seed(seed))
    with fam.net.applier.applied(mask) as masked, torch.no_grad():  # the search's run holds the masked weights
        small = compact(masked, mask, groups=fam.net.groups).eval()
        reference = masked(x)
    with torch.no_grad():
        got = small(x)
    gap = float((got - reference).abs().max())
    assert gap <= RTOL * float(reference.abs().max()) + 1e-6, f"compact differs from masked by {gap:.2e}"
    if not removes_weights(fam, mask):
        return False
    assert count_params(small) < fam.params or count_macs(small, fam.shape) < fam.macs
    return True


def run_examples(name: str, kind: str, counts: Counter[str]) -> None:
    """EXAMPLES_PER_KIND examples whose first rung is a `kind` step; tallies the steps applied and the skips."""
    fam = family(name)

    @settings(max_examples=EXAMPLES_PER_KIND, deadline=None, derandomize=True, database=None, phases=NO_SHRINK,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=st.data(), cfg=configs(kind), seed=st.integers(0, 2**16))
    def search_masks_compact(data, cfg, seed):
        mask, applied = draw_search_mask(data.draw, name, cfg, kind)
        counts.update(applied)
        counts["examples"] += 1
        if leaves_a_layer_without_kernels(fam, mask):  # the search never chooses these: a skip
            with pytest.raises(StructpruneError, match="no kernel of this layer survives"):
                compact(fam.model, mask, groups=fam.net.groups)
            counts["skip: a layer without kernels"] += 1
        elif not check_compacts_to_the_masked_network(name, mask, seed):
            counts["skip: removes nothing"] += 1

    search_masks_compact()


@pytest.mark.parametrize("name", FAMILIES)
def test_every_mask_the_search_decodes_compacts_to_the_masked_network(name):
    counts: Counter[str] = Counter()
    for kind in step_kinds(name):  # each kind of step first in as many examples
        run_examples(name, kind, counts)
    assert counts["examples"] == EXAMPLES_PER_KIND * len(step_kinds(name))
    skips = sum(n for key, n in counts.items() if key.startswith("skip"))
    assert skips < SKIP_LIMIT * counts["examples"], counts


# -- real searches: pf and epf at the kernel and intra scales on every family (test_search_any_network.py runs
#    both at channel scale on the zoo's families, and pf at kernel and intra scale on the residual ones)
FAST = {"particles": 3, "generations": 1, "score_images": 24, "check_images": 24, "step_epochs": 0, "final_epochs": 0}
SEARCHED = [(name, method) for name in FAMILIES for method in ("pf", "epf")
            if (name, method) not in {("tiny-resnet", "pf"), ("tiny-mobilenet", "pf")}]
LAYERS = {  # a few layers per network, where its structure shows (None: all)
    "tiny-paper": None, "tiny-vgg": None,
    "tiny-resnet": ("layer2.0.conv2", "layer2.0.shortcut.0"),  # residual partners, a 1×1
    "tiny-mobilenet": ("features.0.0", "features.2.conv.1.0", "features.2.conv.2"),  # depthwise, 1×1 projection
    "tiny-densenet": ("features.1.conv2", "features.2.2"),  # a 3×3 after a bottleneck, a transition reading a concat
    "test-masks-user-bottleneck": ("basic.3", "bottleneck.3", "shortcut.0"),
}


@pytest.fixture(scope="module")
def digits16() -> Dataset:
    """48 digits per split, 16×16 with 3 channels."""
    digits = load_dataset("digits")

    def resized(split: Split) -> Split:
        x = F.interpolate(split.x[:48], size=(16, 16), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
        return Split(x, split.y[:48])

    return replace(digits, train=resized(digits.train), val=resized(digits.val), test=resized(digits.test),
                   in_channels=3, input_size=16)


@pytest.mark.parametrize(("name", "method"), SEARCHED)
def test_kernel_and_intra_searches_compact_to_the_masked_network(tmp_path, digits16, name, method):
    torch.manual_seed(0)
    model = randomize_bn(create(name, num_classes=10, in_channels=3, input_size=16))
    save_run(tmp_path / "run", model, None, {}, {"dataset": "digits"})
    cfg = SearchConfig(method=Method(method), granularities=(Granularity.KERNEL, Granularity.INTRA), ratio=0.5,
                       layers=LAYERS[name], **FAST)
    path, _ = search_run(load_run(tmp_path / "run"), digits16, cfg, tmp_path / "out")
    run = load_run(path)
    mask = load_masks(run)
    convs = {n: run.model.get_submodule(n) for n in LAYERS[name] or family(name).convs}
    assert {n for n, lm in mask if lm.keep_kernel is not None} == {n for n, m in convs.items() if m.groups == 1}
    assert {n for n, lm in mask if lm.intra is not None} == {n for n, m in convs.items() if m.kernel_size != (1, 1)}
    small = compact(run.model, mask).eval()
    x = digits16.test.x[:8]
    with torch.no_grad():
        reference, got = run.model.eval()(x), small(x)
    assert float((got - reference).abs().max()) <= RTOL * float(reference.abs().max()) + 1e-6
    assert count_params(small) < count_params(run.model)


@pytest.mark.parametrize("name", FAMILIES)
def test_the_global_l1_candidate_is_selections_global_l1(name):
    """Each layer keeps its best map (a candidate emptying a layer does not compact; tiny-densenet at 0.75 did)."""
    fam = family(name)
    step = make_steps(fam.net, SearchConfig(scope="global", ratio=0.75))[0]
    rung = step.rungs(NetworkMask(), step.units(fam.convs)[0])[0]
    mine = rung.to_mask(rung.l1_particle(), NetworkMask())
    theirs = select_masks(fam.model, "channel", 0.75, scope="global", groups=fam.net.groups)
    for layer in rung.layers:
        assert torch.equal(mine.layers[layer].keep_out, theirs.layers[layer].keep_out)
        assert mine.layers[layer].keep_out.any()


def test_a_channel_candidate_that_empties_a_kernel_masked_layer_is_ruled_out():
    """--granularity kernel,channel --ratio 0.5 on tiny-vgg: a channel candidate can remove every map the kept kernels
    of a later layer read; the predicate names that layer, compaction refuses it, and the search scores it as
    infeasible."""
    name = "tiny-vgg"
    fam = family(name)
    kernel_step, channel_step = make_steps(fam.net, SearchConfig(granularities=(Granularity.KERNEL, Granularity.CHANNEL),
                                                                 ratio=0.5))
    kernels = kernel_step.rungs(NetworkMask(), "features.8")[0]  # 32×16 kernels: keep those reading maps 0..7
    particle = np.zeros(kernels.length, dtype=np.int16)
    particle[kernels.units[:, :8].flatten().numpy()] = 1
    assert kernels.space.contains(particle)
    mask = kernels.to_mask(particle, NetworkMask())
    channels = channel_step.rungs(mask, "features.4")[0]  # its 16 maps: keep 8..15
    particle = np.zeros(channels.length, dtype=np.int16)
    particle[8:] = 1
    assert channels.space.contains(particle)
    trial = channels.to_mask(particle, mask)
    assert layers_without_kernels(fam.model, trial, fam.net.groups) == ["features.8"]
    with pytest.raises(StructpruneError, match="no kernel of this layer survives"):
        compact(fam.model, trial, groups=fam.net.groups)
    objective = feasible_only(lambda p: np.zeros(len(p)), channels, mask, fam.model, fam.net.groups)
    keep_first = np.zeros(channels.length, dtype=np.int16)
    keep_first[:8] = 1
    assert objective(np.stack([particle, keep_first])).tolist() == [INFEASIBLE, 0.0]


def test_a_kernel_then_channel_search_compacts(tmp_path, digits16):
    """The same in a real search (--granularity kernel,channel --ratio 0.9; before the search ruled such candidates out,
    most seeds gave a mask compaction refused on tiny-paper)."""
    torch.manual_seed(1)
    model = randomize_bn(create("tiny-paper", num_classes=10, in_channels=3, input_size=16))
    save_run(tmp_path / "run", model, None, {}, {"dataset": "digits"})
    cfg = SearchConfig(granularities=(Granularity.KERNEL, Granularity.CHANNEL), ratio=0.9, seed=1, **FAST)
    path, _ = search_run(load_run(tmp_path / "run"), digits16, cfg, tmp_path / "out")
    run = load_run(path)
    compact(run.model, load_masks(run))
