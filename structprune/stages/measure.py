"""The measuring stages: bench_runs times run folders against the first one; measure_speedup times a network
against its compact form (`compact --measure`); report_runs draws the report."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from structprune.arch import input_shape_of
from structprune.bench import Candidate, bench, int8_candidate, reference_candidates, runtime_candidate
from structprune.export_int8 import calibration_images
from structprune.jsonio import write_json_atomic
from structprune.runcheck import load_checked_run
from structprune.sensitivity import dataset_of_run


@dataclass(frozen=True)
class BenchConfig:
    """How runs are timed: batches, threads, rounds of `sample_seconds` each, the runtime (eager, compile,
    onnxruntime), reference rows (structprune.bench.REFERENCES), and int8 rows calibrated on `int8_images`
    training images (ONNX Runtime only)."""

    batches: tuple[int, ...] = (1, 64)
    threads: int = 2
    rounds: int = 7
    sample_seconds: float = 0.1
    clock: str = "wall"
    runtime: str = "eager"
    references: tuple[str, ...] = ()
    int8_images: int | None = None
    data_dir: str | None = None
    onnx_stop_spinning: bool = False


def bench_candidates(paths: Sequence[str | Path], cfg: BenchConfig, names: Sequence[str] | None = None,
                     reference_runs: Sequence[int] | None = None) -> list[Candidate]:
    """The rows to time: each run as `cfg.runtime` runs it (named by `names`, default its path), then its int8 form
    and its references (for the runs at `reference_runs`, default all)."""
    candidates = []
    for i, path in enumerate(paths):
        run = load_checked_run(path)
        name = str(names[i] if names is not None else path)
        info = {k: run.metrics.get(k) for k in ("macs", "params", "test_mcr")}
        own = Candidate(name, run.model, input_shape_of(run.model), info)
        refs = list(cfg.references) if reference_runs is None or i in reference_runs else []
        rows = [c if c.info.get("reference") == "unstructured"
                else runtime_candidate(c, cfg.runtime, cfg.threads, cfg.onnx_stop_spinning)
                for c in [own, *reference_candidates(run, name, refs)]]
        if cfg.int8_images is not None:
            images = calibration_images(dataset_of_run(run.path, run.config, cfg.data_dir).train, cfg.int8_images)
            rows.insert(1, int8_candidate(own, images, cfg.threads, cfg.onnx_stop_spinning))
        candidates += rows
    return candidates


def bench_runs(paths: Sequence[str | Path], cfg: BenchConfig, *, names: Sequence[str] | None = None,
               reference_runs: Sequence[int] | None = None, out_json: str | Path | None = None,
               progress: bool = False) -> list[dict[str, Any]]:
    """Time the runs in `paths` (the first is the baseline of speed-up and MAC ratio); the records are written to
    `out_json` when given, and returned."""
    candidates = bench_candidates(paths, cfg, names, reference_runs)
    records = bench(candidates, list(cfg.batches), threads=cfg.threads, rounds=cfg.rounds, progress=progress,
                    clock=cfg.clock, sample_seconds=cfg.sample_seconds)
    if out_json is not None:
        write_json_atomic(out_json, records)
    return records


def measure_speedup(dense: nn.Module, compact: nn.Module, cfg: BenchConfig,
                    progress: bool = False) -> list[dict[str, Any]]:
    """Time `dense` and `compact` (copies) as `cfg` says (its runtime, threads, rounds; no reference or int8
    rows); one record per batch: the runtime, threads, both medians and the measured speed-up."""
    shape = input_shape_of(dense)
    rows = [runtime_candidate(Candidate(name, copy.deepcopy(model).eval(), shape, {}), cfg.runtime, cfg.threads,
                              cfg.onnx_stop_spinning)
            for name, model in (("dense", dense), ("compact", compact))]
    records = bench(rows, list(cfg.batches), threads=cfg.threads, rounds=cfg.rounds, progress=progress,
                    clock=cfg.clock, sample_seconds=cfg.sample_seconds)
    ms = {(r["run"], r["batch"]): r["median_ms"] for r in records}
    return [{"batch": b, "runtime": cfg.runtime, "threads": cfg.threads, "dense_ms": ms[("dense", b)],
             "compact_ms": ms[("compact", b)], "speedup": ms[("dense", b)] / ms[("compact", b)]}
            for b in cfg.batches]


def report_runs(dirs: Sequence[str | Path], outs: Sequence[str | Path], title: str = "structprune report",
                bench_files: Sequence[str | Path] = ()) -> tuple[int, list[Path]]:
    """The report of run folders (or folders of runs, whose bench.json is read too) written to each of `outs`
    (.html self-contained, .md with PNGs beside it); returns the number of runs and the files written."""
    from structprune.report import collect, write_report  # matplotlib only when a report is drawn

    records = collect([str(d) for d in dirs], [str(b) for b in bench_files])
    written: list[Path] = []
    for out in outs:
        written += write_report(records, out, title)
    return len(records), written
