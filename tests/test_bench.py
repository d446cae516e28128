"""The interleaved network bench: records, spread, ratios against the first run, reference rows, CLI errors."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from structprune import models
from structprune.bench import Candidate, add_ratios, bench, reference_candidates, runtime_candidate
from structprune.cli import main
from structprune.compact.csr_conv import CsrConv2d
from structprune.metrics import size_metrics
from structprune.runfolder import load_run, save_run
from structprune.sparsity.selection import select_masks
from structprune.stages.prune import compact_run, prune_run

REPO = Path(__file__).parents[1]
FIELDS = {"run", "batch", "threads", "median_ms", "macs", "params", "test_mcr", "min_ms", "max_ms", "iqr_ms",
          "speedup_vs_first", "mac_ratio_vs_first"}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "structprune", *args], capture_output=True, text=True, cwd=REPO,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny-paper run (random weights, digits-shaped input), pruned at three scales, and compacted."""
    base = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    model = models.create("tiny-paper", in_channels=1, input_size=8)
    dense = save_run(base / "dense", model, None, {**size_metrics(model), "test_mcr": 0.5}, {"model": "tiny-paper"})

    def choose(model, groups, data, base=None):
        return select_masks(model, ["channel", "kernel", "intra"], [0.25, 0.25, 0.4], groups=groups, base=base)

    pruned, _ = prune_run(dense, base / "pruned", choose, {"stage": "prune"})
    compact, _ = compact_run(pruned, base / "compact")
    orphan = base / "orphan"  # a compact run whose source folder is gone
    shutil.copytree(compact, orphan)
    config = json.loads((orphan / "config.json").read_text())
    (orphan / "config.json").write_text(json.dumps({**config, "source_run": str(base / "gone")}))
    return {"dense": dense, "pruned": pruned, "compact": compact, "orphan": orphan}


def test_records_report_the_faster_layout_spread_and_ratios():
    a = models.create("tiny-paper", in_channels=1, input_size=8)
    b = models.create("plain", spec="4C3-MP2-10FC", in_channels=1, input_size=8)
    candidates = [Candidate("a", a, (1, 8, 8), {"macs": 10, "params": 1, "test_mcr": None}),
                  Candidate("b", b, (1, 8, 8), {"macs": 4, "params": 2, "test_mcr": 0.1})]
    records = bench(candidates, [1, 2], threads=1, rounds=3, sample_seconds=0.003, progress=False)
    assert [(r["run"], r["batch"]) for r in records] == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    for r in records:
        assert r.keys() >= FIELDS
        assert r["median_ms"] == min(r["median_ms_nchw"], r["median_ms_channels_last"]) > 0
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"] and r["threads"] == 1 and r["rounds"] == 3
        assert 0 <= r["iqr_ms"] <= r["max_ms"] - r["min_ms"]
        first = records[0] if r["batch"] == 1 else records[2]
        assert r["speedup_vs_first"] == pytest.approx(first["median_ms"] / r["median_ms"])
        assert r["mac_ratio_vs_first"] == pytest.approx(first["macs"] / r["macs"])
        assert r["efficiency_vs_first"] == pytest.approx(r["speedup_vs_first"] / r["mac_ratio_vs_first"])
    assert records[1]["mac_ratio_vs_first"] == 2.5 and records[0]["speedup_vs_first"] == 1.0
    assert a.features[0].weight.is_contiguous()  # the networks are handed back in NCHW layout


def test_ratios_leave_unknown_macs_unknown():
    records = add_ratios([{"run": "a", "batch": 1, "threads": 1, "median_ms": 2.0, "macs": None},
                          {"run": "b", "batch": 1, "threads": 1, "median_ms": 4.0, "macs": 5}])
    assert records[1]["speedup_vs_first"] == 0.5 and records[1]["mac_ratio_vs_first"] is None
    assert records[1]["efficiency_vs_first"] is None


