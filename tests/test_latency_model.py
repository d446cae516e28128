"""The measured latency model over pruned forms: predictions, JSON, measurement structure, forms of compact layers."""

import copy
import io
import json
import random

import pytest
import torch

from structprune.arch import example_input
from structprune.compact.compaction import compact
from structprune.errors import StructpruneError
from structprune.latency_model import (
    CalibrationPoint,
    LatencyModel,
    LayerForm,
    fit_calibration,
    layer_form,
    measure_latency_model,
    network_forms,
)
from structprune.latency_model.calibration import ALPHA_MAX, Coefficients
from structprune.latency_model.measure import FormConv, grid_counts, onnx_kernel_ms, run_kernel_ms
from structprune.latency_model.model import Grid, LayerTimes
from structprune.models import create
from structprune.sparsity.channel_groups import find_channel_groups
from structprune.sparsity.granularity import Granularity, KernelForm, KernelStructure
from structprune.sparsity.selection import SelectionConfig, select


def synthetic() -> LatencyModel:
    """Two convolutions with made-up, monotone grids; conv 'b' also has G = 2 and a 3×1 tap grid."""
    a = LayerTimes(3, 16, (3, 3), (8, 8), grids={"g1": Grid([3], [8, 16], [[1.0, 2.0]])})
    b = LayerTimes(16, 32, (3, 3), (4, 4), grids={
        "g1": Grid([8, 16], [8, 16, 32], [[1.0, 2.0, 4.0], [2.0, 4.0, 8.0]]),
        "g2": Grid([8, 16], [8, 32], [[0.6, 2.4], [1.2, 4.8]]),
        "g1:3x1": Grid([8, 16], [8, 32], [[0.5, 2.0], [1.0, 4.0]]),
    })
    dw = LayerTimes(32, 32, (3, 3), (4, 4), depthwise=True, grids={"g1": Grid([1], [8, 32], [[0.2, 0.8]])})
    return LatencyModel("onnxruntime", 1, 2, (3, 8, 8), {"a": a, "b": b, "dw": dw}, network_dense_ms=20.0)


def test_absent_forms_are_dense_and_the_fixed_part_closes_the_sum():
    model = synthetic()
    assert model.dense_ms() == pytest.approx(20.0)
    assert model.fixed_ms == pytest.approx(20.0 - 2.0 - 8.0 - 0.8)
    assert model.network_ms({"b": LayerForm(16, 32)}) == pytest.approx(20.0)
    assert model.network_ms({"b": LayerForm(8, 16)}) == pytest.approx(20.0 - 8.0 + 2.0)


def test_calibration_recovers_the_line_through_whole_networks():
    truth = (0.55, 0.3)  # network = 0.55 · Σ convolutions + 0.3 ms, plus noise of at most ±0.5%
    rng = random.Random(0)
    points = [CalibrationPoint(f"n{i}", keep, conv, (truth[0] * conv + truth[1]) * (1 + rng.uniform(-5e-3, 5e-3)))
              for i, (keep, conv) in enumerate([(1.0, 1.2), (0.75, 0.9), (0.5, 0.65), (0.25, 0.42)])]
    alpha, beta, *gammas = fit_calibration(points)
    assert alpha == pytest.approx(truth[0], rel=0.05) and beta == pytest.approx(truth[1], abs=0.02)
    assert gammas == [0, 0]  # plain networks: no form terms
    exact = [CalibrationPoint(p.name, p.keep, p.conv_ms, truth[0] * p.conv_ms + truth[1]) for p in points]
    assert fit_calibration(exact)[:2] == pytest.approx(truth)


def test_calibration_falls_back_and_clips():
    dense = CalibrationPoint("dense", 1.0, 1.2, 0.8)
    assert fit_calibration([dense]) == pytest.approx((1.0, -0.4, 0, 0))  # the dense network alone: its fixed part
    assert fit_calibration([dense, CalibrationPoint("same", 0.5, 1.2, 0.6)]) == pytest.approx((1.0, -0.5, 0, 0))
    steep = [CalibrationPoint("a", 1.0, 1.0, 100.0), CalibrationPoint("b", 0.5, 0.5, 1.0)]  # α = 198: clipped
    alpha, beta, *gammas = fit_calibration(steep)
    assert alpha == ALPHA_MAX and alpha * 0.5 + beta == pytest.approx(1.0, rel=0.05)  # relative: b counts most
    assert gammas == [0, 0]


