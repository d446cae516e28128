"""The report as a self-contained HTML page (images inlined as base64) or as Markdown with PNG files.

Numbers are formatted in one place (`fmt_*`) so a test can check each cell against metrics.json;
the HTML page also embeds the exact numbers it shows as JSON (`<script id="report-data">`).
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from structprune.jsonio import write_bytes_atomic
from structprune.report.collect import TABLE_FIELDS, RunRecord, effective_macs, pruning_ratio, reference_run
from structprune.report.plots import Plot, all_plots


def fmt_mcr(value: float | None) -> str:
    """A fraction as a percentage with two decimals: 0.0072 -> '0.72%'."""
    return "" if value is None else f"{100 * value:.2f}%"


def fmt_int(value: float | None) -> str:
    return "" if value is None else f"{int(value):,}"


def fmt_ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}×"


def fmt_ms(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


FORMATTERS = {"val_mcr": fmt_mcr, "test_mcr": fmt_mcr, "params": fmt_int, "macs": fmt_int, "weight_bytes": fmt_int}
FIELD_TITLES = {"val_mcr": "val MCR", "test_mcr": "test MCR", "params": "params", "macs": "MACs",
                "weight_bytes": "weight bytes"}


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Section:
    title: str
    text: str = ""
    table: Table | None = None
    plots: list[Plot] = field(default_factory=list)


def summary_table(records: list[RunRecord]) -> Table:
    """One row per run: metrics.json fields, then MACs removed and MCR change against its dense reference."""
    headers = ["run", "model", "stage", "granularity", "method"] + [FIELD_TITLES[f] for f in TABLE_FIELDS]
    headers += ["MACs removed", "MAC ratio", "size ratio", "Δ test MCR", "removed maps never active"]
    rows = []
    for r in records:
        row = [r.name, r.model, r.stage, r.granularity, r.method]
        row += [FORMATTERS[f](r.number(f)) for f in TABLE_FIELDS]
        ref = reference_run(records, r)
        ratio = pruning_ratio(records, r) if ref is not r else None
        mac_x = _div(ref.number("macs"), effective_macs(r, ref, records)) if ref and ref is not r else None
        size_x = _div(ref.number("weight_bytes"), r.number("weight_bytes")) if ref and ref is not r else None
        delta = None
        if ref and ref is not r and r.number("test_mcr") is not None and ref.number("test_mcr") is not None:
            delta = r.number("test_mcr") - ref.number("test_mcr")
        row += [fmt_mcr(ratio), fmt_ratio(mac_x), fmt_ratio(size_x),
                "" if delta is None else f"{100 * delta:+.2f} pt", dead_maps_removed(r.metrics)]
        rows.append(row)
    return Table(headers, rows)


def dead_maps_removed(metrics: dict) -> str:
    """'k of n': how many of the maps a pruned run removed never fired on the validation data (see
    structprune.sparsity.dead_units); empty where the run records no count."""
    dead = metrics.get("dead_units") or {}
    if not dead.get("counted"):
        return ""
    return f"{dead['removed_dead_maps']} of {dead['removed_maps']}"


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def bench_table(records: list[RunRecord]) -> Table | None:
    """Latencies with spread; speed-up against the first row of the same batch and thread count."""
    rows_in = [(r, b) for r in records for b in r.bench]
    if not rows_in:
        return None
    first: dict[tuple[int, int], Any] = {}
    rows = []
    for r, b in sorted(rows_in, key=lambda rb: (rb[1].batch, rb[1].threads)):
        base = first.setdefault((b.batch, b.threads), b)
        speedup = _div(base.median_ms, b.median_ms)
        mac_x = _div(base.macs, b.macs) if base.macs and b.macs else None
        rows.append([r.name, b.label or "as run", str(b.batch), str(b.threads), fmt_ms(b.median_ms),
                     fmt_ms(b.spread_ms), fmt_ratio(speedup), fmt_ratio(mac_x)])
    return Table(["run", "variant", "batch", "threads", "median ms", "spread ms (max−min)", "speed-up", "MAC ratio"], rows)


def storage_table(records: list[RunRecord]) -> Table | None:
    runs = [r for r in records if r.storage]
    if not runs:
        return None
    rows = []
    for r in runs:
        weight = sum(s.weight_bits for s in r.storage)
        index = sum(s.index_bits for s in r.storage)
        rows.append([r.name, fmt_int(weight // 8), fmt_int(index // 8), fmt_int((weight + index) // 8),
                     fmt_int(r.number("weight_bytes"))])
    return Table(["run", "kept-weight bytes", "index bytes", "total bytes", "weight_bytes (metrics)"], rows)


def build_sections(records: list[RunRecord], plots: list[Plot] | None = None) -> list[Section]:
    plots = all_plots(records) if plots is None else plots
    by_key = {p.key: p for p in plots}
    sections = [Section("Runs", "MCR = misclassification rate. Ratios compare each run with the trained run it "
                        "came from (following its config's source_run/source). A masked run's MACs removed and MAC "
                        "ratio count its compact network (compact_macs); its MACs column is the dense tensors'. "
                        "Removed maps never active: of the maps a pruned run removes (in layers feeding a ReLU), "
                        "those that output zero on every validation image.",
                        table=summary_table(records))]
    if "mcr_vs_ratio" in by_key:
        sections.append(Section("Accuracy against pruning", plots=[by_key["mcr_vs_ratio"]]))
    if "kept_per_layer" in by_key:
        sections.append(Section("What each layer keeps", plots=[by_key["kept_per_layer"]]))
    if "search_history" in by_key:
        sections.append(Section("Mask search", plots=[by_key["search_history"]]))
    bench = bench_table(records)
    if bench is not None or "latency_vs_mcr" in by_key:
        sections.append(Section("Measured latency", "Speed-up and MAC ratio are relative to the first row with "
                                "the same batch size and thread count.", table=bench,
                                plots=[by_key["latency_vs_mcr"]] if "latency_vs_mcr" in by_key else []))
    storage = storage_table(records)
    if storage is not None or "storage" in by_key:
        sections.append(Section("Storage", table=storage, plots=[by_key["storage"]] if "storage" in by_key else []))
    sens = [p for p in plots if p.key.startswith("sensitivity_")]
    if sens:
        sections.append(Section("Per-layer sensitivity", "Each layer pruned alone, the rest of the network intact.",
                                plots=sens))
    return sections


def report_data(records: list[RunRecord]) -> dict[str, Any]:
    """The exact numbers behind the report, embedded in the HTML page."""
    return {"runs": [{"run": r.name, "path": str(r.path), **{f: r.metrics.get(f) for f in TABLE_FIELDS}}
                     for r in records]}


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}img{max-width:100%;display:block;margin:1em 0}
p.note{color:#555;font-size:13px}"""


