"""Plain `structprune prune` flags (and `structprune.prune` without options) give the fast forms: kernel blocks,
one shared intra pattern per layer that compacts into one smaller convolution, kept maps rounded to the CPU's
channel block (16 with AVX-512, else 8); explicit flags restore free masks and exact counts. The counts below are
worked out for a CPU with blocks of 8 (the module pins an AVX2 CPU), the AVX-512 rounding is checked apart."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import structprune
from structprune import models
from structprune.cli import main
from structprune.metrics import size_metrics
from structprune.runfolder import load_run, save_run
from structprune.sparsity.fast_forms import EdgeOptions, blocks_for_ratio, default_round_to, resolve
from structprune.sparsity.granularity import Granularity, IntraPattern, KernelStructure, fast_patterns, fast_tap_count
from structprune.sparsity.method import Method
from structprune.stages.prune import compact_run

SPEC = "2x24C3-MP2-24C3-MP2-32FC-10FC"  # tiny-paper's shape, wide enough that rounding to 8 per block shows
PLAIN = ["--granularity", "channel,kernel,intra", "--ratio", "0.5", "--bn-recalibrate", "0"]
OLD = ["--kernel-structure", "unstructured", "--intra-free", "--round-to", "1"]
CONVS = ("features.0", "features.2", "features.5")


class ConvCalls(TorchDispatchMode):
    """Counts the convolutions a forward pass runs."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "convolution" in func.__name__:
            self.count += 1
        return func(*args, **(kwargs or {}))


def convolutions_run(model: torch.nn.Module) -> int:
    with ConvCalls() as calls, torch.no_grad():
        model(torch.randn(2, 1, 8, 8))
    return calls.count