TRUTH = Coefficients(0.55, 0.3, 0.012, 0.02)  # ms: α, β, per conv with kernel blocks, per conv with an intra shape
PLAIN = [(1.0, 1.2), (0.75, 0.9), (0.5, 0.65), (0.25, 0.42)]


def _points(rows, noise: float = 0.0) -> list[CalibrationPoint]:
    rng = random.Random(0)
    return [CalibrationPoint(f"n{i}", keep, conv, TRUTH.predict(conv, blocks, taps) * (1 + rng.uniform(-noise, noise)),
                             blocks, taps) for i, (keep, conv, blocks, taps) in enumerate(rows)]


def test_calibration_recovers_the_cost_of_formed_layers():
    rows = [(k, c, 0, 0) for k, c in PLAIN] + [(0.5, 0.5, 9, 0), (0.5, 0.55, 0, 12)]  # as measure_calibration makes
    assert fit_calibration(_points(rows)) == pytest.approx(TRUTH)
    assert fit_calibration(_points([*rows, (0.5, 0.45, 9, 12)])) == pytest.approx(TRUTH)
    c = fit_calibration(_points(rows, noise=5e-3))
    assert c.alpha == pytest.approx(TRUTH.alpha, rel=0.05) and c.beta == pytest.approx(TRUTH.beta, abs=0.02)
    assert c.gamma_blocks == pytest.approx(TRUTH.gamma_blocks, abs=2e-3)
    assert c.gamma_taps == pytest.approx(TRUTH.gamma_taps, abs=2e-3)
    # candidates formed at random, no plain network among them (the check script's best line): still recovered
    rng = random.Random(1)
    drawn = [(1.0, rng.uniform(0.3, 1.2), rng.randrange(10), rng.randrange(13)) for _ in range(12)]
    assert fit_calibration(_points(drawn)) == pytest.approx(TRUTH)


def test_calibration_drops_form_terms_it_cannot_fit():
    plain = [(k, c, 0, 0) for k, c in PLAIN]
    only_taps = fit_calibration(_points([*plain, (0.5, 0.55, 0, 12)]))  # no network with kernel blocks
    assert only_taps == pytest.approx(TRUTH._replace(gamma_blocks=0.0))
    same = fit_calibration(_points([(0.5, 0.5, 9, 12), (0.5, 0.4, 9, 12), (0.5, 0.3, 9, 12)]))  # counts never vary
    assert same.gamma_blocks == same.gamma_taps == 0 and same.alpha == pytest.approx(TRUTH.alpha)
    few = fit_calibration(_points([plain[0], (0.5, 0.5, 9, 0), (0.5, 0.55, 0, 12)]))  # 3 points, 4 parameters
    assert few.gamma_taps == 0 and few.gamma_blocks != 0  # the blocks term fits, then none is left for taps
    two = fit_calibration(_points([plain[0], (0.5, 0.5, 9, 0)]))  # 2 points: the plain line through them
    assert (two.gamma_blocks, two.gamma_taps) == (0, 0)
    assert two.predict(0.5, 9) == pytest.approx(TRUTH.predict(0.5, 9))
    collinear = fit_calibration(_points([*plain, (0.5, 0.5, 9, 9), (0.4, 0.4, 6, 6)]))  # blocks == taps everywhere
    assert collinear.gamma_taps == 0 and collinear.gamma_blocks == pytest.approx(TRUTH.gamma_blocks + TRUTH.gamma_taps)


def test_calibrated_model_predicts_on_its_line():
    model = synthetic()
    dense_conv = model.conv_ms({})
    forms = {"b": LayerForm(8, 16)}
    model.calibration = [CalibrationPoint("dense", 1.0, dense_conv, 0.5 * dense_conv + 1.0),
                         CalibrationPoint("uniform-50", 0.5, model.conv_ms(forms), 0.5 * model.conv_ms(forms) + 1.0)]
    assert model.coefficients() == pytest.approx((0.5, 1.0, 0, 0))
    assert model.dense_ms() == pytest.approx(0.5 * dense_conv + 1.0)
    assert model.network_ms({"b": LayerForm(16, 16)}) == pytest.approx(0.5 * model.conv_ms({"b": LayerForm(16, 16)}) + 1)


