"""reproduce: the whole pipeline on digits, interrupted and resumed; the report it ends with."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

import structprune.reproduce as rp
from structprune.cli import main
from structprune.errors import StructpruneError
from structprune.report import collect
from structprune.report.render import fmt_mcr
from structprune.sparsity.granularity import Granularity
from structprune.sparsity.method import Method

STAGE_RUNS = ("train", "search", "retrain", "quantize", "compact")



def tiny_recipe() -> rp.Recipe:
    return replace(rp.recipe_for("digits", quick=True), ladder_methods=(Method.L1,), ladder_ratios=(0.5,),
                   scales=(Granularity.CHANNEL, Granularity.INTRA), bench_batches=(1,), bench_threads=1, bench_rounds=1)


def test_interrupted_reproduction_resumes_and_ends_in_a_report(tmp_path, monkeypatch):
    out = tmp_path / "repro"
    original = rp.quantize_stage

    def interrupted(ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr(rp, "quantize_stage", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rp.reproduce("digits", out, recipe=tiny_recipe(), progress=False)
    assert all((out / name / "metrics.json").is_file() for name in ("train", "search", "retrain"))
    assert not (out / "quantize").exists() and not (out / "report.html").exists()
    retrained = (out / "retrain" / "model.safetensors").stat().st_mtime_ns

    monkeypatch.setattr(rp, "quantize_stage", original)
    seen: list[tuple[str, str]] = []
    rp.reproduce("digits", out, recipe=tiny_recipe(), progress=False, on_stage=lambda n, w: seen.append((n, w)))
    what = dict(seen)
    assert [what[n] for n in ("train", "sensitivity", "ladder-l1-channel-50", "search", "retrain")] == ["skip"] * 5
    assert [what[n] for n in ("quantize", "compact", "export", "bench", "report")] == ["run"] * 5
    assert (out / "retrain" / "model.safetensors").stat().st_mtime_ns == retrained  # not redone

    for name in STAGE_RUNS:
        assert (out / name / "metrics.json").is_file()
    assert json.loads((out / "train" / "sensitivity.json").read_text())["complete"]
    assert json.loads((out / "export" / "export.json").read_text())["max_abs_diff"] <= 1e-4
    bench = json.loads((out / "bench.json").read_text())
    compact_name = str(out / "compact")
    assert {b["run"] for b in bench} == {str(out / "train"), compact_name, f"{compact_name}#masked-dense",
                                         f"{compact_name}#unstructured"}
    csr = next(b for b in bench if b["run"].endswith("#unstructured"))
    assert csr["reference"] == "unstructured" and csr["macs"] < train_m_macs(out)
    # the compact network really is smaller, and the search pruned something
    train_m, compact_m = (json.loads((out / n / "metrics.json").read_text()) for n in ("train", "compact"))
    assert compact_m["macs"] < train_m["macs"]

    page = (out / "report.html").read_text()
    for name in ("train", "search", "retrain", "quantize", "compact", "ladder-l1-intra-50"):
        assert f"<td>{name}</td>" in page
    assert f"<td>{fmt_mcr(train_m['test_mcr'])}</td>" in page
    assert page.count("data:image/png;base64,") >= 5
    md = (out / "report.md").read_text()
    assert "report_files/mcr_vs_ratio.png" in md and "report_files/sensitivity_train.png" in md
    records = {r.name: r for r in collect([out])}
    assert records["search"].searches and records["quantize"].storage

    seen.clear()
    rp.reproduce("digits", out, recipe=tiny_recipe(), progress=False, on_stage=lambda n, w: seen.append((n, w)))
    assert [n for n, w in seen if w == "run"] == ["report"]  # everything else already complete


def train_m_macs(out) -> int:
    return json.loads((out / "train" / "metrics.json").read_text())["macs"]


def test_unknown_dataset_and_missing_data_are_one_line_errors(tmp_path, capsys):
    assert main(["reproduce", "imagenet"]) == 2  # argparse's refusal: one line, exit status 2 too
    out = tmp_path / "r"
    assert main(["reproduce", "mnist", "--quick", "--data-dir", str(tmp_path / "none"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "structprune: error:" in err and "not found" in err and "Traceback" not in err
    assert not out.exists()


def test_a_trained_run_is_adopted_as_the_train_stage_and_a_mismatch_refused(tmp_path):
    trained = tmp_path / "dense"
    assert main(["train", "--model", "tiny-paper", "--data", "digits", "--epochs", "1", "--val-size", "200",
                 "--no-progress", "--out", str(trained)]) == 0
    recipe = replace(tiny_recipe(), ladder_methods=(), scales=(Granularity.CHANNEL,))
    out = tmp_path / "repro"
    seen: list[tuple[str, str]] = []
    rp.reproduce("digits", out, recipe=recipe, progress=False, trained=trained,
                 on_stage=lambda n, w: seen.append((n, w)))
    assert dict(seen)["train"] == "run" and dict(seen)["search"] == "run"  # adopting is the train stage
    assert (out / "train" / "model.safetensors").read_bytes() == (trained / "model.safetensors").read_bytes()
    assert json.loads((out / "reproduce.json").read_text())["train_from"] == str(trained)

    other = tmp_path / "other"
    with pytest.raises(StructpruneError, match="holds 'tiny-paper' trained on 'digits'"):
        rp.reproduce("digits", other, recipe=replace(recipe, model="tiny-vgg"), progress=False, trained=trained)
    assert not (other / "train").exists()

    # resumed without --from-run: the adopted run stays the source, nothing reruns but the report
    seen.clear()
    rp.reproduce("digits", out, recipe=recipe, progress=False, on_stage=lambda n, w: seen.append((n, w)))
    assert [n for n, w in seen if w == "run"] == ["report"]

    # another --from-run replaces the train stage and every stage that depends on it
    trained2 = tmp_path / "dense2"
    assert main(["train", "--model", "tiny-paper", "--data", "digits", "--epochs", "1", "--val-size", "200",
                 "--lr", "0.03", "--no-progress", "--out", str(trained2)]) == 0  # other weights
    searched = (out / "search" / "model.safetensors").read_bytes()
    seen.clear()
    rp.reproduce("digits", out, recipe=recipe, progress=False, trained=trained2,
                 on_stage=lambda n, w: seen.append((n, w)))
    assert all(w == "run" for n, w in seen), seen
    assert (out / "train" / "model.safetensors").read_bytes() == (trained2 / "model.safetensors").read_bytes()
    assert (out / "search" / "model.safetensors").read_bytes() != searched
    assert json.loads((out / "reproduce.json").read_text())["train_from"] == str(trained2)
    assert not list(out.glob(".*.structprune"))
