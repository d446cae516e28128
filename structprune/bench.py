"""Network latency: every run's network timed in one process, interleaved, median of rounds.

Each network is timed in both memory layouts (NCHW and channels_last) and its faster one is reported, so
a compact network is always compared with the best dense configuration. `torch.utils.benchmark.Timer`
does the timing with a fixed thread count; rounds visit the networks in rotating order, so a burst of
load from another process hits all of them alike. Each round times a few blocks of calls and keeps their
median; a record reports the median of these per-round values with their min, max and interquartile range,
and its ratios against the first network at the same batch.

The number of calls in a block is calibrated on the wall clock and capped (MAX_CALLS), and a block that
overruns its time is shrunk for the next rounds, so tiny networks cost about `sample_seconds` per round.
Before each network's turn the process idles for `settle_seconds`: an ONNX Runtime session's threads keep
spinning for a while after its last run, and would otherwise take cores from the next network timed.

Reference rows (`reference_candidates`): the masked network run with dense tensors, and the same nonzeros
run as unstructured sparse (CSR convolutions), each checked equal to the run's network before timing.
"""

from __future__ import annotations

import copy
import logging
import statistics
import sys
import time
import timeit
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.benchmark import Timer
from tqdm import tqdm

from structprune.errors import StructpruneError
from structprune.runfiles import MASKS_FILE

log = logging.getLogger(__name__)

LAYOUTS = ("nchw", "channels_last")
# wall: elapsed time (what a user waits); cpu: CPU time of this process, immune to waiting for a core on a
# shared machine (with 1 thread it equals the compute time; with more it also counts threads' spinning).
CLOCKS = {"wall": timeit.default_timer, "cpu": time.process_time}
BLOCKS = 3  # blocks of calls per round; the round's value is their median
MAX_CALLS = 10_000  # calls in one block at most, whatever a fast first timing suggests
OVERRUN = 3.0  # a round longer than this many sample_seconds shrinks the blocks of its network
# idle time before each network's turn: ONNX Runtime's threads stop spinning within it (2 ms was too short,
# 50 ms enough on this machine), so the previous session cannot take cores from the next network timed
SETTLE_SECONDS = 0.05
REFERENCES = ("masked-dense", "unstructured")
EQUAL_RTOL = 1e-4  # a reference must match the run's network within this relative gap


@dataclass
class Candidate:
    """A network to time, with what is known about it."""

    name: str
    model: nn.Module
    input_shape: tuple[int, ...]  # (C, H, W)
    info: dict[str, Any]  # copied into each record (macs, params, test_mcr, reference, ...)
    layouts: tuple[str, ...] | None = None  # None: every layout bench() is asked for


RUNTIMES = ("eager", "compile", "onnxruntime")
# `structprune bench` and `compact --measure` time in the runtime the README recommends for deployment
# (structprune export); the library's BenchConfig, reproduce and the demo keep eager PyTorch
DEFAULT_RUNTIME = "onnxruntime"


class CompiledNetwork(nn.Module):
    """`model` as deployed with `torch.compile`: Inductor with weights frozen as constants (conv + ReLU fused,
    weights pre-packed for oneDNN), static shapes, channels_last. The compiled graph is hidden from nn.Module
    (not a submodule), so layout changes and .eval() on this wrapper leave it alone. For timing."""

    def __init__(self, model: nn.Module):
        super().__init__()
        model = model.eval().to(memory_format=torch.channels_last)
        self._compiled = (torch.compile(model, dynamic=False, options={"freezing": True}),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._compiled[0](x.contiguous(memory_format=torch.channels_last))


class OnnxRuntimeNetwork(nn.Module):
    """`model` exported to ONNX (checked against PyTorch) and run by an ONNX Runtime CPU session with
    `threads` threads: NCHW in, logits out. For timing. With `calibration` images, the model is statically
    quantized to int8 first (structprune.export_int8).

    The session spins as ONNX Runtime does by default: its threads busy-wait a short while after a run, so
    back-to-back runs find them awake (bench() lets them go quiet before another network is timed).
    stop_spinning: they stop at the end of every run instead, so each run pays for waking them, as an
    occasional request would."""

    def __init__(self, model: nn.Module, threads: int, stop_spinning: bool = False, calibration: Any = None):
        super().__init__()
        import tempfile

        from structprune.export_int8 import write_int8_onnx
        from structprune.export_onnx import export_onnx, onnx_session

        with tempfile.TemporaryDirectory(prefix="structprune-bench-") as tmp:
            path = Path(tmp) / "network.onnx"
            if calibration is None:
                export_onnx(model, path)
            else:  # calibration: images (numpy [N, C, H, W]) for ONNX Runtime's static int8 quantization
                write_int8_onnx(model, path, calibration)
            self._session = (onnx_session(path, threads=threads, stop_spinning=stop_spinning),)  # model in memory

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._session[0].run(None, {"input": x.contiguous().numpy()})[0])


