"""The report's axes read at a glance: plain percentage and log-axis tick labels, bar labels inside the axes."""

from __future__ import annotations

import re
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from structprune.report import plots
from structprune.report.collect import LayerStorage, RunRecord


def tick_labels(fig: Figure, axis) -> list[str]:
    FigureCanvasAgg(fig).draw()
    ticks = axis.get_major_ticks() + axis.get_minor_ticks()
    lo, hi = sorted(axis.get_view_interval())
    return [t.label1.get_text() for t in ticks if t.label1.get_text() and lo <= t.get_loc() <= hi]


def test_percent_axis_over_a_narrow_range_has_plain_labels():
    fig = Figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([70, 80, 90], [1.1, 1.35, 1.6])
    ax.yaxis.set_major_formatter(plots._PercentFormatter())
    labels = tick_labels(fig, ax.yaxis)
    assert len(labels) >= 3 and all(re.fullmatch(r"1\.\d+%", t) for t in labels), labels


def test_log_axis_labels_are_plain_numbers():
    for low, high in ((4.0, 7.0), (0.5, 2.0), (12.0, 900.0)):
        fig = Figure()
        ax = fig.add_subplot(1, 1, 1)
        ax.plot([low, high], [1, 2])
        ax.set_xscale("log")
        plots._plain_log_ticks(ax.xaxis)
        labels = tick_labels(fig, ax.xaxis)
        assert len(labels) >= 2 and all(re.fullmatch(r"[\d.]+", t) for t in labels), labels


def test_storage_bar_labels_stay_inside_the_axes(monkeypatch):
    figures: list[Figure] = []
    monkeypatch.setattr(plots, "_png", lambda fig: figures.append(fig) or b"png")
    layers = [LayerStorage("conv", 8192 * 3, 200, 4), LayerStorage("fc", 8192 * 34, 0, 4)]  # the tallest bar has no index
    record = RunRecord(path=Path("q"), name="quantized", metrics={"dense_weight_bytes": 700 * 1024}, config={},
                       storage=layers)
    assert plots.storage_breakdown([record]) == b"png"
    fig = figures[0]
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        box = ax.get_window_extent(renderer)
        labels = [t for t in ax.texts if t.get_text()]
        assert labels
        for text in labels:  # every bar label lies wholly inside its axes (not over the title, not cut off)
            extent = text.get_window_extent(renderer)
            assert box.y0 <= extent.y0 and extent.y1 <= box.y1, text.get_text()
    tick_text = tick_labels(fig, fig.axes[0].yaxis)
    assert tick_text and all(re.fullmatch(r"[\d.]+", t) for t in tick_text), tick_text
