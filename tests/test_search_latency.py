"""The search's latency term (the latency model's conv sum) and the latency-aware global search."""

import json

import pytest
import torch

from structprune.data import load_dataset
from structprune.errors import StructpruneError
from structprune.latency_model.model import Grid, LatencyModel, LayerTimes
from structprune.models import create
from structprune.runfolder import load_run, save_run
from structprune.search.driver import SearchConfig, search_run
from structprune.search.latency import ConvLatency, measure_conv_latency
from structprune.sparsity.masks import NetworkMask
from structprune.sparsity.method import Method
from structprune.train import TrainConfig, train


def test_measured_model_predicts_the_conv_sum_of_kept_counts():
    model = create("tiny-paper", in_channels=1, input_size=8)
    table = measure_conv_latency(model, (1, 8, 8), batch=2, min_run_time=0.001)
    assert set(table.layers) == {"features.0", "features.2", "features.5"}
    assert table.model.runtime == "eager" and table.model.batch == 2
    grid = table.layers["features.2"].grids["g1"]
    assert set(table.layers["features.2"].grids) == {"g1"}  # plain convolutions only
    assert grid.ins[0] == 1 and grid.ins[-1] == 8 and grid.outs[-1] == 8 and len(grid.ins) <= 5
    assert all(ms > 0 for row in grid.ms for ms in row)
    one = table.network_ms({"features.2": (8, 8)})
    assert one == pytest.approx(grid.ms[-1][-1])
    both = table.network_ms({"features.2": (8, 8), "features.5": (8, 16)})
    assert both == pytest.approx(one + table.layers["features.5"].grids["g1"].ms[-1][-1])
    assert table.network_ms({"features.2": (0, 0)}) == pytest.approx(grid.ms[0][0])  # clamped to one map
    again = ConvLatency.from_json(json.loads(json.dumps(table.to_json())))
    assert again.network_ms({"features.5": (4, 12)}) == table.network_ms({"features.5": (4, 12)})
    with pytest.raises(StructpruneError, match="not a latency model"):
        ConvLatency.from_json({"format": "x"})
    with pytest.raises(StructpruneError, match="old latency table"):
        ConvLatency.from_json({"format": "structprune-latency/1", "batch": 16, "threads": 1, "layers": {}})
    with pytest.raises(StructpruneError, match="no convolution"):
        table.network_ms({"classifier": (1, 1)})


def _made_up(layers: dict[str, tuple[list[int], list[int], list[list[float]]]]) -> LatencyModel:
    times = {n: LayerTimes(ins[-1], outs[-1], (3, 3), grids={"g1": Grid(ins, outs, ms)})
             for n, (ins, outs, ms) in layers.items()}
    return LatencyModel("eager", 16, 1, (1, 8, 8), times, network_dense_ms=20.0)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    data = load_dataset("digits")
    torch.manual_seed(0)
    model = create("tiny-paper", in_channels=1, input_size=8)
    train(model, data, TrainConfig(epochs=2, lr=0.05))
    path = tmp_path_factory.mktemp("runs") / "tiny"
    save_run(path, model, None, {}, {"dataset": "digits"})
    return path, data


def test_latency_weight_moves_pruning_to_the_slow_layer(tiny_run, tmp_path):
    path, data = tiny_run
    # a made-up latency model in which only features.5's output maps cost time (1 ms each)
    table = _made_up({
        "features.0": ([1], [1, 8], [[0.0, 0.0]]),
        "features.2": ([1, 8], [1, 8], [[0.0, 0.0], [0.0, 0.0]]),
        "features.5": ([1, 8], [1, 16], [[1.0, 16.0], [1.0, 16.0]]),
    })
    (tmp_path / "table.json").write_text(json.dumps(table.to_json()))
    kept = {}
    for weight in (0.0, 0.05):
        cfg = SearchConfig(method=Method.PF, scope="global", ratio=0.5, particles=8, generations=6, score_images=80,
                           check_images=80, step_epochs=0, final_epochs=0, latency_weight=weight,
                           latency_table=str(tmp_path / "table.json"))
        _, metrics = search_run(load_run(path), data, cfg, tmp_path / f"w{weight}")
        mask = NetworkMask.from_json(json.loads((tmp_path / f"w{weight}" / "masks.json").read_text()))
        counts = {name: int(lm.keep_out.sum()) for name, lm in mask}
        assert sum(counts.values()) == 16  # half of the 32 maps, wherever they are
        kept[weight] = counts["features.5"]
    assert kept[0.05] < kept[0.0]
    assert metrics["predicted_conv_ms"] < metrics["predicted_conv_ms_dense"]


def test_global_scope_needs_a_ratio():
    with pytest.raises(StructpruneError, match="global"):
        SearchConfig(scope="global")
