"""Latency table and the latency-aware global search."""

import json

import pytest
import torch

from structprune.data import load_dataset
from structprune.errors import StructpruneError
from structprune.models import create
from structprune.runfolder import load_run, save_run
from structprune.search.driver import SearchConfig, search_run
from structprune.search.latency import LatencyTable, measure_latency_table
from structprune.sparsity.masks import NetworkMask
from structprune.sparsity.method import Method
from structprune.train import TrainConfig, train


def test_measured_table_interpolates_its_grid():
    model = create("tiny-paper", in_channels=1, input_size=8)
    table = measure_latency_table(model, (1, 8, 8), batch=2, fractions=(0.5, 1.0), min_run_time=0.001)
    assert set(table.layers) == {"features.0", "features.2", "features.5"}
    grid = table.layers["features.2"]
    assert grid["in"] == [4, 8] and grid["out"] == [4, 8]
    assert all(ms > 0 for row in grid["ms"] for ms in row)
    assert table.predict("features.2", 8, 4) == pytest.approx(grid["ms"][1][0])
    mid = table.predict("features.2", 6, 8)
    assert mid == pytest.approx((grid["ms"][0][1] + grid["ms"][1][1]) / 2)
    again = LatencyTable.from_json(json.loads(json.dumps(table.to_json())))
    assert again.predict("features.5", 8, 16) == table.predict("features.5", 8, 16)
    with pytest.raises(StructpruneError):
        LatencyTable.from_json({"format": "x"})


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
    # a made-up table in which only features.5's output maps cost time (1 ms each)
    table = LatencyTable(batch=16, threads=1, layers={
        "features.0": {"in": [1], "out": [1, 8], "ms": [[0.0, 0.0]]},
        "features.2": {"in": [1, 8], "out": [1, 8], "ms": [[0.0, 0.0], [0.0, 0.0]]},
        "features.5": {"in": [1, 8], "out": [1, 16], "ms": [[1.0, 16.0], [1.0, 16.0]]},
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