def test_network_ms_counts_the_formed_layers():
    model = synthetic()
    model.layers["c"] = LayerTimes(16, 32, (3, 3), (4, 4), groups=2, grids={
        "g1": Grid([8, 16], [8, 32], [[1.0, 4.0], [2.0, 8.0]]), "g2": Grid([8, 16], [8, 32], [[0.5, 2.0], [1.0, 4.0]])})
    base = [CalibrationPoint("dense", 1.0, model.conv_ms({}), 5.0), CalibrationPoint("half", 0.5, 3.0, 4.0)]
    model.calibration = [*base, CalibrationPoint("blocks", 0.5, 2.8, 4.5, blocks=1),
                         CalibrationPoint("taps", 0.5, 2.9, 4.2, taps=1)]
    c = model.coefficients()
    assert c.gamma_blocks != 0 and c.gamma_taps != 0
    forms = {"b": LayerForm(16, 32, 2, (3, 1)), "c": LayerForm(16, 32, 2), "dw": LayerForm(32, 32)}
    assert model.form_counts(forms) == (1, 1)  # c keeps its own 2 groups: no kernel blocks
    assert model.form_counts({"c": LayerForm(16, 32, 4), "b": LayerForm(16, 32, taps=(3, 3))}) == (1, 0)
    assert model.layer_ms("c", LayerForm(16, 32, 4)) == pytest.approx(4.0)  # 2 blocks in each of its 2 groups
    assert model.layer_ms("c", LayerForm(16, 32, 2)) == pytest.approx(8.0)
    expected = c.alpha * model.conv_ms(forms) + c.beta + c.gamma_blocks + c.gamma_taps
    assert model.network_ms(forms) == pytest.approx(expected)
    assert model.dense_ms() == pytest.approx(c.alpha * model.conv_ms({}) + c.beta)
    with pytest.raises(StructpruneError, match="groups"):
        model.layer_ms("c", LayerForm(16, 32, 3))


def test_interpolation_between_grid_points_and_clamping():
    model = synthetic()
    assert model.layer_ms("b", LayerForm(12, 16)) == pytest.approx(3.0)  # halfway between 2 and 4
    assert model.layer_ms("b", LayerForm(12, 24)) == pytest.approx((3.0 + 6.0) / 2)  # bilinear
    assert model.layer_ms("b", LayerForm(4, 4)) == pytest.approx(1.0)  # below the grid: its first point
    assert model.layer_ms("a", LayerForm(3, 12)) == pytest.approx(1.5)


def test_monotone_grids_give_monotone_predictions():
    model = synthetic()
    previous = -1.0
    for kept in range(8, 33, 4):
        now = model.network_ms({"b": LayerForm(16, kept)})
        assert now >= previous
        previous = now
    assert model.network_ms({"b": LayerForm(8, 32)}) < model.network_ms({"b": LayerForm(16, 32)})


def test_groups_taps_and_their_combination():
    model = synthetic()
    assert model.layer_ms("b", LayerForm(16, 32, groups=2)) == pytest.approx(4.8)
    assert model.layer_ms("b", LayerForm(16, 32, taps=(3, 1))) == pytest.approx(4.0)
    assert model.layer_ms("b", LayerForm(16, 32, taps=(3, 3))) == pytest.approx(8.0)  # the full kernel
    # G = 2 with 3×1 taps, not measured together: t(g2) · t(g1:3x1) / t(g1)
    assert model.layer_ms("b", LayerForm(16, 32, groups=2, taps=(3, 1))) == pytest.approx(4.8 * 4.0 / 8.0)
    assert model.layer_ms("dw", LayerForm(16, 16)) == pytest.approx(0.2 + 0.6 * 8 / 24)
    for layer, form in [("b", LayerForm(16, 32, groups=4)), ("b", LayerForm(16, 32, taps=(1, 3))),
                        ("b", LayerForm(16, 64)), ("b", LayerForm(0, 8)), ("dw", LayerForm(8, 16)),
                        ("b", LayerForm(16, 32, taps=(5, 1))), ("nope", LayerForm(1, 1))]:
        with pytest.raises(StructpruneError):
            model.layer_ms(layer, form)
    with pytest.raises(StructpruneError, match="nope"):
        model.network_ms({"nope": LayerForm(1, 1)})


