"""Report: records read from run folders, every number in the report traced back to metrics.json."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
import torch

from structprune.cli import main
from structprune.data import load_dataset
from structprune.errors import StructpruneError
from structprune.metrics import size_metrics
from structprune.models import create
from structprune.report import collect
from structprune.report.collect import pruning_ratio, read_bench
from structprune.report.plots import all_plots, pareto_front
from structprune.report.render import fmt_int, fmt_mcr, write_report
from structprune.runfolder import save_run
from structprune.sparsity.masks import LayerMask, NetworkMask
from structprune.train import TrainConfig, evaluate, train


def _metrics(model, data) -> dict:
    return {"val_mcr": evaluate(model, data.val).mcr, "test_mcr": evaluate(model, data.test).mcr, **size_metrics(model)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A dense run on digits, a channel-masked copy (masks.json, search.json), a bench file."""
    root = tmp_path_factory.mktemp("runs")
    data = load_dataset("digits")
    model = create("tiny-paper", num_classes=10, in_channels=1, input_size=8)
    train(model, data, TrainConfig(epochs=1, seed=0))
    save_run(root / "dense", model, None, _metrics(model, data), {"model": "tiny-paper", "stage": "train"})
    conv = model.features[0]
    mask = NetworkMask({"features.0": LayerMask(tuple(conv.weight.shape), keep_out=torch.arange(8) < 5)})
    with torch.no_grad():
        conv.weight.mul_(mask.layers["features.0"].weight_mask())
        conv.bias.mul_(mask.layers["features.0"].keep_out.float())
    metrics = _metrics(model, data)
    metrics["macs"] = int(metrics["macs"] * 0.7)  # as a compacted run would report
    history = [{"generation": g, "best_mcr": 0.1 - 0.01 * g, "mean_mcr": 0.2 - 0.01 * g} for g in range(4)]
    save_run(root / "pruned", model, None, metrics,
             {"model": "tiny-paper", "stage": "prune", "granularity": ["channel"], "method": "pf", "source": str(root / "dense")},
             extra_json={"masks.json": mask.to_json(), "search.json": {"history": history}})
    bench = [{"run": str(root / name), "batch": 1, "threads": 1, "median_ms": ms, "spread_ms": 0.01,
              "macs": m, "params": 1, "test_mcr": t}
             for name, ms, m, t in (("dense", 0.5, 100, 0.1), ("pruned", 0.3, 70, 0.12))]
    (root / "bench.json").write_text(json.dumps(bench))
    return root


def test_collect_reads_every_file(runs):
    records = collect([runs], [runs / "bench.json"])
    by_name = {r.name: r for r in records}
    assert set(by_name) == {"dense", "pruned"}
    pruned = by_name["pruned"]
    assert pruned.kept_fraction == {"features.0": pytest.approx(5 / 8)}
    assert pruned.searches[0].best_mcr == [0.1 - 0.01 * g for g in range(4)]
    assert pytest.approx(pruning_ratio(records, pruned), abs=1e-3) == 0.3
    assert [b.median_ms for b in by_name["dense"].bench] == [0.5]


def test_every_number_in_report_equals_metrics_json(runs, tmp_path):
    records = collect([runs], [runs / "bench.json"])
    out = tmp_path / "report.html"
    write_report(records, out)
    page = out.read_text()
    data = json.loads(re.search(r"<script type='application/json' id='report-data'>(.*?)</script>", page).group(1))
    table = re.search(r"<table><thead><tr>(.*?)</tr></thead><tbody>(.*?)</tbody></table>", page)
    headers = re.findall(r"<th>(.*?)</th>", table.group(1))
    rows = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", table.group(2))]
    assert len(rows) == 2
    checked = 0
    for row, exact in zip(rows, data["runs"], strict=True):
        metrics = json.loads((runs / row[0] / "metrics.json").read_text())
        cells = dict(zip(headers, row, strict=True))
        for key, title, fmt in (("val_mcr", "val MCR", fmt_mcr), ("test_mcr", "test MCR", fmt_mcr),
                                ("params", "params", fmt_int), ("macs", "MACs", fmt_int),
                                ("weight_bytes", "weight bytes", fmt_int)):
            assert exact[key] == metrics[key]  # the embedded data: exact
            assert cells[title] == fmt(metrics[key])  # the table: the same number, formatted
            shown = float(cells[title].rstrip("%").replace(",", ""))
            scale = 100 if title.endswith("MCR") else 1
            assert shown == pytest.approx(scale * metrics[key], abs=0.005)
            checked += 1
    assert checked == 10
    dense, pruned = (json.loads((runs / n / "metrics.json").read_text()) for n in ("dense", "pruned"))
    assert f"{dense['macs'] / pruned['macs']:.2f}×" in rows[1]
    assert f"{100 * (pruned['test_mcr'] - dense['test_mcr']):+.2f} pt" in rows[1]


