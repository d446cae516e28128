"""`structprune demo`: the whole method on embedded data (scikit-learn's 8×8 digits), as a list of stages.

Each stage is a function `stage(ctx)` that reads what earlier stages left in `ctx`, writes its files under
`ctx.work` and appends a Markdown section to `ctx.report`. Later capabilities (pruning, search,
quantization, speed measurements) add themselves with `add_stage(name, fn, after=...)`. The output folder
is written in structprune's staging area and renamed into place at the end (structprune.output), so an
interrupted demo leaves nothing at OUT, and an existing folder is replaced only when it is an earlier demo
and `overwrite` is given.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from structprune.arch import describe
from structprune.data import Dataset, load_dataset
from structprune.jsonio import write_bytes_atomic, write_json_atomic
from structprune.metrics import size_metrics
from structprune.models import create
from structprune.output import Output
from structprune.runfolder import as_output, write_run_files
from structprune.train import TrainConfig, evaluate, train

log = logging.getLogger(__name__)

DEMO_MODEL = "paper-mnist"
DEMO_DATA = "digits"
DEMO_VAL = 200  # validation images carved from the 1,497 training digits
DENSE_RUN = "dense"  # sub-folder of the demo output holding the trained dense run


@dataclass
class DemoContext:
    """What the stages share. `results` maps stage name -> its headline numbers (for report and tests)."""

    work: Path  # the (temporary) output folder the stages write into
    out: Path  # where it ends up: what the demo's records name
    epochs: int = 30
    seed: int = 0
    progress: bool = False
    data: Dataset | None = None
    model: torch.nn.Module | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


Stage = Callable[[DemoContext], None]


def stage_data(ctx: DemoContext) -> None:
    ctx.data = load_dataset(DEMO_DATA, val_size=DEMO_VAL, seed=ctx.seed)
    d = ctx.data
    ctx.results["data"] = {"train": len(d.train), "val": len(d.val), "test": len(d.test), "input_size": d.input_size}
    ctx.report.append(
        f"## Data\n\n`{DEMO_DATA}` (scikit-learn's bundled 8×8 handwritten digits): {len(d.train)} training, "
        f"{len(d.val)} validation (carved from the training set, seed {ctx.seed}) and {len(d.test)} test images.\n"
    )


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with `n` intra-op threads. The demo's 8×8 networks train ~6× faster on one thread
    than on two on a busy 2-core machine (tiny GEMMs: threading costs more than it gains)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def stage_train_dense(ctx: DemoContext) -> None:
    assert ctx.data is not None
    d = ctx.data
    torch.manual_seed(ctx.seed)
    ctx.model = create(DEMO_MODEL, num_classes=d.num_classes, in_channels=d.in_channels, input_size=d.input_size)
    cfg = TrainConfig(epochs=ctx.epochs, lr=0.05, batch_size=64, seed=ctx.seed)
    with torch_threads(1):
        history = train(ctx.model, d, cfg, progress=ctx.progress)
    val, test = evaluate(ctx.model, d.val), evaluate(ctx.model, d.test)
    metrics = {"val_mcr": val.mcr, "test_mcr": test.mcr, "val_loss": val.loss, "test_loss": test.loss,
               **size_metrics(ctx.model), "history": history}
    config = {"verb": "demo", "model": DEMO_MODEL, "dataset": DEMO_DATA, "val_size": len(d.val), "train": asdict(cfg)}
    run_dir = ctx.work / DENSE_RUN
    run_dir.mkdir()
    write_run_files(run_dir, ctx.model, describe(ctx.model), metrics, config)
    ctx.results["dense"] = {k: metrics[k] for k in ("val_mcr", "test_mcr", "params", "macs", "weight_bytes")}
    ctx.report.append(
        f"## Dense baseline\n\n`{DEMO_MODEL}` adapted to {d.input_size}×{d.input_size} inputs, trained {ctx.epochs} "
        f"epochs (SGD, momentum {cfg.momentum}, cosine schedule from lr {cfg.lr}, batch {cfg.batch_size}).\n\n"
        "| val MCR | test MCR | params | MACs | weight bytes |\n|---|---|---|---|---|\n"
        f"| {val.mcr:.2%} | {test.mcr:.2%} | {metrics['params']:,} | {metrics['macs']:,} | {metrics['weight_bytes']:,} |\n\n"
        f"Run folder: `{DENSE_RUN}/` (`structprune info {DENSE_RUN}`, `structprune eval {DENSE_RUN}`).\n"
    )


STAGES: list[tuple[str, Stage]] = [("data", stage_data), ("dense", stage_train_dense)]


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
        write_bytes_atomic(work / "report.md", _report_text(ctx).encode())
        write_json_atomic(work / "config.json", {"verb": "demo", "epochs": epochs, "seed": seed})
    ctx.work = output.path
    return ctx


def _stage_report(ctx: DemoContext) -> None:
    """The report of every run the demo made: before/after table and plots (structprune.report.demo_stage)."""
    from structprune.report.demo_stage import stage_report

    stage_report(ctx)


def _stage_pruned(ctx: DemoContext) -> None:
    """An "after" for the report: L1 channel pruning, retraining, compaction (structprune.report.demo_stage)."""
    from structprune.report.demo_stage import stage_pruned

    stage_pruned(ctx)


add_stage("pruned", _stage_pruned)


def _register_method_stages() -> None:
    from structprune.demo_stages import stage_bench, stage_export, stage_quantize, stage_search

    add_stage("search", stage_search, after="pruned")
    add_stage("quantize", stage_quantize, after="search")
    add_stage("export", stage_export, after="quantize")
    add_stage("bench", stage_bench, after="export")


_register_method_stages()
add_stage("report", _stage_report)  # last: stages added later should pass after= to stay before it
