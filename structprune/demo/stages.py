"""The demo's own stages: data, the dense baseline, an "after" to compare with, and the report of every run.

`stage_data` and `stage_train_dense`: the embedded digits and the dense `paper-mnist` run (dense/).
`stage_pruned`: half the feature maps of each conv chosen by L1 magnitude (pruned/), retrained with the masks
held (retrained/), compacted (compact/). `stage_report`: the dense run's per-layer sensitivity (seconds on
the digits), then report.html (self-contained), PNGs under figures/, and a Markdown section (before/after
table and figures) appended to the demo's report.md.
"""

from __future__ import annotations

from structprune.data import load_dataset
from structprune.demo.context import DEMO_DATA, DEMO_MODEL, DEMO_VAL, DENSE_RUN, DemoContext, torch_threads
from structprune.jsonio import write_bytes_atomic
from structprune.runcheck import load_checked_run
from structprune.runfiles import REPORT_HTML
from structprune.stages.train import TrainRunConfig, train_run
from structprune.train import TrainConfig

FIGURES = "figures"
PRUNED_RUNS = ("pruned", "retrained", "compact")
PRUNE_RATIO = 0.5
RETRAIN_EPOCHS = 10


def stage_data(ctx: DemoContext) -> None:
    ctx.data = load_dataset(DEMO_DATA, val_size=DEMO_VAL, seed=ctx.seed)
    d = ctx.data
    ctx.results["data"] = {"train": len(d.train), "val": len(d.val), "test": len(d.test), "input_size": d.input_size}
    ctx.report.append(
        f"## Data\n\n`{DEMO_DATA}` (scikit-learn's bundled 8×8 handwritten digits): {len(d.train)} training, "
        f"{len(d.val)} validation (carved from the training set, seed {ctx.seed}) and {len(d.test)} test images.\n"
    )


def stage_train_dense(ctx: DemoContext) -> None:
    assert ctx.data is not None
    d = ctx.data
    cfg = TrainConfig(epochs=ctx.epochs, lr=0.05, batch_size=64, seed=ctx.seed)
    run_cfg = TrainRunConfig(model=DEMO_MODEL, dataset=DEMO_DATA, train=cfg, val_size=DEMO_VAL, device="cpu",
                             channels_last="off")
    with torch_threads(1):
        _, metrics = train_run(ctx.work / DENSE_RUN, run_cfg, d, progress=ctx.progress, extra_config={"stage": "dense"})
    ctx.model = load_checked_run(ctx.work / DENSE_RUN).model
    ctx.results["dense"] = {k: metrics[k] for k in ("val_mcr", "test_mcr", "params", "macs", "weight_bytes")}
    ctx.report.append(
        f"## Dense baseline\n\n`{DEMO_MODEL}` adapted to {d.input_size}×{d.input_size} inputs, trained {ctx.epochs} "
        f"epochs (SGD, momentum {cfg.momentum}, cosine schedule from lr {cfg.lr}, batch {cfg.batch_size}).\n\n"
        "| val MCR | test MCR | params | MACs | weight bytes |\n|---|---|---|---|---|\n"
        f"| {metrics['val_mcr']:.2%} | {metrics['test_mcr']:.2%} | {metrics['params']:,} | {metrics['macs']:,} "
        f"| {metrics['weight_bytes']:,} |\n\n"
        f"Run folder: `{DENSE_RUN}/` (`structprune info {DENSE_RUN}`, `structprune eval {DENSE_RUN}`).\n"
    )


def stage_pruned(ctx: DemoContext) -> None:
    """Demo stage: L1 channel pruning at PRUNE_RATIO, retraining with the masks held, compaction."""
    from structprune.sparsity.granularity import Granularity
    from structprune.sparsity.selection import SelectionConfig
    from structprune.stages import retrain_run
    from structprune.stages.prune import compact_run, select_run

    pruned, retrained, compact = (ctx.work / name for name in PRUNED_RUNS)
    config = {"stage": "prune", "granularity": "channel", "method": "l1"}
    cfg = TrainConfig(epochs=RETRAIN_EPOCHS, lr=0.01, batch_size=64, seed=ctx.seed)
    with torch_threads(1):
        _, one_shot = select_run(ctx.work / DENSE_RUN, pruned, [Granularity.CHANNEL], [PRUNE_RATIO], SelectionConfig(),
                                 config)
        _, after = retrain_run(pruned, retrained, cfg, ctx.data, progress=ctx.progress)
        _, small = compact_run(retrained, compact, config={"stage": "compact"})
    ctx.results["pruned"] = {"one_shot_test_mcr": one_shot["test_mcr"], "retrained_test_mcr": after["test_mcr"],
                             "compact_macs": small["macs"], "compact_params": small["params"]}
    ctx.report.append(
        f"## Pruned\n\nHalf the feature maps of every convolution, chosen by L1 magnitude (`{PRUNED_RUNS[0]}/`: "
        f"test MCR {one_shot['test_mcr']:.2%} before retraining), retrained {RETRAIN_EPOCHS} epochs with the "
        f"masks held (`{PRUNED_RUNS[1]}/`: {after['test_mcr']:.2%}), compacted into smaller layers "
        f"(`{PRUNED_RUNS[2]}/`: {small['macs']:,} MACs, {small['params']:,} params).\n"
    )


def stage_report(ctx: DemoContext) -> None:
    """`ctx.work` holds the run folders, `ctx.report` the Markdown sections."""
    from structprune.report.collect import collect
    from structprune.report.plots import all_plots  # matplotlib: imported when the report is drawn
    from structprune.report.render import build_sections, md_table, summary_table, write_report
    from structprune.sensitivity import SENSITIVITY_FILE, SensitivityConfig, sweep

    dense = ctx.work / DENSE_RUN
    if ctx.model is not None and ctx.data is not None and not (dense / SENSITIVITY_FILE).exists():
        sweep(ctx.model, ctx.data, SensitivityConfig(images=None), out_file=dense / SENSITIVITY_FILE)
    records = collect([ctx.work])
    plots = all_plots(records)
    (ctx.work / FIGURES).mkdir(exist_ok=True)
    for plot in plots:
        write_bytes_atomic(ctx.work / FIGURES / f"{plot.key}.png", plot.png)
    write_report(records, ctx.work / REPORT_HTML, "structprune demo report")
    lines = ["## Report: before and after", "",
             "Every run of this demo, with its size and MCR against the dense run it came from "
             "(`structprune report DIR --out report.html` redraws it; `report.html` here is the self-contained page).", "",
             md_table(summary_table(records)), ""]
    for section in build_sections(records, plots):
        lines += [f"![{p.title}]({FIGURES}/{p.key}.png)\n" for p in section.plots]
    ctx.report.append("\n".join(lines))
    ctx.results["report"] = {"runs": len(records), "plots": [p.key for p in plots]}