def test_html_is_self_contained_with_valid_pngs(runs, tmp_path):
    out = tmp_path / "r.html"
    write_report(collect([runs], [runs / "bench.json"]), out)
    page = out.read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) >= 4  # mcr vs ratio, kept per layer, search history, latency vs mcr
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "http://" not in page and "https://" not in page and "<link" not in page


def test_markdown_writes_png_files(runs, tmp_path):
    out = tmp_path / "r.md"
    written = write_report(collect([runs]), out)
    text = out.read_text()
    for png in written[1:]:
        assert png.read_bytes().startswith(b"\x89PNG")
        assert f"r_files/{png.name}" in text


def test_plots_skip_what_is_missing(runs):
    records = collect([runs / "dense"])
    assert [p.key for p in all_plots(records)] == []


def test_pareto_front():
    pts = [(1.0, 5.0), (2.0, 3.0), (3.0, 4.0), (4.0, 1.0), (0.5, 9.0)]
    assert pareto_front(pts) == [(0.5, 9.0), (1.0, 5.0), (2.0, 3.0), (4.0, 1.0)]


def test_bad_bench_file_is_one_line_error(tmp_path):
    with pytest.raises(StructpruneError, match="malformed bench record"):
        read_bench([{"run": "x"}], tmp_path / "b.json")


def test_cli_report_and_errors(runs, tmp_path, capsys):
    out = tmp_path / "cli.html"
    assert main(["report", str(runs), "--out", str(out), "--bench", str(runs / "bench.json")]) == 0
    assert out.exists()
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "x.html")]) == 2
    assert main(["report", str(runs), "--out", str(tmp_path / "x.pdf")]) == 2
    err = capsys.readouterr().err
    assert err.count("structprune: error:") == 2 and "Traceback" not in err
    assert not (tmp_path / "x.html").exists()


def test_demo_stage_appends_table_and_figures(runs, tmp_path):
    import shutil
    from types import SimpleNamespace

    from structprune.demo.stages import stage_report

    work = tmp_path / "demo"
    shutil.copytree(runs, work)
    ctx = SimpleNamespace(work=work, model=None, data=None, report=[], results={})
    stage_report(ctx)
    section = ctx.report[-1]
    dense = json.loads((work / "dense" / "metrics.json").read_text())
    assert f"| dense | tiny-paper | train |  |  | {fmt_mcr(dense['val_mcr'])} | {fmt_mcr(dense['test_mcr'])} |" in section
    figures = re.findall(r"\]\((figures/[a-z_]+\.png)\)", section)
    assert "figures/mcr_vs_ratio.png" in figures
    assert all((work / f).read_bytes().startswith(b"\x89PNG") for f in figures)
    assert (work / "report.html").is_file()


def test_demo_ends_with_before_after_table_and_plots(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "2", "--no-progress"]) == 0
    report = (out / "report.md").read_text()
    section = report[report.index("## Report: before and after"):]
    runs = ("dense", "pruned", "retrained", "compact", "search", "search-compact", "quantized")
    metrics = {n: json.loads((out / n / "metrics.json").read_text()) for n in runs}
    for name, m in metrics.items():
        row = next(line for line in section.splitlines() if line.startswith(f"| {name} |"))
        if "params" in m:
            assert f"| {fmt_mcr(m['test_mcr'])} | {fmt_int(m['params'])} | {fmt_int(m['macs'])} |" in row
        else:  # a search run records the conv MACs removed, not whole-network sizes
            assert f"| {fmt_mcr(m['test_mcr'])} |" in row
    assert metrics["compact"]["macs"] < metrics["dense"]["macs"]
    assert metrics["search-compact"]["macs"] < metrics["dense"]["macs"]
    assert "| channel,intra | pf |" in next(line for line in section.splitlines() if line.startswith("| search |"))
    assert metrics["quantized"]["weight_bytes"] < metrics["search-compact"]["weight_bytes"]
    assert (out / "quantized" / "model.packed.safetensors").stat().st_size > 0
    export = json.loads((out / "export" / "export.json").read_text())
    assert (out / "export" / "model.onnx").stat().st_size == export["onnx_bytes"] > 0
    bench = report[report.index("## Bench"):report.index("## Report: before and after")]
    for run, batch in [(r, b) for r in ("dense", "search-compact") for b in (1, 64)]:
        assert re.search(rf"^\| {run} \| as run \| {batch} \| 1 \|", bench, re.M), (run, batch)
    assert {"dense", "search-compact"} <= {Path(r["run"]).name for r in json.loads((out / "bench.json").read_text())}
    figures = re.findall(r"\]\((figures/[a-z_]+\.png)\)", section)
    assert {"figures/mcr_vs_ratio.png", "figures/sensitivity_dense.png"} <= set(figures)
    assert all((out / f).read_bytes().startswith(b"\x89PNG") for f in figures)
    assert (out / "report.html").is_file()
