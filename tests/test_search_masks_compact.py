"""Every mask the search can produce compacts into a smaller network computing what the masked one computes.

The search decodes particles into masks through its steps (channel, kernel, kernel-blocks, intra,
global-channel): per unit a ladder of rungs, per rung a particle space, `Rung.to_mask` the decoding. Here,
on every zoo family's tiny variant and a registered residual network of a user's, hypothesis draws a search
configuration, a run of (step, unit) visits in the driver's order, a rung of each ladder and a particle of its
space (a drawn one, the L1 candidate the search starts from, or one bred from them by the filter's own
crossover and mutation), applies the decodings in sequence, and compacts the result as `structprune compact`
does (the mask through its JSON form, the masked weights). Each example must compact to the masked network's
outputs and be smaller; an example whose mask removes no weight counts as a skip, and skips stay under 10%.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from prune_nets import randomize_bn
from torch import nn

from structprune.compact.compaction import compact
from structprune.errors import StructpruneError
from structprune.metrics import count_macs, count_params
from structprune.models import create, register
from structprune.search.config import SearchConfig
from structprune.search.network import SearchNet, conv_names
from structprune.search.particle_filter import ChoiceSpace
from structprune.search.steps import Rung, Step, make_steps
from structprune.search.steps.global_channel import GlobalChannelRung
from structprune.sparsity.granularity import Granularity, KernelForm
from structprune.sparsity.masks import NetworkMask

RTOL = 1e-4  # as the compaction tests
EXAMPLES = 60  # per family: 6 families, 360 examples
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
SCALE_ORDERS = [(a,) for a in SCALES] + [(a, b) for a in SCALES for b in SCALES if a != b] + [
    (a, b, c) for a in SCALES for b in SCALES for c in SCALES if len({a, b, c}) == 3]
KERNEL_FORMS = (KernelForm(), KernelForm("structured", 2), KernelForm("structured", 3), KernelForm("blocks", 2))


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


@st.composite
def configs(draw, name: str) -> SearchConfig:
    """A layer-by-layer configuration (the default ladder, scales in any order, every kernel form, shared or
    per-map intra patterns, rounded or free channel counts) or a global channel search."""
    if draw(st.integers(0, 3)) == 0:
        return SearchConfig(scope="global", ratio=draw(st.sampled_from([0.25, 0.5, 0.75])))
    order = draw(st.sampled_from(SCALE_ORDERS))
    cfg = SearchConfig(granularities=order, kernel=draw(st.sampled_from(KERNEL_FORMS)), intra_shared=draw(st.booleans()),
                       round_to=draw(st.sampled_from([1, 2])))
    if not first_visits(name, cfg):  # kernel blocks alone where no layer can take them (depthwise in between)
        cfg = SearchConfig(granularities=order)
    return cfg


def layer_spans(rung: Rung) -> list[range]:
    """A global rung's particle positions per layer (the objective rules out particles that empty a layer: the
    search picks one only if every candidate does, and the L1 candidate it starts from is one of them)."""
    if not isinstance(rung, GlobalChannelRung):
        return []
    counts = [int(part.sum()) for part in rung.alive.split(rung.sizes)]
    starts = np.cumsum([0, *counts])
    return [range(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:], strict=True)]


def empties_a_layer(particle: np.ndarray, spans: list[range]) -> bool:
    return any(not particle[span.start:span.stop].any() for span in spans)


def draw_vector(draw, rung: Rung) -> np.ndarray:
    space = rung.space
    if isinstance(space, ChoiceSpace):
        return np.array(draw(st.lists(st.integers(0, space.k - 1), min_size=space.n, max_size=space.n)), dtype=np.int16)
    particle = np.zeros(space.n, dtype=np.int16)
    spans = layer_spans(rung)
    for span in spans:  # one map per layer first, where the objective asks for it
        particle[draw(st.sampled_from(span))] = 1
    rest = [i for i in draw(st.permutations(range(space.n))) if not particle[i]]
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


def draw_search_mask(draw, name: str, cfg: SearchConfig) -> tuple[NetworkMask, int]:
    """Rungs applied in the driver's order (a unit may take several of its ladder); (mask, rungs applied)."""
    fam, visits = family(name), plan(name, cfg)
    mask = NetworkMask()
    position = draw(st.sampled_from(first_visits(name, cfg)))
    applied = 0
    for _ in range(draw(st.integers(1, 4))):
        step, unit = visits[position]
        ladder = step.rungs(mask, unit)
        if ladder:
            rung = ladder[draw(st.integers(0, len(ladder) - 1))]
            particle = draw_particle(draw, rung)
            mask = rung.to_mask(particle, mask)
            mask.validate(fam.model)
            applied += 1
            event(f"{step.name} rung")
        position = draw(st.integers(position, len(visits) - 1))  # the same unit (its next rung) or a later one
    return mask, applied


def removes_weights(fam: Family, mask: NetworkMask) -> bool:
    return any(fam.net.kept_weight_fraction(mask, conv) < 1.0 for conv in fam.convs)


def leaves_a_layer_without_kernels(fam: Family, mask: NetworkMask) -> bool:
    """A kernel-masked layer whose kept kernels all read maps that a later channel rung removed."""
    keep = {n: lm.keep_out for n, lm in mask if lm.keep_out is not None}
    groups = fam.net.groups
    for name, lm in mask:
        if lm.keep_kernel is not None:
            rows = groups.kept_indices(name, "out", keep, lm.shape[0])
            cols = groups.kept_indices(name, "in", keep, lm.shape[1])
            if not bool(lm.keep_kernel[rows][:, cols].any()):
                return True
    return False


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


@pytest.mark.parametrize("name", FAMILIES)
def test_every_mask_the_search_decodes_compacts_to_the_masked_network(name):
    counts: Counter[str] = Counter()

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, phases=NO_SHRINK,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=st.data(), cfg=configs(name), seed=st.integers(0, 2**16))
    def search_masks_compact(data, cfg, seed):
        mask, applied = draw_search_mask(data.draw, name, cfg)
        counts["examples"] += 1
        if leaves_a_layer_without_kernels(family(name), mask):
            counts["empty kernel layer"] += 1
            counts[f"empty kernel layer {[g.value for g in cfg.granularities]}"] += 1
            with pytest.raises(StructpruneError, match="no kernel of this layer survives"):
                compact(family(name).model, mask, groups=family(name).net.groups)
            counts["skips"] += 1
            return
        removed = applied > 0 and check_compacts_to_the_masked_network(name, mask, seed)
        counts["skips"] += not removed
        event("removes weights" if removed else "skip: removes nothing")

    search_masks_compact()
    print(name, dict(counts))
    assert counts["examples"] >= EXAMPLES
    assert counts["skips"] < SKIP_LIMIT * counts["examples"], counts
