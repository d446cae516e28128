"""`structprune quantize` and `structprune export` end to end on a tiny digits run (real commands)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from structprune.arch import example_input
from structprune.cli import main
from structprune.compact.compaction import compact
from structprune.data import load_dataset
from structprune.metrics import size_metrics
from structprune.models import create
from structprune.quant.packing import load_packed
from structprune.runfolder import load_run, save_run
from structprune.sparsity.channel_groups import find_channel_groups
from structprune.sparsity.granularity import Granularity
from structprune.sparsity.masking import MaskApplier
from structprune.sparsity.masks import MASKS_FILE
from structprune.sparsity.selection import SelectionConfig, select
from structprune.train import TrainConfig, evaluate, train

ROOT = Path(__file__).parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "structprune", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A trained tiny-paper digits run and its channel+intra-pruned compact version (with masks.json)."""
    base = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    data = load_dataset("digits")
    model = create("tiny-paper", in_channels=1, input_size=8)
    train(model, data, TrainConfig(epochs=1))
    config = {"dataset": "digits", "train": {"seed": 0}}
    metrics = {"test_mcr": evaluate(model, data.test).mcr, **size_metrics(model)}
    dense = save_run(base / "dense", model, None, metrics, config)
    model.eval()
    x = example_input(model, 2)
    groups = find_channel_groups(model, x)
    mask = select(model, [Granularity.CHANNEL, Granularity.INTRA], [0.25, 0.4], SelectionConfig(), groups=groups)
    net = compact(model, mask, x, groups)
    pruned = save_run(base / "pruned", net, None, {**metrics, **size_metrics(net)}, config,
                      extra_json={MASKS_FILE: mask.to_json()})
    MaskApplier(model, groups).apply_(mask)  # the masked, not yet compacted network
    masked = save_run(base / "masked", model, None, metrics, config, extra_json={MASKS_FILE: mask.to_json()})
    return {"dense": dense, "pruned": pruned, "masked": masked, "base": base}


def test_quantize_with_retraining_writes_a_consistent_run(runs):
    out = runs["base"] / "q4"
    done = _cli("quantize", str(runs["pruned"]), "--bits", "4", "--epochs", "1", "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    storage = json.loads((out / "storage.json").read_text())
    quant = json.loads((out / "quant.json").read_text())
    assert {w["bits"] for w in quant["weights"].values()} == {4}
    assert metrics["weight_bytes"] == storage["total_bytes"] == math.ceil(storage["total_bits"] / 8)
    assert any(row["intra_index_bits"] > 0 for row in storage["layers"])
    assert any(row["channel_index_bits"] > 0 for row in storage["layers"])
    assert metrics["weight_bytes"] < storage["dense_bytes"] / 7  # 4-bit weights of a pruned net
    # the run folder and the packed artifact hold the same quantized network, on the fixed-point grid
    run = load_run(out)
    packed, plan = load_packed(out / "model.packed.safetensors")
    x = example_input(run.model, 16)
    with torch.no_grad():
        assert torch.equal(packed(x), run.model(x))
    params = dict(run.model.named_parameters())
    for name, fmt in plan.items():
        assert torch.equal(fmt.round_trip(params[name]), params[name].detach())
    data = load_dataset("digits")
    assert evaluate(run.model, data.test).mcr == pytest.approx(metrics["test_mcr"])

    onnx_file = runs["base"] / "q4.onnx"
    done = _cli("export", str(out), "--onnx", str(onnx_file), "--exporter", "torchscript")
    assert done.returncode == 0, done.stderr
    import onnxruntime as ort

    got = ort.InferenceSession(str(onnx_file)).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert float(np.abs(got - run.model(x).numpy()).max()) <= 1e-4


def test_per_layer_auto_records_the_sweep(runs, capsys):
    out = runs["base"] / "auto"
    assert main(["quantize", str(runs["dense"]), "--bits", "6", "--per-layer", "auto", "--out", str(out),
                 "--no-progress"]) == 0
    sweep = json.loads((out / "sensitivity.json").read_text())
    quant = json.loads((out / "quant.json").read_text())
    assert set(sweep["layers"]) == {w["layer"] for w in quant["weights"].values()}
    assert all(set(row) == {str(b) for b in range(2, 7)} for row in sweep["layers"].values())
    for w in quant["weights"].values():
        assert w["bits"] == sweep["chosen_bits"][w["layer"]] and 2 <= w["bits"] <= 6


def test_a_masked_run_is_packed_and_counted_in_compact_form(runs, capsys):
    out_masked, out_compact = runs["base"] / "qm", runs["base"] / "qc"
    assert main(["quantize", str(runs["masked"]), "--bits", "5", "--out", str(out_masked), "--no-progress"]) == 0
    assert main(["quantize", str(runs["pruned"]), "--bits", "5", "--out", str(out_compact), "--no-progress"]) == 0
    packed, _ = load_packed(out_masked / "model.packed.safetensors")
    assert any(type(m).__name__ == "IntraKernelConv2d" for m in packed.modules())
    masked_metrics = json.loads((out_masked / "metrics.json").read_text())
    compact_metrics = json.loads((out_compact / "metrics.json").read_text())
    assert masked_metrics["weight_bytes"] == compact_metrics["weight_bytes"]
    assert masked_metrics["compact_params"] == compact_metrics["params"] < masked_metrics["params"]
    masked_run = load_run(out_masked)
    x = example_input(packed, 8)
    with torch.no_grad():
        assert float((packed(x) - masked_run.model(x)).abs().max()) < 1e-4


@pytest.mark.parametrize("bits", ["1", "17", "0"])
def test_word_length_outside_2_to_16_is_one_line_and_writes_nothing(runs, capsys, bits):
    out = runs["base"] / f"bad{bits}"
    assert main(["quantize", str(runs["dense"]), "--bits", bits, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2–16" in err[0]
    assert not out.exists()


def test_bad_inputs_are_one_line(runs, capsys, tmp_path):
    assert main(["quantize", str(tmp_path / "nope"), "--bits", "4", "--out", str(tmp_path / "o")]) == 2
    assert main(["export", str(tmp_path / "nope"), "--onnx", str(tmp_path / "x.onnx")]) == 2
    broken = tmp_path / "broken"
    broken.mkdir()
    good = (runs["base"] / "auto" / "model.packed.safetensors").read_bytes()
    (broken / "model.packed.safetensors").write_bytes(good[: len(good) // 2])
    assert main(["export", str(broken), "--onnx", str(tmp_path / "y.onnx")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("structprune: error:") for line in lines)
    assert "truncated" in lines[2]
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "y.onnx").exists()


def test_masks_are_found_along_the_source_run_chain(tmp_path):
    from structprune.quant.run import find_masks

    pruned, compacted_run, retrained = tmp_path / "p", tmp_path / "c", tmp_path / "r"
    for folder in (pruned, compacted_run, retrained):
        folder.mkdir()
    (pruned / MASKS_FILE).write_text("{}")
    (compacted_run / "config.json").write_text(json.dumps({"source_run": str(pruned)}))
    assert find_masks(None, retrained, {"source_run": str(compacted_run)}) == pruned / MASKS_FILE
    assert find_masks(None, retrained, {}) is None
    (compacted_run / "config.json").write_text(json.dumps({"source_run": str(compacted_run)}))  # a loop
    assert find_masks(None, retrained, {"source_run": str(compacted_run)}) is None
