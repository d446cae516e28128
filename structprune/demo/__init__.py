"""`structprune demo`: the whole method on embedded data (scikit-learn's 8×8 digits), as a list of stages.

Each stage is a function `stage(ctx)` that reads what earlier stages left in `ctx`, writes its files under
`ctx.work` and appends a Markdown section to `ctx.report` (structprune.demo.context). The stages live in
structprune.demo.stages (data, dense baseline, L1 pruning, report) and structprune.demo.method_stages (search,
quantize, export, bench); more can be inserted with `add_stage(name, fn, after=...)`. The output folder
is written in structprune's staging area and renamed into place at the end (structprune.output), so an
interrupted demo leaves nothing at OUT, and an existing folder is replaced only when it is an earlier demo
and `overwrite` is given.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from structprune.demo.context import DENSE_RUN, DemoContext, Stage, torch_threads
from structprune.demo.method_stages import stage_bench, stage_export, stage_quantize, stage_search
from structprune.demo.stages import stage_data, stage_pruned, stage_report, stage_train_dense
from structprune.jsonio import write_bytes_atomic, write_json_atomic
from structprune.output import Output
from structprune.runfiles import CONFIG_FILE, REPORT_MD
from structprune.runfolder import as_output

__all__ = ["DENSE_RUN", "STAGES", "DemoContext", "Stage", "add_stage", "run_demo", "torch_threads"]

log = logging.getLogger(__name__)

STAGES: list[tuple[str, Stage]] = [
    ("data", stage_data), ("dense", stage_train_dense), ("pruned", stage_pruned), ("search", stage_search),
    ("quantize", stage_quantize), ("export", stage_export), ("bench", stage_bench),
    ("report", stage_report),  # last: stages added later should pass after= to stay before it
]


def add_stage(name: str, fn: Stage, after: str | None = None) -> None:
    """Insert a stage after the named one (default: at the end). Names are unique."""
    if any(n == name for n, _ in STAGES):
        raise ValueError(f"demo stage {name!r} already exists")
    index = len(STAGES) if after is None else [n for n, _ in STAGES].index(after) + 1
    STAGES.insert(index, (name, fn))


def _report_text(ctx: DemoContext) -> str:
    timing = ", ".join(f"{n} {s:.1f} s" for n, s in ctx.seconds.items())
    head = ("# structprune demo\n\nStructured pruning of CNNs (Anwar, Hwang & Sung, 2017) on embedded data, "
            f"every stage run by `structprune demo`. Stage times: {timing}.\n")
    return "\n".join([head, *ctx.report])


def run_demo(out: str | Path | Output, epochs: int = 30, seed: int = 0, progress: bool = False) -> DemoContext:
    """Run every stage in order; write OUT/report.md and each stage's files. Returns the context."""
    output = as_output(out, "demo")
    with output.publish() as work:
        ctx = DemoContext(work=work, out=output.path, epochs=epochs, seed=seed, progress=progress)
        for name, stage in STAGES:
            started = time.perf_counter()
            log.info("demo stage %s", name)
            stage(ctx)
            ctx.seconds[name] = time.perf_counter() - started
        write_bytes_atomic(work / REPORT_MD, _report_text(ctx).encode())
        write_json_atomic(work / CONFIG_FILE, {"verb": "demo", "epochs": epochs, "seed": seed})
    ctx.work = output.path
    return ctx