@pytest.fixture(scope="module", autouse=True)
def avx2_cpu():
    """An AVX2 CPU, whose convolution kernels work in blocks of 8 channels, whatever this machine is."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
        yield


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """An untrained, seeded digits run pruned with plain flags ("fast") and with the old defaults ("old"), compacted."""
    root = tmp_path_factory.mktemp("fast")
    torch.manual_seed(0)
    model = models.create("plain", spec=SPEC, in_channels=1, input_size=8)
    save_run(root / "base", model, None, size_metrics(model), {"dataset": "digits", "train": {"seed": 0}})
    out = {"base": root / "base"}
    for name, extra in (("fast", []), ("old", OLD)):
        assert main(["prune", str(root / "base"), *PLAIN, "--out", str(root / name), *extra]) == 0
        compact_run(root / name, root / f"{name}-compact")
        out[name], out[f"{name}-compact"] = root / name, root / f"{name}-compact"
    return out


def _masks(run: Path) -> dict:
    return json.loads((run / "masks.json").read_text())["layers"]


def _same_outputs(masked: Path, compact: Path) -> None:
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        a, b = load_run(masked).model(x), load_run(compact).model(x)
    assert float((a - b).abs().max()) <= 1e-4 * float(a.abs().max())


def test_plain_flags_prune_into_blocks_shared_fast_patterns_and_rounded_counts(runs, capsys):
    prune = json.loads((runs["fast"] / "config.json").read_text())["prune"]
    assert prune["kernel"] == "blocks:2" and prune["round_to"] == 8 and prune["ratio"] == [0.5, 0.5, 0.5]
    assert prune["intra_shared"] and prune["intra_fast"] and prune["intra_patterns"] is None
    assert prune["intra_chosen"] == {"features.2": "3:1", "features.5": "3:1"}  # 6 of 9 taps: the bottom two rows
    masks = _masks(runs["fast"])
    for name in CONVS:  # 24 maps at 0.5 keep 12, rounded up to 8 per block of 2: 16
        assert len(masks[name]["keep_out"]) == 16
    assert masks["features.0"].get("intra") is None  # the first layer reads one map: no pattern there
    assert {tuple(p) for name in CONVS[1:] for p in masks[name]["intra"] if p} == {(3, 1)}


def test_plain_flags_compact_into_one_convolution_per_layer(runs):
    small = load_run(runs["fast-compact"]).model
    assert convolutions_run(small) == len(CONVS)
    _same_outputs(runs["fast"], runs["fast-compact"])
    assert convolutions_run(load_run(runs["old-compact"]).model) > 3 * len(CONVS)  # the free forms split up


def test_explicit_flags_restore_free_masks_and_exact_counts(runs):
    prune = json.loads((runs["old"] / "config.json").read_text())["prune"]
    assert prune["kernel"] == "unstructured" and prune["round_to"] == 1 and not prune["intra_shared"]
    assert "intra_fast" not in prune and "intra_chosen" not in prune
    masks = _masks(runs["old"])
    assert all(len(masks[name]["keep_out"]) == 12 for name in CONVS)
    assert masks["features.0"]["intra"] is not None  # the first layer takes patterns again
    assert any(len({tuple(p) for p in masks[name]["intra"] if p}) > 1 for name in CONVS[1:])  # per input map
    _same_outputs(runs["old"], runs["old-compact"])


def test_fast_patterns_are_rectangles_at_the_nearest_tap_count():
    fast = set(fast_patterns((3, 3)))
    assert {IntraPattern(3, 1), IntraPattern(1, 3), IntraPattern(0, 3), IntraPattern(6, 1)} <= fast
    assert IntraPattern(0, 2) not in fast and IntraPattern(0, 4) not in fast and IntraPattern(1, 1) not in fast
    assert fast_tap_count((3, 3), 0.5) == 6  # 4.5 wanted: 6 and 3 are as near; ties keep more
    assert fast_tap_count((3, 3), 0.6) == 3 and fast_tap_count((3, 3), 0.1) == 9


def test_kernel_groups_follow_the_ratio_and_an_explicit_count_wins(caplog):
    assert [blocks_for_ratio(r) for r in (0.3, 0.5, 0.7, 0.75, 0.9)] == [2, 2, 4, 4, 8]
    grans = [Granularity.CHANNEL, Granularity.KERNEL]
    with caplog.at_level(logging.INFO):
        ratios, cfg = resolve(grans, [0.5, 0.7], Method.L1, EdgeOptions())
    assert str(cfg.kernel) == "blocks:4" and ratios == [0.5, 0.75] and cfg.round_to == 8
    assert "4 blocks per layer remove 0.75" in caplog.text
    ratios, cfg = resolve(grans, [0.5], Method.L1, EdgeOptions(kernel_groups=8, round_to=1))
    assert str(cfg.kernel) == "blocks:8" and ratios == [0.5, 0.875] and cfg.round_to == 1
    _, cfg = resolve(grans, [0.5], Method.L1, EdgeOptions(kernel_structure=KernelStructure.UNSTRUCTURED))
    assert str(cfg.kernel) == "unstructured"
    _, cfg = resolve([Granularity.INTRA], [0.5], Method.L1, EdgeOptions(intra_patterns=(IntraPattern(1, 3),)))
    assert not cfg.intra_fast and not cfg.intra_shared


def test_the_api_defaults_to_the_fast_forms_too():
    torch.manual_seed(0)
    model = models.create("plain", spec=SPEC, in_channels=1, input_size=8)
    x = torch.randn(2, 1, 8, 8)
    fast = structprune.prune(model, x, granularity="channel,kernel,intra", ratio=0.5)
    assert int(fast.layers["features.2"].keep_out.sum()) == 16
    assert set(fast.layers["features.2"].intra) == {IntraPattern(3, 1)} and fast.layers["features.0"].intra is None
    assert convolutions_run(structprune.compact(model, fast)) == len(CONVS)
    old = structprune.prune(model, x, granularity="channel,kernel,intra", ratio=0.5, kernel="unstructured",
                            intra_free=True, round_to=1)
    assert int(old.layers["features.2"].keep_out.sum()) == 12 and old.layers["features.0"].intra is not None


@pytest.mark.parametrize(("capability", "block"), [("AVX512", 16), ("AVX2", 8), ("DEFAULT", 8)])
def test_kept_maps_round_to_the_cpus_channel_block(monkeypatch, capability, block):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert default_round_to() == block
    _, cfg = resolve([Granularity.CHANNEL], [0.5], Method.L1, EdgeOptions())
    assert cfg.round_to == block
    torch.manual_seed(0)
    model = models.create("plain", spec="2x40C3-MP2-40C3-MP2-32FC-10FC", in_channels=1, input_size=8)
    masks = structprune.prune(model, torch.randn(2, 1, 8, 8), granularity="channel", ratio=0.5)
    assert int(masks.layers["features.2"].keep_out.sum()) == {16: 32, 8: 24}[block]  # 20 maps, rounded up
