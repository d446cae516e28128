"""The report's figures as PNG bytes (matplotlib's Agg canvas; no pyplot, no display needed).

Each function returns None when the records hold nothing to draw.
"""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation, ScalarFormatter

from structprune.report.collect import BenchRecord, RunRecord, pruning_ratio
from structprune.sparsity.method import Method


@dataclass
class Plot:
    key: str  # file stem, e.g. "mcr_vs_ratio"
    title: str
    png: bytes


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _figure(width: float = 6.4, height: float = 4.0) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot(1, 1, 1)


_SCALE_COLORS = {"channel": "tab:blue", "kernel": "tab:orange", "intra": "tab:green"}
_METHOD_STYLES = {Method.L1: "-", Method.RANDOM: "--"}
_STAGE_MARKERS = {"search": "*", "retrain": "P", "quantize": "X", "compact": "D"}


def _series_style(granularity: str, method: str, stage: str) -> dict[str, object]:
    """Colour by scale, line style by method; the pipeline's stages as markers in the scale's colour (compact runs,
    which score what their source scores, as open diamonds around it, so both stay visible)."""
    color = _SCALE_COLORS.get(granularity, "tab:purple")
    if stage in _STAGE_MARKERS:
        style: dict[str, object] = {"color": color, "marker": _STAGE_MARKERS[stage], "markersize": 9, "linestyle": "none"}
        if stage == "compact":
            style.update(markersize=14, markerfacecolor="none", markeredgewidth=1.5)
        return style
    return {"color": color, "marker": "o", "linestyle": _METHOD_STYLES.get(method, "-.")}


def mcr_vs_ratio(records: list[RunRecord]) -> bytes | None:
    """Test MCR (%, linear axis) against the fraction of MACs removed, one line per (scale, method, stage)."""
    series: dict[tuple[str, str, str], list[tuple[float, float]]] = defaultdict(list)
    dense: list[float] = []
    for r in records:
        mcr = r.number("test_mcr")
        if mcr is None:
            continue
        if r.is_reference:
            dense.append(mcr)
            continue
        ratio = pruning_ratio(records, r)
        if ratio is None:
            continue
        stage = "" if r.stage == "prune" else r.stage
        series[(r.granularity, r.method, stage)].append((ratio, mcr))
    if not series:
        return None
    fig, ax = _figure(7.6, 4.2)
    for (granularity, method, stage), points in sorted(series.items()):
        points.sort()
        label = " / ".join(x for x in (granularity, method) if x)
        label = f"{label} ({stage})" if label and stage else label or stage
        ax.plot([100 * x for x, _ in points], [100 * y for _, y in points], label=label,
                **_series_style(granularity, method, stage))
    for i, mcr in enumerate(sorted(set(dense))):
        ax.axhline(100 * mcr, color="grey", linestyle=":", linewidth=1, label="dense" if i == 0 else None)
    ax.yaxis.set_major_formatter(_PercentFormatter())  # plain ticks: "1.2%", never "1.2×10⁰"
    ax.xaxis.set_major_formatter(_PercentFormatter())
    ax.set_xlabel("MACs removed")
    ax.set_ylabel("test MCR")
    ax.set_title("Misclassification rate against pruning ratio")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _png(fig)


