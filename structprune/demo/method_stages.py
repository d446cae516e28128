"""The demo's method stages after `pruned`: search -> compact, quantize (QAT + packed), export (ONNX), bench.

Each stage calls the library step the way `structprune reproduce` does (structprune.reproduce), with budgets
small enough for the embedded 8×8 digits: a pipeline check in seconds, not a result.
"""

from __future__ import annotations

from pathlib import Path

from structprune.demo.context import DENSE_RUN, DemoContext, torch_threads
from structprune.demo.stages import PRUNED_RUNS
from structprune.runfiles import BENCH_FILE
from structprune.runfolder import load_run
from structprune.sparsity.granularity import Granularity
from structprune.sparsity.method import Method

SEARCH_RUN, SEARCH_COMPACT, QUANT_RUN, EXPORT_DIR = "search", "search-compact", "quantized", "export"
SEARCH = {"method": Method.PF, "granularities": (Granularity.CHANNEL, Granularity.INTRA), "ratio": 0.5, "particles": 4,
          "generations": 2, "score_images": 300, "check_images": 300, "ladder": (0.5,), "step_epochs": 2, "final_epochs": 10,
          "intra_shared": True, "intra_fast": True}
QUANT_BITS, QUANT_EPOCHS = 4, 1
BENCH_BATCHES, BENCH_ROUNDS = (1, 64), 3


def stage_search(ctx: DemoContext) -> None:
    """Particle filter at channel then intra-kernel scale on the dense run, short final retrain, compaction."""
    from structprune.search.driver import SearchConfig, search_run
    from structprune.stages.prune import compact_run

    cfg = SearchConfig(seed=ctx.seed, **SEARCH)
    with torch_threads(1):
        search_run(load_run(ctx.work / DENSE_RUN), ctx.data, cfg, ctx.work / SEARCH_RUN,
                   extra_config={"stage": "search", "granularity": ",".join(cfg.granularities), "method": cfg.method})
        _, small = compact_run(ctx.work / SEARCH_RUN, ctx.work / SEARCH_COMPACT, config={"stage": "compact"})
    searched = load_run(ctx.work / SEARCH_RUN).metrics
    ctx.results["search"] = {"test_mcr": searched["test_mcr"], "compact_macs": small["macs"],
                             "compact_params": small["params"]}
    ctx.report.append(
        f"## Search\n\nParticle filter ({cfg.particles} particles, {cfg.generations} generations, MCR on "
        f"{cfg.score_images} validation images) at channel then intra-kernel scale, target ratio {cfg.ratio}, "
        f"retrained {cfg.final_epochs} epochs (`{SEARCH_RUN}/`: test MCR {searched['test_mcr']:.2%}), compacted "
        f"(`{SEARCH_COMPACT}/`: {small['macs']:,} MACs, {small['params']:,} params).\n")


def stage_quantize(ctx: DemoContext) -> None:
    """Fixed-point weights of the searched compact network, quantization-aware retraining, packed artifact."""
    from structprune.quant.run import QuantizeConfig, quantize_run

    cfg = QuantizeConfig(bits=QUANT_BITS, epochs=QUANT_EPOCHS, seed=ctx.seed)
    with torch_threads(1):
        _, m = quantize_run(ctx.work / SEARCH_COMPACT, ctx.work / QUANT_RUN, cfg)
    ctx.results["quantize"] = {"test_mcr": m["test_mcr"], "bits": QUANT_BITS}
    ctx.report.append(
        f"## Quantized\n\n{QUANT_BITS}-bit fixed-point weights of `{SEARCH_COMPACT}/`, {QUANT_EPOCHS} epoch(s) of "
        f"quantization-aware retraining (`{QUANT_RUN}/`: test MCR {m['test_mcr']:.2%}; packed weights in "
        f"`{QUANT_RUN}/model.packed.safetensors`).\n")


def stage_export(ctx: DemoContext) -> None:
    """ONNX of the quantized compact network, checked against PyTorch by onnxruntime."""
    from structprune.stages import export_run

    _, record = export_run(ctx.work / QUANT_RUN, ctx.work / EXPORT_DIR)
    check = {k: v for k, v in record.items() if k not in ("source_run", "onnx", "onnx_bytes")}
    ctx.results["export"] = check
    ctx.report.append(f"## Export\n\n`{EXPORT_DIR}/model.onnx` from `{QUANT_RUN}/`, checked with onnxruntime: "
                      f"{check}.\n")


def stage_bench(ctx: DemoContext) -> None:
    """Dense vs the channel-pruned compact and the searched compact networks, batch 1 and 64, one thread."""
    from structprune.report.collect import collect
    from structprune.report.render import bench_table, md_table
    from structprune.stages import BenchConfig, bench_runs

    compared = (DENSE_RUN, PRUNED_RUNS[2], SEARCH_COMPACT)
    records = bench_runs([ctx.work / name for name in compared], BenchConfig(BENCH_BATCHES, threads=1, rounds=BENCH_ROUNDS),
                         names=[str(ctx.out / name) for name in compared], out_json=ctx.work / BENCH_FILE,
                         progress=ctx.progress)
    table = bench_table([r for r in collect([ctx.work]) if r.bench])
    ctx.results["bench"] = {"records": len(records)}
    dense_ms = {r["batch"]: r["median_ms"] for r in records if r["run"] == str(ctx.out / DENSE_RUN)}
    slower = sorted({Path(r["run"]).name for r in records if r["median_ms"] > dense_ms[r["batch"]]})
    caveat = (f"\n`{'`, `'.join(slower)}` ran slower than dense at some batch size although it does fewer MACs: "
              "on 8×8 inputs every layer is tiny, so fixed per-operator costs outweigh the saved arithmetic, and an "
              "intra-kernel layer runs one small convolution per block of kept taps. docs/benchmarks.md measures "
              "networks where the arithmetic dominates.\n" if slower else "")
    names = ", ".join(f"`{n}/`" for n in compared[1:])
    searched = {r["batch"]: dense_ms[r["batch"]] / r["median_ms"] for r in records
                if r["run"] == str(ctx.out / SEARCH_COMPACT)}
    ctx.results["bench"]["searched_speedup"] = {str(b): x for b, x in searched.items()}
    speed = " and ".join(f"{x:.2f}× (batch {b})" for b, x in sorted(searched.items()))
    ctx.report.append(f"## Bench\n\nDense against {names}, batch {' and '.join(map(str, BENCH_BATCHES))}, "
                      f"1 thread, {BENCH_ROUNDS} rounds (`{BENCH_FILE}`; timings on a shared machine are noisy).\n\n"
                      f"The searched compact network `{SEARCH_COMPACT}/` runs {speed} as fast as dense (above 1: "
                      "faster).\n\n"
                      + (md_table(table) + "\n" if table is not None else "") + caveat)