def test_json_round_trip():
    model = synthetic()
    model.calibration = [CalibrationPoint("dense", 1.0, 10.8, 9.0), CalibrationPoint("uniform-50", 0.5, 6.0, 5.5),
                         CalibrationPoint("uniform-75", 0.75, 8.0, 7.0),
                         CalibrationPoint("uniform-50-blocks2", 0.5, 5.0, 5.8, blocks=1),
                         CalibrationPoint("uniform-50-taps2x3", 0.5, 5.2, 6.0, taps=1)]
    data = json.loads(json.dumps(model.to_json()))
    assert data["format"] == "structprune-latency-model/3"
    assert data["calibration"][3]["blocks"] == 1 and data["calibration"][4]["taps"] == 1
    stored = (data["alpha"], data["beta_ms"], data["gamma_blocks_ms"], data["gamma_taps_ms"])
    assert stored == pytest.approx(model.coefficients()) and model.coefficients().gamma_taps != 0
    again = LatencyModel.from_json(data)
    assert (again.runtime, again.batch, again.threads, again.input_shape) == ("onnxruntime", 1, 2, (3, 8, 8))
    assert again.calibration == model.calibration
    for form in (LayerForm(12, 24), LayerForm(16, 32, 2, (3, 1)), LayerForm(8, 8, 2)):
        assert again.layer_ms("b", form) == model.layer_ms("b", form)
        assert again.network_ms({"b": form}) == pytest.approx(model.network_ms({"b": form}))
    assert again.dense_ms() == pytest.approx(model.dense_ms())


def test_a_version_2_file_still_loads_without_form_terms():
    model = synthetic()
    model.calibration = [CalibrationPoint("dense", 1.0, 10.8, 9.0), CalibrationPoint("uniform-50", 0.5, 6.0, 5.5)]
    data = json.loads(json.dumps(model.to_json()))
    for point in data["calibration"]:
        del point["blocks"], point["taps"]
    for key in ("gamma_blocks_ms", "gamma_taps_ms"):
        data.pop(key)
    for layer in data["layers"].values():
        del layer["groups"]
    data["format"] = "structprune-latency-model/2"
    old = LatencyModel.from_json(data)
    assert old.calibration == model.calibration and old.coefficients() == pytest.approx(model.coefficients())
    assert old.coefficients()[2:] == (0, 0) and old.layers["b"].groups == 1
    form = {"b": LayerForm(16, 32, 2, (3, 1))}
    assert old.network_ms(form) == pytest.approx(model.network_ms(form))


def test_a_version_1_file_still_loads_with_its_fixed_part():
    data = synthetic().to_json()
    for key in ("calibration", "alpha", "beta_ms", "gamma_blocks_ms", "gamma_taps_ms"):
        data.pop(key)
    data.update({"format": "structprune-latency-model/1", "fixed_share": 0.0})
    old = LatencyModel.from_json(json.loads(json.dumps(data)))
    assert old.calibration == [] and old.coefficients() == pytest.approx((1.0, 20.0 - 10.8, 0, 0))
    assert old.dense_ms() == pytest.approx(20.0)
    assert old.network_ms({"b": LayerForm(8, 16)}) == pytest.approx(20.0 - 8.0 + 2.0)


def _broken(change) -> dict:
    data = copy.deepcopy(synthetic().to_json())
    change(data)
    return data