def runtime_candidate(candidate: Candidate, runtime: str, threads: int, stop_spinning: bool = False) -> Candidate:
    """The candidate as run by `runtime` (RUNTIMES): eager PyTorch as it is, torch.compile (channels_last
    only) or ONNX Runtime (NCHW only, a session with `threads` threads; stop_spinning: see
    OnnxRuntimeNetwork)."""
    if runtime == "eager":
        return candidate
    if runtime == "compile":
        return Candidate(candidate.name, CompiledNetwork(candidate.model), candidate.input_shape,
                         {**candidate.info, "runtime": runtime}, layouts=("channels_last",))
    if runtime == "onnxruntime":
        return Candidate(candidate.name, OnnxRuntimeNetwork(candidate.model, threads, stop_spinning),
                         candidate.input_shape, {**candidate.info, "runtime": runtime, "onnx_stop_spinning": stop_spinning},
                         layouts=("nchw",))
    raise StructpruneError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")


def int8_candidate(candidate: Candidate, calibration: Any, threads: int, stop_spinning: bool = False) -> Candidate:
    """The candidate's network statically quantized to int8 by ONNX Runtime (activations calibrated on the
    `calibration` images, numpy [N, C, H, W]) and run by it, named NAME#int8 (variant "int8" in its records).
    Its test MCR is not the float network's, so it is left unknown here (`structprune export --int8` measures it)."""
    info = {**candidate.info, "test_mcr": None, "runtime": "onnxruntime", "onnx_stop_spinning": stop_spinning,
            "precision": "int8", "variant": "int8", "int8_of": candidate.name, "calibration_images": len(calibration)}
    return Candidate(f"{candidate.name}#int8", OnnxRuntimeNetwork(candidate.model, threads, stop_spinning, calibration),
                     candidate.input_shape, info, layouts=("nchw",))


def _prepared(model: nn.Module, layout: str) -> nn.Module:
    model.eval()
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    return model.to(memory_format=fmt)


def _input(shape: tuple[int, ...], batch: int, layout: str) -> torch.Tensor:
    x = torch.randn(batch, *shape)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def _time_once(model: nn.Module, x: torch.Tensor, threads: int, number: int, clock: str = "wall") -> float:
    """Seconds per call, over `number` calls."""
    timer = Timer(stmt="model(x)", globals={"model": model, "x": x}, num_threads=threads, timer=CLOCKS[clock])
    return timer.timeit(number).mean


def _calibrate(model: nn.Module, x: torch.Tensor, threads: int, block_seconds: float) -> int:
    """Calls per block so that a block takes about `block_seconds` of wall time. Grows by at most 10x per
    try from a block shorter than a quarter of the target, so calibrating costs at most ~3 targets."""
    number = 1
    elapsed = _time_once(model, x, threads, number) * number
    while elapsed < block_seconds / 4 and number < MAX_CALLS:
        number = min(MAX_CALLS, max(number + 1, int(number * min(10.0, block_seconds / max(elapsed, 1e-9)))))
        elapsed = _time_once(model, x, threads, number) * number
    return max(1, min(MAX_CALLS, round(number * block_seconds / max(elapsed, 1e-9))))


def _spread(values: list[float]) -> dict[str, float]:
    """min, max and interquartile range of per-round values (seconds) as milliseconds."""
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else (values[0],) * 3
    return {"min_ms": 1e3 * min(values), "max_ms": 1e3 * max(values), "iqr_ms": 1e3 * (q3 - q1)}


