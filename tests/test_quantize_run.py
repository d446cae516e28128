"""The quantize stage (quantize_run) on a tiny digits run: storage, the packed artifact, per-layer word lengths,
masked runs, and the masks found along the source chain; its ONNX export."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from structprune.arch import example_input
from structprune.compact.compaction import compact
from structprune.data import load_dataset
from structprune.errors import StructpruneError
from structprune.export_onnx import export_onnx
from structprune.metrics import size_metrics
from structprune.models import create
from structprune.quant.packing import load_packed
from structprune.quant.run import QuantizeConfig, find_masks, quantize_run
from structprune.runfolder import load_run, save_run
from structprune.sparsity.channel_groups import find_channel_groups
from structprune.sparsity.granularity import Granularity
from structprune.sparsity.masking import MaskApplier
from structprune.sparsity.masks import MASKS_FILE
from structprune.sparsity.selection import SelectionConfig, select
from structprune.train import TrainConfig, evaluate, train


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
    out, metrics = quantize_run(runs["pruned"], runs["base"] / "q4", QuantizeConfig(bits=4, epochs=1))
    assert metrics == json.loads((out / "metrics.json").read_text())
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
    export_onnx(run.model, onnx_file, exporter="torchscript")
    import onnxruntime as ort

    got = ort.InferenceSession(str(onnx_file)).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert float(np.abs(got - run.model(x).numpy()).max()) <= 1e-4


def test_per_layer_auto_records_the_sweep(runs):
    out, _ = quantize_run(runs["dense"], runs["base"] / "auto", QuantizeConfig(bits=6, per_layer="auto"))
    sweep = json.loads((out / "sensitivity.json").read_text())
    quant = json.loads((out / "quant.json").read_text())
    assert set(sweep["layers"]) == {w["layer"] for w in quant["weights"].values()}
    assert all(set(row) == {str(b) for b in range(2, 7)} for row in sweep["layers"].values())
    for w in quant["weights"].values():
        assert w["bits"] == sweep["chosen_bits"][w["layer"]] and 2 <= w["bits"] <= 6


def test_a_masked_run_is_packed_and_counted_in_compact_form(runs):
    out_masked, _ = quantize_run(runs["masked"], runs["base"] / "qm", QuantizeConfig(bits=5))
    out_compact, _ = quantize_run(runs["pruned"], runs["base"] / "qc", QuantizeConfig(bits=5))
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


@pytest.mark.parametrize("bits", [1, 17, 0])
def test_word_length_outside_2_to_16_is_one_line_and_writes_nothing(runs, bits):
    out = runs["base"] / f"bad{bits}"
    with pytest.raises(StructpruneError, match="2–16") as err:
        quantize_run(runs["dense"], out, QuantizeConfig(bits=bits))
    assert len(str(err.value).splitlines()) == 1 and not out.exists()


def test_masks_are_found_along_the_source_run_chain(tmp_path):
    pruned, compacted_run, retrained = tmp_path / "p", tmp_path / "c", tmp_path / "r"
    for folder in (pruned, compacted_run, retrained):
        folder.mkdir()
    (pruned / MASKS_FILE).write_text("{}")
    (compacted_run / "config.json").write_text(json.dumps({"source_run": str(pruned)}))
    assert find_masks(None, retrained, {"source_run": str(compacted_run)}) == pruned / MASKS_FILE
    assert find_masks(None, retrained, {}) is None
    (compacted_run / "config.json").write_text(json.dumps({"source_run": str(compacted_run)}))  # a loop
    assert find_masks(None, retrained, {"source_run": str(compacted_run)}) is None