@pytest.mark.parametrize("change", [
    lambda d: d.update(format="structprune-latency/1"),
    lambda d: d.update(runtime="tensorrt"),
    lambda d: d.update(batch=0),
    lambda d: d.update(threads=True),
    lambda d: d.pop("network_dense_ms"),
    lambda d: d.update(network_dense_ms=float("nan")),
    lambda d: d.pop("calibration"),
    lambda d: d.update(calibration={"dense": 1.0}),
    lambda d: d.update(calibration=[{"name": "dense", "keep": 1.0, "conv_ms": 1.0, "network_ms": -1.0}]),
    lambda d: d.update(calibration=[{"keep": 1.0, "conv_ms": 1.0, "network_ms": 1.0}]),
    lambda d: d.update(calibration=[{"name": "a", "keep": 1.0, "conv_ms": 1.0, "network_ms": 1.0, "blocks": -1}]),
    lambda d: d.update(calibration=[{"name": "a", "keep": 1.0, "conv_ms": 1.0, "network_ms": 1.0, "taps": 1.5}]),
    lambda d: d["layers"]["b"].update(groups=3),
    lambda d: d["layers"]["b"].update(output_size=[4, 0]),
    lambda d: d.update(layers={}),
    lambda d: d["layers"]["b"]["grids"].pop("g1"),
    lambda d: d["layers"]["b"]["grids"].update(g0={"in": [8], "out": [8], "ms": [[1.0]]}),
    lambda d: d["layers"]["b"]["grids"].update({"g2:3": {"in": [8], "out": [8], "ms": [[1.0]]}}),
    lambda d: d["layers"]["b"]["grids"]["g1"].update({"in": [16, 8]}),
    lambda d: d["layers"]["b"]["grids"]["g1"].update({"ms": [[1.0, 2.0]]}),
    lambda d: d["layers"]["b"]["grids"]["g1"]["ms"][0].__setitem__(0, "fast"),
    lambda d: d["layers"]["b"].update(kernel=[3]),
    lambda d: d["layers"]["b"].update(depthwise="no"),
    lambda d: d["layers"]["a"].pop("out_channels"),
])
def test_validation_refuses_malformed_models(change):
    with pytest.raises(StructpruneError, match="latency model"):
        LatencyModel.from_json(_broken(change))


def test_grid_counts_keep_ends_and_multiples():
    assert grid_counts(64, 8, 5) == [8, 24, 40, 48, 64]
    assert grid_counts(12, 8, 5) == [8, 12]
    assert grid_counts(3, 8, 5) == [3]


@pytest.mark.parametrize("size,stride,taps", [(8, 1, (2, 3)), (8, 2, (3, 1)), (7, 2, (1, 3)), (7, 2, (2, 2))])
def test_tap_convolutions_keep_the_output_size(size, stride, taps):
    x = torch.randn(1, 4, size, size)
    for dense in (torch.nn.Conv2d(4, 4, 3, stride, 1), torch.nn.Conv2d(4, 4, 3, 1, "same")):
        form = FormConv(dense, (size, size), 4, 8, 2, taps)
        assert form(x).shape[2:] == dense(x).shape[2:]


def test_measured_model_has_every_conv_and_form():
    model = create("tiny-paper")
    before = copy.deepcopy(model.state_dict())
    latency = measure_latency_model(model, (1, 8, 8), "eager", batch=1, threads=1, round_to=8, groups=(1, 2),
                                    taps=((3, 1), (2, 3)), points=3, variant_points=2, min_run_time=1e-4,
                                    network_rounds=1, network_seconds=0.005)
    assert set(latency.layers) == {"features.0", "features.2", "features.5"}
    first = latency.layers["features.0"]
    assert set(first.grids) == {"g1", "g1:3x1", "g1:2x3"}  # the image's one map: no G = 2
    assert first.grids["g1"].ins == [1]
    last = latency.layers["features.5"]
    assert set(last.grids) == {"g1", "g2", "g1:3x1", "g1:2x3"}
    assert last.grids["g1"].ins == [8] and last.grids["g1"].outs == [8, 16]
    assert all(ms > 0 for t in latency.layers.values() for g in t.grids.values() for row in g.ms for ms in row)
    assert latency.network_dense_ms > 0 and latency.dense_ms() > 0
    # the dense network and its uniform copies keeping 75, 50, 25% (tiny-paper: 8 and 16 maps, rounded to 8)
    names = [p.name for p in latency.calibration]
    assert names[0] == "dense" and len(names) >= 2 and len(set(names)) == len(names)
    assert latency.calibration[0].network_ms == latency.network_dense_ms
    # 75% keeps every map, 25% the same as 50%; then the 50% copy with kernel blocks G = 2, and with 2×3 taps, on
    # the convs the target search offers them (not the first, which reads the image)
    assert names[:4] == ["dense", "uniform-50", "uniform-50-blocks2", "uniform-50-taps2x3"]
    assert [p.keep for p in latency.calibration[:4]] == [1.0, 0.5, 0.5, 0.5]
    # then random copies (each group its own share of [25%, 1]): those that prune something, plain convs only
    randoms = latency.calibration[4:]
    assert 1 <= len(randoms) <= 4 and all(p.name.startswith("random-") for p in randoms)
    assert all(0.25 <= p.keep < 1.0 and (p.blocks, p.taps) == (0, 0) for p in randoms)
    counts = [(p.blocks, p.taps) for p in latency.calibration]
    assert counts[:2] == [(0, 0), (0, 0)]
    assert counts[2][0] >= 1 and counts[2][1] == 0 and counts[3][0] == 0 and counts[3][1] >= 1
    assert last.output_size == (4, 4)
    assert LatencyModel.from_json(json.loads(json.dumps(latency.to_json()))).dense_ms() == latency.dense_ms()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is left alone
    model.zero_grad()
    model(torch.randn(2, 1, 8, 8)).sum().backward()  # still trainable (no inference tensors left behind)