def add_ratios(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Set `speedup_vs_first` (first median_ms / this median_ms), `mac_ratio_vs_first` (first macs / this
    macs) and `efficiency_vs_first` (speedup / MAC ratio: how much of its MAC reduction a network turns into
    speed) on each record, against the first record of its batch and thread count; None where unknown.
    Returns the same list."""
    firsts: dict[tuple[int, int], dict[str, Any]] = {}
    for rec in records:
        first = firsts.setdefault((rec["batch"], rec["threads"]), rec)
        rec["speedup_vs_first"] = first["median_ms"] / rec["median_ms"] if rec["median_ms"] > 0 else None
        macs, first_macs = rec.get("macs"), first.get("macs")
        rec["mac_ratio_vs_first"] = first_macs / macs if macs and first_macs else None
        speedup, mac_ratio = rec["speedup_vs_first"], rec["mac_ratio_vs_first"]
        rec["efficiency_vs_first"] = speedup / mac_ratio if speedup and mac_ratio else None
        rec["first_run"] = first["run"]
    return records


@torch.inference_mode()
def bench(
    candidates: list[Candidate],
    batches: list[int],
    threads: int = 2,
    rounds: int = 7,
    sample_seconds: float = 0.1,
    layouts: tuple[str, ...] = LAYOUTS,
    progress: bool = True,
    clock: str = "wall",
    settle_seconds: float = SETTLE_SECONDS,
) -> list[dict[str, Any]]:
    """One record per (candidate, batch): median_ms of its fastest layout, spread, ratios to the first
    candidate, plus each layout's median. One round of one network lasts about `sample_seconds`, after
    `settle_seconds` of idling (module doc)."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {', '.join(CLOCKS)}")
    records: list[dict[str, Any]] = []
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for batch in batches:
            entries = [(c, layout) for c in candidates for layout in (c.layouts or layouts)]
            inputs = {(c.name, layout): _input(c.input_shape, batch, layout) for c, layout in entries}
            numbers: dict[tuple[str, str], int] = {}
            for c, layout in entries:  # warm-up, then choose how many calls make one block
                model, x = _prepared(c.model, layout), inputs[(c.name, layout)]
                time.sleep(settle_seconds)
                for _ in range(3):
                    model(x)
                numbers[(c.name, layout)] = _calibrate(model, x, threads, sample_seconds / BLOCKS)
            samples: dict[tuple[str, str], list[float]] = {k: [] for k in numbers}
            bar = tqdm(total=rounds * len(entries), desc=f"batch {batch}", file=sys.stderr, disable=not progress,
                       leave=False)
            for r in range(rounds):
                shift = r % len(entries)
                for c, layout in entries[shift:] + entries[:shift]:
                    key = (c.name, layout)
                    model = _prepared(c.model, layout)
                    time.sleep(settle_seconds)
                    start = time.perf_counter()
                    blocks = [_time_once(model, inputs[key], threads, numbers[key], clock) for _ in range(BLOCKS)]
                    samples[key].append(statistics.median(blocks))
                    took = time.perf_counter() - start
                    if took > OVERRUN * sample_seconds and numbers[key] > 1:  # the calibration was too optimistic
                        numbers[key] = max(1, int(numbers[key] * sample_seconds / took))
                        log.debug("%s (%s): round took %.2f s; %d calls per block from now", c.name, layout, took,
                                  numbers[key])
                    bar.update(1)
            bar.close()
            for c in candidates:
                per_layout = {layout: 1e3 * statistics.median(samples[(c.name, layout)]) for layout in (c.layouts or layouts)}
                best = min(per_layout, key=per_layout.__getitem__)
                records.append({
                    "run": c.name, "batch": batch, "threads": threads, "median_ms": per_layout[best],
                    "memory_format": best, **{f"median_ms_{k}": v for k, v in per_layout.items()},
                    **_spread(samples[(c.name, best)]), "rounds": rounds, "clock": clock, "settle_s": settle_seconds,
                    "calls_per_block": numbers[(c.name, best)], **c.info,
                })
                log.debug("%s batch %d: %.3f ms (%s)", c.name, batch, per_layout[best], best)
            for c in candidates:
                _prepared(c.model, "nchw")
    finally:
        torch.set_num_threads(prev_threads)
    return add_ratios(records)