def kept_per_layer(records: list[RunRecord]) -> bytes | None:
    """Grouped bars: fraction of weights kept in each conv layer, one bar per pruned run."""
    runs = [r for r in records if r.kept_fraction]
    chosen = [r for r in runs if r.stage != "ladder"] or runs  # the one-shot ladders would crowd it
    runs = []
    for r in chosen:  # retrained / quantized copies keep the same masks: draw them once
        if not r.masks_digest or all(r.masks_digest != other.masks_digest for other in runs):
            runs.append(r)
    if not runs:
        return None
    layers: list[str] = []
    for r in runs:
        layers += [name for name in r.kept_fraction if name not in layers]
    fig, ax = _figure(max(6.4, 1.1 * len(layers) + 2), 4.0)
    width = 0.8 / len(runs)
    for i, r in enumerate(runs):
        xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(layers))]
        ax.bar(xs, [100 * r.kept_fraction.get(name, 1.0) for name in layers], width=width, label=r.name)
    ax.set_xticks(range(len(layers)), layers, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("weights kept (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Kept fraction per layer")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def search_history(records: list[RunRecord]) -> bytes | None:
    """Best and mean MCR per generation of every search, steps one after another on the x axis."""
    runs = [r for r in records if r.searches]
    if not runs:
        return None
    fig, ax = _figure(8.0, 4.2)
    for r in runs:
        offset, color = 0, None
        for i, step in enumerate(r.searches):  # one segment per search step (layer, scale, ratio)
            xs = [offset + g for g in range(len(step.generations))]
            line = ax.plot(xs, [100 * v for v in step.best_mcr], color=color,
                           label=f"{r.name}: best" if i == 0 else None)[0]
            color = line.get_color()
            ax.plot(xs, [100 * v for v in step.mean_mcr], linestyle=":", color=color,
                    label=f"{r.name}: mean" if i == 0 else None)
            if len(r.searches) <= 40 and len(runs) == 1:
                ax.axvline(offset - 0.5, color="grey", linewidth=0.5, alpha=0.5)
                ax.annotate(step.label, (offset - 0.3, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                            fontsize=6, va="top", color="grey")
            offset += len(step.generations) + 1
    ax.set_xlabel("generation, search steps (layer, scale, ratio) one after another")
    ax.set_ylabel("score: validation MCR (%)")
    ax.set_title("Search history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated in (latency, MCR), both lower-is-better, sorted by latency."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points):
        if not front or y < front[-1][1]:
            front.append((x, y))
    return front


def latency_vs_mcr(records: list[RunRecord]) -> bytes | None:
    """Median latency against test MCR, one panel per (batch, threads), with the Pareto front."""
    rows: dict[tuple[int, int], list[tuple[BenchRecord, RunRecord]]] = defaultdict(list)
    for r in records:
        for b in r.bench:
            mcr = b.test_mcr if b.test_mcr is not None else r.number("test_mcr")
            if mcr is not None:
                rows[(b.batch, b.threads)].append((b, r))
    if not rows:
        return None
    keys = sorted(rows)
    fig = Figure(figsize=(5.2 * len(keys), 4.0), layout="constrained")
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        points = []
        for b, r in rows[key]:
            mcr = 100 * (b.test_mcr if b.test_mcr is not None else r.number("test_mcr"))
            points.append((b.median_ms, mcr))
            ax.scatter([b.median_ms], [mcr])
            name = f"{r.name} ({b.label})" if b.label else r.name
            ax.annotate(name, (b.median_ms, mcr), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = pareto_front(points)
        ax.step([x for x, _ in front], [y for _, y in front], where="post", color="black", linewidth=1,
                label="Pareto front")
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis)
        ax.yaxis.set_major_formatter(_PercentFormatter())
        ax.margins(x=0.25, y=0.12)  # room for the run names beside the right-most and top points
        ax.set_xlabel("median latency (ms, log scale)")
        ax.set_ylabel("test MCR")
        ax.set_title(f"batch {key[0]}, {key[1]} thread(s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _png(fig)


class _PlainLogFormatter(LogFormatterSciNotation):
    """Log-axis labels where matplotlib would put them, written as plain numbers ("0.5", "20"), not "2×10¹"."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


class _PercentFormatter(ScalarFormatter):
    """Plain tick labels of values already in percent, as few decimals as the ticks need: "1.2%", "5%"."""

    def __init__(self) -> None:
        super().__init__(useOffset=False, useMathText=False)
        self.set_scientific(False)

    def __call__(self, x: float, pos: int | None = None) -> str:
        text = super().__call__(x, pos)
        return f"{text}%" if text else text


def _plain_log_ticks(axis: object) -> None:
    """Plain labels on a log axis: the decades, and some ticks between them on ranges up to 3 decades."""
    axis.set_major_formatter(_PlainLogFormatter())
    axis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(3, 0.4)))


def storage_breakdown(records: list[RunRecord]) -> bytes | None:
    """Left: each run's stored bytes (kept weights at their word lengths + sparsity index) against its dense
    32-bit original. Right: the last such run, layer by layer."""
    runs = [r for r in records if r.storage]
    if not runs:
        return None
    fig = Figure(figsize=(11.0, 4.0))
    ax, per_layer = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    names = [r.name for r in runs]
    weights = [sum(s.weight_bits for s in r.storage) / 8192 for r in runs]
    index = [sum(s.index_bits for s in r.storage) / 8192 for r in runs]
    dense = [(r.number("dense_weight_bytes") or 0) / 1024 for r in runs]
    xs = range(len(runs))
    ax.bar([x - 0.2 for x in xs], dense, width=0.4, color="lightgrey", label="dense, 32-bit")
    ax.bar([x + 0.2 for x in xs], weights, width=0.4, label="kept weights")
    ax.bar([x + 0.2 for x in xs], index, width=0.4, bottom=weights, label="sparsity index")
    for x, d, w, i in zip(xs, dense, weights, index, strict=True):
        if d and w + i:
            ax.annotate(f"{d / (w + i):.1f}× smaller", (x + 0.2, w + i), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs), names, fontsize=8)
    ax.set_yscale("log")
    _plain_log_ticks(ax.yaxis)
    totals = [w + i for w, i in zip(weights, index, strict=True) if w + i] + [d for d in dense if d] or [1.0]
    ax.set_ylim(min(totals) / 4, max(totals) * 2)  # log bars need a floor; the top leaves room for the labels
    ax.set_ylabel("storage (KiB, log scale)")
    ax.set_title("Storage against the dense original")
    ax.legend(fontsize=7)
    last = runs[-1]
    layers = [s.name for s in last.storage]
    lw = [s.weight_bits / 8192 for s in last.storage]
    li = [s.index_bits / 8192 for s in last.storage]
    per_layer.bar(layers, lw, label="kept weights")
    per_layer.bar(layers, li, bottom=lw, label="sparsity index")
    for x, s in enumerate(last.storage):
        if s.word_length:
            per_layer.annotate(f"{s.word_length} b", (x, lw[x] + li[x]), ha="center", va="bottom", fontsize=7)
    per_layer.set_ylim(0, 1.15 * max([w + i for w, i in zip(lw, li, strict=True)] + [1e-3]))  # room for the labels
    per_layer.set_ylabel("storage (KiB)")
    per_layer.set_title(f"Per layer: {last.name} (word length on top)")
    per_layer.tick_params(axis="x", labelrotation=30, labelsize=7)
    per_layer.legend(fontsize=7)
    for a in (ax, per_layer):
        a.grid(axis="y", alpha=0.3)
    return _png(fig)


def sensitivity_sweep(record: RunRecord) -> bytes | None:
    """MCR as each layer alone is pruned harder."""
    s = record.sensitivity
    if s is None:
        return None
    fig, ax = _figure()
    scale = 100 if s.axis == "ratio" else 1
    for name, mcrs in s.layers.items():
        ax.plot([scale * r for r in s.ratios], [100 * m for m in mcrs], marker="o", markersize=3, label=name)
    if s.axis == "ratio":
        ax.axhline(100 * s.baseline_mcr, color="grey", linestyle="--", linewidth=1, label="unpruned")
        ax.set_xlabel(f"fraction of the layer pruned, {s.granularity} scale, {s.method} (%)")
        ax.set_title(f"Per-layer pruning sensitivity: {record.name}")
    else:
        ax.axhline(100 * s.baseline_mcr, color="grey", linestyle="--", linewidth=1, label="float weights")
        ax.set_xlabel("word length of the layer's weights (bits)")
        ax.set_title(f"Per-layer word-length sensitivity: {record.name}")
    ax.set_ylabel(f"{s.split} MCR (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def all_plots(records: list[RunRecord]) -> list[Plot]:
    """Every figure the records support, in report order."""
    out: list[Plot] = []
    for key, title, fn in (
        ("mcr_vs_ratio", "MCR against pruning ratio", mcr_vs_ratio),
        ("kept_per_layer", "Kept fraction per layer", kept_per_layer),
        ("search_history", "Search history", search_history),
        ("latency_vs_mcr", "Latency against MCR", latency_vs_mcr),
        ("storage", "Storage breakdown", storage_breakdown),
    ):
        png = fn(records)
        if png is not None:
            out.append(Plot(key, title, png))
    for r in records:
        png = sensitivity_sweep(r)
        if png is not None:
            out.append(Plot(f"sensitivity_{r.name}", f"Sensitivity: {r.name}", png))
    return out
