"""The interleaved network bench: one record per (network, batch), best layout reported."""

from __future__ import annotations

from prune_nets import single_thread  # noqa: F401

from structprune import models
from structprune.bench import Candidate, bench


def test_records_report_the_faster_layout_of_each_network():
    a = models.create("tiny-paper", in_channels=1, input_size=8)
    b = models.create("plain", spec="4C3-MP2-10FC", in_channels=1, input_size=8)
    candidates = [Candidate("a", a, (1, 8, 8), {"macs": 1}), Candidate("b", b, (1, 8, 8), {"macs": 2})]
    records = bench(candidates, [1, 2], threads=1, rounds=2, sample_seconds=0.005, progress=False)
    assert [(r["run"], r["batch"]) for r in records] == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    for r in records:
        assert r["median_ms"] == min(r["median_ms_nchw"], r["median_ms_channels_last"]) > 0
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"] and r["threads"] == 1 and r["rounds"] == 2
    assert a.features[0].weight.is_contiguous()  # the networks are handed back in NCHW layout
