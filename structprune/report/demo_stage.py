"""The demo's closing stage: the report of every run the demo made (before/after table and plots).

It sweeps the dense run's per-layer sensitivity first (seconds on the digits), so the report always has a
plot, then writes report.html (self-contained) and PNGs under figures/, and appends a Markdown section,
table and figures, to the demo's report.md.
"""

from __future__ import annotations

from typing import Any

from structprune.jsonio import write_bytes_atomic
from structprune.report.collect import collect
from structprune.report.plots import all_plots
from structprune.report.render import build_sections, md_table, summary_table, write_report

FIGURES = "figures"


def stage_report(ctx: Any) -> None:
    """Demo stage (see structprune.demo): `ctx.work` holds the run folders, `ctx.report` the Markdown sections."""
    from structprune.demo import DENSE_RUN
    from structprune.sensitivity import SENSITIVITY_FILE, SensitivityConfig, sweep

    dense = ctx.work / DENSE_RUN
    if ctx.model is not None and ctx.data is not None and not (dense / SENSITIVITY_FILE).exists():
        sweep(ctx.model, ctx.data, SensitivityConfig(images=None), out_file=dense / SENSITIVITY_FILE)
    records = collect([ctx.work])
    plots = all_plots(records)
    (ctx.work / FIGURES).mkdir(exist_ok=True)
    for plot in plots:
        write_bytes_atomic(ctx.work / FIGURES / f"{plot.key}.png", plot.png)
    write_report(records, ctx.work / "report.html", "structprune demo report")
    lines = ["## Report: before and after", "",
             "Every run of this demo, with its size and MCR against the dense run it came from "
             "(`structprune report DIR --out report.html` redraws it; `report.html` here is the self-contained page).", "",
             md_table(summary_table(records)), ""]
    for section in build_sections(records, plots):
        lines += [f"![{p.title}]({FIGURES}/{p.key}.png)\n" for p in section.plots]
    ctx.report.append("\n".join(lines))
    ctx.results["report"] = {"runs": len(records), "plots": [p.key for p in plots]}