def test_onnxruntime_model_times_one_node_sessions(monkeypatch):
    # the whole network's ONNX export and timing is structprune.bench's (tested there); here the layers' sessions
    monkeypatch.setattr("structprune.latency_model.network.network_times", lambda *args: {"dense": 5.0})
    model = create("tiny-paper")
    latency = measure_latency_model(model, (1, 8, 8), "onnxruntime", batch=1, threads=1, groups=(1,), taps=(),
                                    points=2, min_run_time=1e-4, network_rounds=1, network_seconds=0.005,
                                    calibration_keeps=(1.0,))
    assert latency.runtime == "onnxruntime" and [p.name for p in latency.calibration] == ["dense"]
    assert {k for t in latency.layers.values() for k in t.grids} == {"g1"}
    assert latency.dense_ms() == pytest.approx(5.0) and latency.fixed_ms < 5.0
    with pytest.raises(StructpruneError, match="runtime"):
        measure_latency_model(model, (1, 8, 8), "compile", batch=1, threads=1)
    with pytest.raises(StructpruneError, match="calibration"):
        measure_latency_model(model, (1, 8, 8), "eager", batch=1, threads=1, calibration_keeps=(1.0, 0.0))


def test_forms_of_a_compact_network():
    torch.manual_seed(0)
    model = create("tiny-vgg").eval()
    x = example_input(model, 2)
    groups = find_channel_groups(model, x)
    cfg = SelectionConfig(kernel=KernelForm(KernelStructure.BLOCKS, 2), round_to=4)
    mask = select(model, [Granularity.CHANNEL, Granularity.KERNEL], [0.5, 0.5], cfg, groups=groups)
    mask = select(model, [Granularity.INTRA], [2 / 3], SelectionConfig(intra_fast=True, intra_shared=True),
                  groups=groups, base=mask)
    net = compact(model, mask, x, groups)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    forms = network_forms(net, names)
    assert set(forms) == set(names)
    first, later = forms[names[0]], [forms[n] for n in names[1:]]
    assert first.kept_in == model.get_submodule(names[0]).in_channels and first.taps is None
    assert all(f.groups == 2 and f.taps in ((3, 1), (1, 3)) for f in later)
    assert all(forms[n].kept_out < model.get_submodule(n).out_channels for n in names[1:])
    assert layer_form(torch.nn.Conv2d(8, 8, 3, groups=8)) == LayerForm(8, 8)  # depthwise: its own form
    with pytest.raises(StructpruneError, match="no layer"):
        network_forms(net, ["nope"])