def test_a_slow_network_is_bounded_per_round(monkeypatch):
    """Calibration never asks for more calls than fit the sample time, however fast the first timing was."""
    from structprune import bench as bench_mod

    model = models.create("tiny-paper", in_channels=1, input_size=8).eval()
    x = torch.randn(1, 1, 8, 8)
    with torch.inference_mode():
        number = bench_mod._calibrate(model, x, 1, 0.002)
    assert 1 <= number <= bench_mod.MAX_CALLS
    monkeypatch.setattr(bench_mod, "MAX_CALLS", 7)
    with torch.inference_mode():
        assert bench_mod._calibrate(model, x, 1, 10.0) == 7


@pytest.mark.parametrize("which", ["pruned", "compact"])
def test_reference_rows_are_the_masked_network_dense_and_as_csr(runs, which):
    run = load_run(runs[which])
    refs = reference_candidates(run, which, ["masked-dense", "unstructured"])
    assert [c.name for c in refs] == [f"{which}#masked-dense", f"{which}#unstructured"]
    assert [c.info["reference"] for c in refs] == ["masked-dense", "unstructured"]
    dense, csr = refs[0].model, refs[1].model
    assert any(isinstance(m, CsrConv2d) for m in csr.modules())
    assert not any(isinstance(m, torch.nn.Conv2d) for m in csr.modules())
    assert any(float((m.weight == 0).float().mean()) > 0.2 for m in dense.modules() if isinstance(m, torch.nn.Conv2d))
    x = torch.randn(3, *refs[0].input_shape)
    with torch.no_grad():
        want = run.model(x)
        for ref in (dense, csr):
            assert torch.allclose(ref(x), want, rtol=1e-4, atol=1e-5)
    assert refs[1].info["params"] == refs[0].info["nonzero_params"] < refs[0].info["params"]
    assert refs[1].info["macs"] < refs[0].info["macs"]  # CSR does the nonzeros' work only


def test_reference_rows_are_skipped_with_one_line_when_no_masks_are_found(runs, caplog):
    with caplog.at_level(logging.WARNING, logger="structprune.bench"):
        assert reference_candidates(load_run(runs["dense"]), "dense", ["masked-dense"]) == []
        assert reference_candidates(load_run(runs["orphan"]), "orphan", ["unstructured"]) == []
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[0].startswith("dense: no reference rows") and "orphan" in lines[1]


def test_cli_bench_writes_labelled_reference_rows_with_ratios(runs, tmp_path):
    out = tmp_path / "bench.json"
    done = _cli("bench", str(runs["dense"]), str(runs["compact"]), "--reference", "masked-dense,unstructured",
                "--runtime", "eager", "--batch", "2", "--threads", "1", "--rounds", "2", "--sample-seconds", "0.003",
                "--no-progress", "--json", str(out))
    assert done.returncode == 0, done.stderr
    records = json.loads(out.read_text())
    names = [r["run"] for r in records]
    assert names == [str(runs["dense"]), str(runs["compact"]), f"{runs['compact']}#masked-dense",
                     f"{runs['compact']}#unstructured"]
    assert [r.get("reference") for r in records] == [None, None, "masked-dense", "unstructured"]
    for r in records:
        assert r.keys() >= FIELDS
        assert r["speedup_vs_first"] == pytest.approx(records[0]["median_ms"] / r["median_ms"])
    assert records[1]["mac_ratio_vs_first"] > 1  # the compact network does fewer MACs than dense
    assert "speedup" in done.stdout and "efficiency" in done.stdout and f"{runs['compact']}#unstructured" in done.stdout


@pytest.mark.parametrize("runtime", ["compile", "onnxruntime"])
def test_cli_bench_runtimes_time_networks_that_compute_the_same(runs, tmp_path, runtime):
    model = load_run(runs["compact"]).model.eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        converted = runtime_candidate(Candidate("c", model, (1, 8, 8), {}), runtime, threads=1).model
        assert torch.allclose(converted(x), model(x), atol=1e-5)
    out = tmp_path / "bench.json"
    extra = ["--onnx-stop-spinning"] if runtime == "onnxruntime" else []
    done = _cli("bench", str(runs["compact"]), "--reference", "unstructured", "--runtime", runtime,
                "--batch", "1", "--threads", "1", "--rounds", "1", "--sample-seconds", "0.003", "--no-progress",
                "--json", str(out), *extra)
    assert done.returncode == 0, done.stderr
    records = json.loads(out.read_text())
    assert [r.get("runtime") for r in records] == [runtime, None]  # CSR rows stay eager
    assert records[0]["memory_format"] == ("channels_last" if runtime == "compile" else "nchw")
    assert records[0].get("onnx_stop_spinning") is (True if runtime == "onnxruntime" else None)
    assert all(r["settle_s"] > 0 for r in records)


