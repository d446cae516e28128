"""Each stage function of structprune.stages, called directly on tiny runs: what it writes and what it returns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from structprune.data import load_dataset
from structprune.errors import StructpruneError
from structprune.runfolder import load_run
from structprune.sparsity.granularity import Granularity
from structprune.sparsity.method import Method
from structprune.sparsity.selection import select_masks
from structprune.stages import (
    BenchConfig,
    QuantizeConfig,
    SearchConfig,
    Teacher,
    TrainRunConfig,
    bench_runs,
    compact_run,
    export_run,
    prune_run,
    quantize_run,
    report_runs,
    retrain_run,
    search_run,
    train_run,
)
from structprune.train import TrainConfig

RUN_FILES = {"model.safetensors", "arch.json", "metrics.json", "config.json"}


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, Path]:
    """dense -> pruned (L1, half the maps) -> compact, made once with the stage functions."""
    root = tmp_path_factory.mktemp("stages")
    cfg = TrainRunConfig(model="tiny-paper", dataset="digits", train=TrainConfig(epochs=1, lr=0.05, batch_size=32),
                         val_size=200, channels_last="off")
    dense, _ = train_run(root / "dense", cfg)

    def choose(model, groups, data, base=None):
        return select_masks(model, ["channel"], 0.5, groups=groups, base=base)

    pruned, _ = prune_run(dense, root / "pruned", choose, {"prune": {"method": "l1"}})
    compact, _ = compact_run(pruned, root / "compact")
    return {"root": root, "dense": dense, "pruned": pruned, "compact": compact}


def _config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def test_train_run_writes_a_run_and_returns_its_metrics(chain):
    dense = chain["dense"]
    assert {p.name for p in dense.iterdir()} >= RUN_FILES
    metrics = json.loads((dense / "metrics.json").read_text())
    assert 0 <= metrics["test_mcr"] <= 1 and metrics["params"] > 0 and len(metrics["history"]) == 1
    assert _config(dense)["verb"] == "train" and _config(dense)["val_size"] == 200
    assert _config(dense)["schema"] >= 2


def test_train_run_refuses_shape_arguments(tmp_path):
    with pytest.raises(StructpruneError, match="set by the dataset"):
        TrainRunConfig(model="tiny-paper", dataset="digits", model_kwargs={"num_classes": 3})


def test_prune_and_compact_runs_compute_the_same_function(chain):
    pruned, compact = load_run(chain["pruned"]), load_run(chain["compact"])
    x = torch.randn(5, *pruned.arch["input_shape"])
    with torch.no_grad():
        assert torch.allclose(pruned.model(x), compact.model(x), atol=1e-5)
    assert compact.metrics["macs"] < json.loads((chain["dense"] / "metrics.json").read_text())["macs"]
    assert _config(chain["pruned"])["verb"] == "prune" and _config(chain["compact"])["verb"] == "compact"


def test_prune_run_records_the_dead_units_it_removes(chain):
    dead = json.loads((chain["pruned"] / "metrics.json").read_text())["dead_units"]
    assert dead["counted"] and dead["removed_maps"] > 0
    assert 0 <= dead["removed_dead_maps"] <= min(dead["removed_maps"], dead["dead_maps"])
    assert set(dead["layers"]) and all(row["removed"] <= row["units"] for row in dead["layers"].values())


def test_search_run_prunes_with_the_particle_filter(chain):
    data = load_dataset("digits", val_size=200)
    cfg = SearchConfig(method=Method.PF, granularities=(Granularity.CHANNEL,), ratio=0.5, particles=2, generations=1,
                       score_images=50, check_images=50, step_epochs=0, final_epochs=0, layers=("features.0",))
    out, metrics = search_run(load_run(chain["dense"]), data, cfg, chain["root"] / "searched")
    assert (out / "search.json").is_file() and (out / "masks.json").is_file()
    assert metrics["kept_fraction"]["features.0"] == pytest.approx(0.5, abs=0.2)
    assert {"params", "macs", "weight_bytes"} <= set(metrics)
    dead = metrics["dead_units"]
    assert dead["counted"] and dead["layers"]["features.0"]["removed"] > 0


def test_retrain_run_keeps_pruned_weights_zero_and_can_distil(chain):
    cfg = TrainConfig(epochs=1, lr=0.01, batch_size=32)
    out, metrics = retrain_run(chain["pruned"], chain["root"] / "retrained", cfg, teacher=Teacher("source"))
    before, after = load_run(chain["pruned"]).model.state_dict(), load_run(out).model.state_dict()
    zeros = before["features.0.weight"] == 0
    assert bool(zeros.any()) and bool((after["features.0.weight"][zeros] == 0).all())
    assert not torch.equal(before["features.0.weight"], after["features.0.weight"])
    config = _config(out)
    assert config["verb"] == "retrain" and config["retrain"]["masked"]
    assert Path(config["retrain"]["distill"]["teacher"]).name == "dense"
    assert metrics["before_retrain"]["test_mcr"] == load_run(chain["pruned"]).metrics["test_mcr"]


def test_quantize_run_packs_the_compact_network(chain):
    out, metrics = quantize_run(chain["compact"], chain["root"] / "q6", QuantizeConfig(bits=6))
    assert (out / "model.packed.safetensors").is_file() and metrics["weight_bytes"] < metrics["dense_weight_bytes"]


def test_export_run_writes_a_checked_onnx_folder(chain):
    out, record = export_run(chain["compact"], chain["root"] / "export")
    assert (out / "model.onnx").is_file() and record["max_abs_diff"] <= 1e-4
    assert _config(out)["verb"] == "export"


def test_bench_and_report_runs(chain):
    target = chain["root"] / "bench.json"
    records = bench_runs([chain["dense"], chain["compact"]], BenchConfig(batches=(1,), threads=1, rounds=1,
                                                                        references=("unstructured",)),
                         reference_runs=(1,), out_json=target)
    names = [r["run"] for r in records]
    assert [r["run"] for r in json.loads(target.read_text())] == names
    assert names == [str(chain["dense"]), str(chain["compact"]), f"{chain['compact']}#unstructured"]
    count, written = report_runs([chain["dense"], chain["compact"]], [chain["root"] / "r.html"])
    assert count == 2 and written == [chain["root"] / "r.html"] and "<table" in written[0].read_text()


@pytest.fixture(scope="module")
def bn_dense(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bn")
    cfg = TrainRunConfig(model="tiny-paper", dataset="digits", model_kwargs={"bn": True},
                         train=TrainConfig(epochs=1, lr=0.05, batch_size=32), val_size=200, channels_last="off")
    return train_run(root / "dense", cfg)[0]


def _half_the_maps(model, groups, data, base=None):
    return select_masks(model, ["channel"], 0.5, groups=groups, base=base)


def _running_means(run: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_run(run).model.state_dict().items() if k.endswith("running_mean")}


def test_one_shot_pruning_re_estimates_batch_norm_statistics_under_the_masks(bn_dense, tmp_path):
    pruned, metrics = prune_run(bn_dense, tmp_path / "pruned", _half_the_maps, {}, bn_batches=2)
    assert metrics["bn_reestimated_images"] == 128
    dense_means, means = _running_means(bn_dense), _running_means(pruned)
    assert dense_means and any(not torch.equal(dense_means[k], means[k]) for k in means)
    kept, _ = prune_run(bn_dense, tmp_path / "kept", _half_the_maps, {}, bn_batches=0)
    assert all(torch.equal(dense_means[k], v) for k, v in _running_means(kept).items())
    assert "bn_reestimated_images" not in json.loads((kept / "metrics.json").read_text())
    compact, _ = compact_run(pruned, tmp_path / "compact")
    x = torch.randn(4, *load_run(pruned).arch["input_shape"])
    with torch.no_grad():
        assert torch.allclose(load_run(pruned).model(x), load_run(compact).model(x), atol=1e-4)


def test_a_network_without_batch_norm_is_pruned_as_trained(chain):
    assert "bn_reestimated_images" not in json.loads((chain["pruned"] / "metrics.json").read_text())


def test_retrain_run_on_a_subset_of_the_training_images(chain, tmp_path):
    cfg = TrainConfig(epochs=1, lr=0.01, batch_size=32, seed=3)
    out, _ = retrain_run(chain["pruned"], tmp_path / "subset", cfg, train_images=100)
    assert _config(out)["retrain"]["train_images"] == 100