def to_html(sections: list[Section], title: str, data: dict[str, Any]) -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.text:
            parts.append(f"<p class='note'>{html.escape(s.text)}</p>")
        if s.table is not None:
            parts.append(_html_table(s.table))
        for p in s.plots:
            encoded = base64.b64encode(p.png).decode("ascii")
            parts.append(f"<img alt='{html.escape(p.title)}' src='data:image/png;base64,{encoded}'>")
    payload = json.dumps(data).replace("</", "<\\/")
    parts.append(f"<script type='application/json' id='report-data'>{payload}</script></body></html>")
    return "\n".join(parts)


def md_table(table: Table) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(table.headers), line(["---"] * len(table.headers))] + [line(r) for r in table.rows])


def to_markdown(sections: list[Section], title: str, image_dir: str) -> str:
    parts = [f"# {title}", ""]
    for s in sections:
        parts += [f"## {s.title}", ""]
        if s.text:
            parts += [s.text, ""]
        if s.table is not None:
            parts += [md_table(s.table), ""]
        parts += [f"![{p.title}]({image_dir}/{p.key}.png)\n" for p in s.plots]
    return "\n".join(parts)


def write_report(records: list[RunRecord], out: str | Path, title: str = "structprune report") -> list[Path]:
    """Write `out` (.html: one self-contained page; .md: Markdown plus PNGs in `<stem>_files/`)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plots = all_plots(records)
    sections = build_sections(records, plots)
    if out.suffix.lower() == ".md":
        image_dir = out.parent / f"{out.stem}_files"
        image_dir.mkdir(exist_ok=True)
        written = []
        for p in plots:
            write_bytes_atomic(image_dir / f"{p.key}.png", p.png)
            written.append(image_dir / f"{p.key}.png")
        write_bytes_atomic(out, to_markdown(sections, title, image_dir.name).encode())
        return [out, *written]
    write_bytes_atomic(out, to_html(sections, title, report_data(records)).encode())
    return [out]