@pytest.mark.parametrize("args, runtime", [([], "onnxruntime"), (["--runtime", "eager"], "eager")])
def test_cli_bench_times_in_onnx_runtime_unless_told(runs, monkeypatch, capsys, args, runtime):
    import structprune.cli.bench as cli_bench

    seen = []

    def fake_bench_runs(paths, cfg, **kwargs):
        seen.append(cfg)
        return [{"run": str(paths[0]), "batch": 1, "median_ms": 1.0, "iqr_ms": 0.0, "min_ms": 1.0, "max_ms": 1.0,
                 "speedup_vs_first": 1.0, "mac_ratio_vs_first": 1.0, "efficiency_vs_first": 1.0,
                 "memory_format": "nchw", "macs": 1}]

    monkeypatch.setattr(cli_bench, "bench_runs", fake_bench_runs)
    assert main(["bench", str(runs["dense"]), *args, "--batch", "1", "--no-progress"]) == 0
    assert [cfg.runtime for cfg in seen] == [runtime]


@pytest.mark.parametrize("stop_spinning", [False, True])
def test_onnx_runtime_sessions_spin_by_default_and_stop_when_asked(runs, stop_spinning):
    pytest.importorskip("onnxruntime")
    model = load_run(runs["compact"]).model.eval()
    candidate = runtime_candidate(Candidate("c", model, (1, 8, 8), {}), "onnxruntime", threads=1,
                                  stop_spinning=stop_spinning)
    options = candidate.model._session[0].get_session_options()
    if stop_spinning:
        assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    else:  # ONNX Runtime's default: the entry is not set at all
        with pytest.raises(RuntimeError, match="does not have configuration"):
            options.get_session_config_entry("session.force_spinning_stop")
    assert candidate.info["onnx_stop_spinning"] is stop_spinning


def test_cli_bench_per_layer_pairs_same_named_layers_with_their_mac_ratios(runs, tmp_path):
    out = tmp_path / "layers.json"
    done = _cli("bench", str(runs["dense"]), str(runs["compact"]), "--per-layer", "--batch", "1,2", "--threads", "1",
                "--rounds", "1", "--sample-seconds", "0.003", "--no-progress", "--json", str(out))
    assert done.returncode == 0, done.stderr
    records = json.loads(out.read_text())
    dense = load_run(runs["dense"]).model
    convs = [n for n, m in dense.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert [r["layer"] for r in records if r["type"] == "Conv2d" and r["batch"] == 1] == convs
    for r in records:
        assert r["reference_ms"] > 0 and r["other_ms"] > 0
        assert r["latency_ratio"] == pytest.approx(r["reference_ms"] / r["other_ms"])
        if r["type"] == "Conv2d":  # pruned at three scales: fewer MACs in every conv
            assert r["mac_ratio"] > 1 and r["efficiency"] == pytest.approx(r["latency_ratio"] / r["mac_ratio"])
            assert r["other_kernels"] != "-" or r["other_type"] == "KernelSparseConv2d"
    assert "efficiency" in done.stdout


@pytest.mark.parametrize("args, words", [
    (["--reference", "masked-dense,bogus"], "unknown name 'bogus'"),
    (["--reference", ""], "not a run folder"),
    (["--per-layer"], "compares two runs"),
])
def test_cli_bad_input_is_one_line_and_exit_2(runs, tmp_path, args, words):
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    target = str(runs["pruned"]) if "bogus" in args[-1] else str(not_a_run)
    done = _cli("bench", target, *args, "--batch", "1", "--rounds", "1", "--no-progress")
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and words in done.stderr and "Traceback" not in done.stderr
