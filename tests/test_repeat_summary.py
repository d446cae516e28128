"""benchmarks/repeat_summary.py: independent runs of the network check, side by side."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("repeat_summary", Path(__file__).parents[1] / "benchmarks" / "repeat_summary.py")
repeat_summary = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(repeat_summary)


def _run(path: Path, eff64: float, eff1: float, extra: bool = False) -> Path:
    summary = {"net": {"mac_ratio": 5.0, "batch64": {"dense_ms": 100.0, "latency_over_mac_ratio": eff64},
                       "batch1": {"dense_ms": 2.0, "latency_over_mac_ratio": eff1}}}
    if extra:
        summary["other"] = {"mac_ratio": 2.0, "batch64": {"dense_ms": 100.0, "latency_over_mac_ratio": 0.5}}
    path.write_text(json.dumps({"summary": summary}))
    return path


def test_each_configuration_and_batch_gets_every_run_and_the_count_meeting_its_target(tmp_path):
    files = [_run(tmp_path / "a.json", 0.88, 0.80), _run(tmp_path / "b.json", 0.91, 0.70, extra=True),
             _run(tmp_path / "c.json", 0.90, 0.76)]
    rows = {(r["configuration"], r["batch"]): r for r in repeat_summary.summarise(repeat_summary.load(files))}
    net64 = rows[("net", 64)]
    assert net64["efficiency"] == [0.88, 0.91, 0.90] and net64["median"] == 0.90
    assert net64["runs_meeting"] == 2 and net64["target"] == 0.9  # 0.90 counts, 0.88 does not
    assert rows[("net", 1)]["runs_meeting"] == 2
    assert rows[("other", 64)]["efficiency"] == [0.5]  # present in one run only


def test_a_file_that_is_not_a_bench_network_result_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(SystemExit, match=r"not a bench_network\.py JSON file"):
        repeat_summary.load([bad])
    with pytest.raises(SystemExit, match=r"not a bench_network\.py JSON file"):
        repeat_summary.load([tmp_path / "missing.json"])
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"summary": {"net": {"mac_ratio": 5.0, "batch64": {"dense_ms": 100.0}}}}))
    with pytest.raises(SystemExit, match=r"not a bench_network\.py JSON file"):
        repeat_summary.load([broken])