@torch.no_grad()
def _relative_gap(model: nn.Module, reference: nn.Module, x: torch.Tensor) -> float:
    want = reference(x)
    return float((model(x) - want).abs().max()) / max(float(want.abs().max()), 1e-12)


@torch.no_grad()
def unstructured_copy(model: nn.Module) -> nn.Module:
    """A copy of a masked network whose convs skip exactly its zero weights as CSR sparse products: the
    unstructured-sparse reference at equal nonzeros (linear layers stay dense). Checked against the original."""
    from structprune.arch import example_input
    from structprune.compact.csr_conv import CsrConv2d

    csr = copy.deepcopy(model).eval()
    for name, module in list(csr.named_modules()):
        if isinstance(module, nn.Conv2d):
            csr.set_submodule(name, CsrConv2d.from_conv(module, module.weight != 0))
    gap = _relative_gap(csr, model, example_input(model, 4))
    if gap > EQUAL_RTOL:
        raise StructpruneError(f"the CSR copy differs from the masked network (relative gap {gap:.2g})")
    return csr


def _source_path(run: Any) -> Path | None:
    """The nearest run `run` was made from (config source_run and the like) that holds masks.json."""
    from structprune.runfolder import source_chain

    chain = islice(source_chain(run.path, run.config, strict=False), 1, None)
    return next((folder for folder, _ in chain if (folder / MASKS_FILE).is_file()), None)


def masked_network(run: Any) -> nn.Module:
    """A dense copy of the run's network with its masks applied: from the run's own masks.json, or, for a
    compact run, from its `source_run`. Raises StructpruneError (one line) when there is none, or when it
    does not compute what the run's network computes."""
    from structprune.runfolder import load_run
    from structprune.sparsity.masking import MaskApplier
    from structprune.stages.prune import load_masks

    source, mask = run, load_masks(run)
    if mask is None:
        path = _source_path(run)
        if path is None:
            raise StructpruneError(f"no {MASKS_FILE}, and no source run with {MASKS_FILE} (config source_run)")
        source = load_run(path)
        mask = load_masks(source)
    model = copy.deepcopy(source.model).eval()
    mask.validate(model)
    MaskApplier(model).apply_(mask)
    x = torch.randn(4, *_input_shape(run.model))
    gap = _relative_gap(model, run.model, x)
    if gap > EQUAL_RTOL:
        raise StructpruneError(f"the masked network of {source.path} differs from this run's (relative gap {gap:.2g})")
    return model


def _input_shape(model: nn.Module) -> tuple[int, ...]:
    from structprune.arch import input_shape_of

    return input_shape_of(model)


def reference_candidates(run: Any, name: str, references: list[str]) -> list[Candidate]:
    """Reference rows for a loaded run (structprune.runfolder.Run) named `name` in the table: for each of
    `references` (REFERENCES), a Candidate labelled by its `reference` field. A reference that cannot be
    built is skipped with one warning line."""
    from structprune.metrics import count_macs

    unknown = [r for r in references if r not in REFERENCES]
    if unknown:
        raise StructpruneError(f"unknown reference {unknown[0]!r}; choose from {', '.join(REFERENCES)}")
    if not references:
        return []
    try:
        masked = masked_network(run)
    except StructpruneError as exc:
        log.warning("%s: no reference rows (%s)", name, exc)
        return []
    shape = _input_shape(run.model)
    test_mcr = run.metrics.get("test_mcr")
    nonzeros = sum(int((p != 0).sum()) for p in masked.parameters())
    out = []
    for ref in references:
        if ref == "masked-dense":
            model = masked
            info = {"params": sum(p.numel() for p in masked.parameters())}
        else:
            try:
                model = unstructured_copy(masked)
            except StructpruneError as exc:
                log.warning("%s: no %s reference (%s)", name, ref, exc)
                continue
            info = {"params": nonzeros}
        out.append(Candidate(f"{name}#{ref}", model, shape, {
            "macs": count_macs(model, shape), **info, "nonzero_params": nonzeros, "test_mcr": test_mcr,
            "reference": ref, "reference_of": name}))
    return out