def test_profiled_kernel_time_leaves_out_the_edge_reorders_and_groups_by_run():
    def node(op: str, ts: int, dur: int) -> dict:
        return {"cat": "Node", "name": f"{op}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}

    events = [{"cat": "Session", "name": "session_initialization", "ts": 0, "dur": 50},
              node("ReorderInput", 101, 30), node("Conv", 131, 400), node("ReorderOutput", 531, 200),
              {"cat": "Session", "name": "model_run", "ts": 100, "dur": 700},
              node("Pad", 1001, 20), node("Conv", 1021, 500),
              {"cat": "Session", "name": "model_run", "ts": 1000, "dur": 600}]
    assert run_kernel_ms(events) == pytest.approx([0.4, 0.52])


def test_profiled_kernel_time_of_a_real_layer():
    pytest.importorskip("onnxruntime")
    conv = torch.nn.Conv2d(8, 4, 3, padding=1).eval()
    x = torch.randn(2, 8, 6, 6)
    buffer = io.BytesIO()
    torch.onnx.export(conv, (x,), buffer, input_names=["input"], output_names=["output"], opset_version=18,
                      dynamo=False)
    ms = onnx_kernel_ms(buffer.getvalue(), x, threads=1, min_run_time=0.0, min_runs=3)
    assert 0.0 < ms < 1000.0


def test_calibration_repeats_fit_on_each_networks_median(monkeypatch):
    # three bench runs of the calibration networks: the fit sees each network's median, not one run's times
    runs = iter([{"dense": 9.0}, {"dense": 5.0}, {"dense": 6.0}])
    monkeypatch.setattr("structprune.latency_model.network.network_times", lambda *args: next(runs))
    model = create("tiny-paper")
    latency = measure_latency_model(model, (1, 8, 8), "onnxruntime", batch=1, threads=1, groups=(1,), taps=(),
                                    points=2, min_run_time=1e-4, network_rounds=1, network_seconds=0.005,
                                    calibration_keeps=(1.0,), calibration_repeats=3)
    assert latency.network_dense_ms == pytest.approx(6.0)
    assert [p.network_ms for p in latency.calibration] == [pytest.approx(6.0)]
    with pytest.raises(StructpruneError, match="repeats"):
        measure_latency_model(model, (1, 8, 8), "eager", batch=1, threads=1, calibration_keeps=(1.0,),
                              calibration_repeats=0)


def test_grid_repeats_keep_each_shapes_fastest_pass(monkeypatch):
    # two passes over the grids: a shape slowed in one pass (a busy stretch) keeps its time from the other
    monkeypatch.setattr("structprune.latency_model.network.network_times", lambda *args: {"dense": 5.0})
    model = create("tiny-paper")
    kwargs = dict(batch=1, threads=1, groups=(1,), taps=(), points=2, calibration_keeps=(1.0,))
    count = iter(range(1000))
    monkeypatch.setattr("structprune.latency_model.measure.time_form", lambda *args: float(next(count)))
    measure_latency_model(model, (1, 8, 8), "eager", **kwargs)
    shapes = next(count)  # shapes timed by one pass
    first = [10.0 if i % 2 else 1.0 for i in range(shapes)]
    second = [2.0 if i % 2 else 20.0 for i in range(shapes)]
    times = iter(first + second)
    monkeypatch.setattr("structprune.latency_model.measure.time_form", lambda *args: next(times))
    latency = measure_latency_model(model, (1, 8, 8), "eager", grid_repeats=2, **kwargs)
    kept = [t for layer in latency.layers.values() for g in layer.grids.values() for row in g.ms for t in row]
    assert shapes > 2 and kept == [min(a, b) for a, b in zip(first, second, strict=True)]
    with pytest.raises(StructpruneError, match="grid repeats"):
        measure_latency_model(model, (1, 8, 8), "eager", batch=1, threads=1, calibration_keeps=(1.0,), grid_repeats=0)


def test_target_search_measures_its_model_as_checked(monkeypatch):
    # the target search's latency model: 9 counts per grid axis, 3 calibration runs, 1 grid pass (the settings
    # benchmarks/latency_model_check.py measured best), and only the plain convolution when no form is offered
    from types import SimpleNamespace

    from structprune.search import target_cost

    seen = {}

    def fake_measure(model, input_shape, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("measured")

    monkeypatch.setattr("structprune.latency_model.measure_latency_model", fake_measure)
    space = SimpleNamespace(model=create("tiny-paper"), block_layers=[], tap_layers=[])
    with pytest.raises(RuntimeError, match="measured"):
        target_cost.measured_latency_cost(space, (1, 8, 8), "onnxruntime", batch=4, threads=1, round_to=8)
    assert seen["points"] == target_cost.TARGET_GRID_POINTS == 9
    assert seen["calibration_repeats"] == target_cost.TARGET_CALIBRATION_REPEATS == 3
    assert seen["grid_repeats"] == target_cost.TARGET_GRID_REPEATS == 1
    assert seen["groups"] == (1,) and seen["taps"] == ()
