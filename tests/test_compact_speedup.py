"""`compact`'s predicted speed-up: per-layer forms and efficiencies, warnings for layers predicted slower than
dense, the metrics fields, the CLI lines and the optional measurement (no timing assertions)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from structprune import models
from structprune.cli import main
from structprune.compact.kernel_conv import KernelSparseConv2d, structured_kernel_mask
from structprune.compact.speedup import EFFICIENCY, layer_form
from structprune.metrics import size_metrics
from structprune.runfiles import METRICS_FILE
from structprune.runfolder import save_run
from structprune.sparsity.granularity import IntraPattern
from structprune.sparsity.masks import NetworkMask
from structprune.sparsity.selection import select_masks
from structprune.stages.measure import BenchConfig
from structprune.stages.prune import compact_run, prune_run

PREDICTION_FIELDS = {"layer", "form", "dense_macs", "macs", "mac_ratio", "efficiency", "predicted_speedup"}


def _dense(tmp_path: Path, in_channels: int = 1) -> Path:
    torch.manual_seed(0)
    model = models.create("tiny-paper", in_channels=in_channels, input_size=8)
    return save_run(tmp_path / f"dense{in_channels}", model, None, size_metrics(model), {"model": "tiny-paper"})


def _first_layer_intra(model, groups, data, base=None) -> NetworkMask:
    """A 2×3 pattern (taps 3-8) on every input map of the first convolution, nothing else."""
    mask = NetworkMask()
    conv = model.features[0]
    mask.layer("features.0", conv).intra = [IntraPattern(3, 1)] * conv.in_channels
    return mask


def _channels(model, groups, data, base=None) -> NetworkMask:
    return select_masks(model, ["channel"], [0.5], groups=groups, base=base)


def _slow_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name == "structprune.stages.prune"]


@pytest.mark.parametrize("in_channels", [1, 3])
def test_intra_pattern_on_a_first_layer_of_few_maps_warns_for_that_layer(tmp_path, caplog, in_channels):
    pruned, _ = prune_run(_dense(tmp_path, in_channels), tmp_path / "pruned", _first_layer_intra, {})
    with caplog.at_level(logging.WARNING, logger="structprune.stages.prune"):
        _, metrics = compact_run(pruned, tmp_path / "compact")
    assert metrics["predicted_slower_layers"] == ["features.0"]
    first = next(p for p in metrics["predicted_layers"] if p["layer"] == "features.0")
    assert first["predicted_speedup"] < 1 and "few input maps" in first["form"]
    assert first["efficiency"] == EFFICIENCY["few input maps"] and first["mac_ratio"] == pytest.approx(1.5)
    warnings = _slow_warnings(caplog)
    assert len(warnings) == 1 and warnings[0].startswith("features.0: predicted") and "keep its kernels" in warnings[0]


def test_channel_pruning_predicts_a_speedup_without_warnings_and_records_it(tmp_path, caplog):
    pruned, _ = prune_run(_dense(tmp_path), tmp_path / "pruned", _channels, {})
    with caplog.at_level(logging.WARNING, logger="structprune.stages.prune"):
        out, metrics = compact_run(pruned, tmp_path / "compact")
    assert _slow_warnings(caplog) == []
    saved = json.loads((out / METRICS_FILE).read_text())
    assert saved["predicted_speedup"] == metrics["predicted_speedup"] > 1
    assert saved["predicted_slower_layers"] == [] and "measured_speedup" not in saved
    layers = saved["predicted_layers"]
    assert layers and all(p.keys() == PREDICTION_FIELDS for p in layers)
    assert all(p["form"] == "dense" and p["efficiency"] == 1.0 for p in layers)  # narrower convs and linears
    assert sum(p["macs"] for p in layers) == saved["macs"]  # every MAC of the compact network is in a layer
    assert saved["predicted_speedup"] == pytest.approx(sum(p["dense_macs"] for p in layers) / saved["macs"], rel=1e-3)


def test_free_kernel_masks_and_kernel_groups_get_their_forms():
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(16, 16, 3, padding=1)
    free = KernelSparseConv2d.from_conv(conv, torch.rand(16, 16) < 0.5)  # a set of inputs per output map
    assert layer_form(free) == ("many convs", EFFICIENCY["many convs"])
    grouped = KernelSparseConv2d.from_conv(conv, structured_kernel_mask(conv.weight, 2, 0.5))
    form, efficiency = layer_form(grouped)
    assert form == "gather + conv" and efficiency == EFFICIENCY["gather + conv"]
    assert layer_form(conv) == ("dense", 1.0)


def test_cli_prints_the_prediction_and_names_slower_layers(tmp_path, capsys, caplog):
    pruned, _ = prune_run(_dense(tmp_path), tmp_path / "pruned", _first_layer_intra, {})
    with caplog.at_level(logging.WARNING, logger="structprune.stages.prune"):
        assert main(["compact", str(pruned), "--out", str(tmp_path / "compact")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("predicted speed-up"))
    assert "1 layer(s) predicted slower than dense: features.0" in line
    assert [w.split(":")[0] for w in _slow_warnings(caplog)] == ["features.0"]  # the library's warning line


def test_measure_records_a_timed_speedup_beside_the_prediction(tmp_path):
    pruned, _ = prune_run(_dense(tmp_path), tmp_path / "pruned", _channels, {})
    cfg = BenchConfig(batches=(1, 2), threads=1, rounds=1, sample_seconds=0.003, runtime="eager")
    out, metrics = compact_run(pruned, tmp_path / "compact", measure=cfg)
    measured = json.loads((out / METRICS_FILE).read_text())["measured_speedup"]
    assert measured == metrics["measured_speedup"] and [r["batch"] for r in measured] == [1, 2]
    for r in measured:
        assert r["runtime"] == "eager" and r["threads"] == 1 and r["dense_ms"] > 0 and r["compact_ms"] > 0
        assert r["speedup"] == pytest.approx(r["dense_ms"] / r["compact_ms"])
