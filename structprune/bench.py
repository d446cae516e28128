"""Network latency: every run's network timed in one process, interleaved, median of rounds.

Each network is timed in both memory layouts (NCHW and channels_last) and its faster one is reported, so
a compact network is always compared with the best dense configuration. `torch.utils.benchmark.Timer`
does the timing with a fixed thread count; rounds visit the networks in rotating order, so a burst of
load from another process hits all of them alike.
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
import timeit
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.benchmark import Timer
from tqdm import tqdm

log = logging.getLogger(__name__)

LAYOUTS = ("nchw", "channels_last")
# wall: elapsed time (what a user waits); cpu: CPU time of this process, immune to waiting for a core on a
# shared machine (with 1 thread it equals the compute time; with more it also counts threads' spinning).
CLOCKS = {"wall": timeit.default_timer, "cpu": time.process_time}


@dataclass
class Candidate:
    """A network to time, with what is known about it."""

    name: str
    model: nn.Module
    input_shape: tuple[int, ...]  # (C, H, W)
    info: dict[str, Any]  # copied into each record (macs, params, test_mcr, ...)
    layouts: tuple[str, ...] | None = None  # None: every layout bench() is asked for


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
) -> list[dict[str, Any]]:
    """One record per (candidate, batch): median_ms of its fastest layout, plus each layout's median."""
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
            for c, layout in entries:  # warm-up, then choose how many calls make one sample
                model, x = _prepared(c.model, layout), inputs[(c.name, layout)]
                for _ in range(3):
                    model(x)
                once = _time_once(model, x, threads, 2, clock)
                numbers[(c.name, layout)] = max(1, int(sample_seconds / max(once, 1e-6)))
            samples: dict[tuple[str, str], list[float]] = {k: [] for k in numbers}
            bar = tqdm(total=rounds * len(entries), desc=f"batch {batch}", file=sys.stderr, disable=not progress,
                       leave=False)
            for r in range(rounds):
                shift = r % len(entries)
                for c, layout in entries[shift:] + entries[:shift]:
                    key = (c.name, layout)
                    model = _prepared(c.model, layout)
                    samples[key].append(_time_once(model, inputs[key], threads, numbers[key], clock))
                    bar.update(1)
            bar.close()
            for c in candidates:
                per_layout = {layout: 1e3 * statistics.median(samples[(c.name, layout)]) for layout in (c.layouts or layouts)}
                best = min(per_layout, key=per_layout.__getitem__)
                spread = samples[(c.name, best)]
                records.append({
                    "run": c.name, "batch": batch, "threads": threads, "median_ms": per_layout[best],
                    "memory_format": best, **{f"median_ms_{k}": v for k, v in per_layout.items()},
                    "min_ms": 1e3 * min(spread), "max_ms": 1e3 * max(spread), "rounds": rounds, "clock": clock,
                    **c.info,
                })
                log.debug("%s batch %d: %.3f ms (%s)", c.name, batch, per_layout[best], best)
            for c in candidates:
                _prepared(c.model, "nchw")
    finally:
        torch.set_num_threads(prev_threads)
    return records
