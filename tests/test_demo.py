"""The demo (structprune.demo.run_demo, what `structprune demo` runs): every stage, its report and bench records."""

from __future__ import annotations

import json
from pathlib import Path

from structprune.demo import run_demo
from structprune.runfolder import load_run


def test_demo_writes_a_report(tmp_path):
    out = tmp_path / "demo"
    run_demo(out, epochs=2)
    report = (out / "report.md").read_text()
    assert "## Dense baseline" in report and "test MCR" in report
    assert load_run(out / "dense").arch["kwargs"]["input_size"] == 8
    bench = json.loads((out / "bench.json").read_text())  # records name the runs where they end up
    assert {Path(r["run"]).parent for r in bench} == {out} and not any(".structprune" in r["run"] for r in bench)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
