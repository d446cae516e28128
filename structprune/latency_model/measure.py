"""Measuring a LatencyModel: every convolution timed standalone in its pruned forms, the dense network timed whole.

Each convolution (nn.Conv2d, by module name) is timed on random inputs of the size it sees in the network, at
the given batch and thread count, for every grid point of every variant (structprune.latency_model.model):
  counts  kept input × kept output maps: multiples of `round_to` up to the layer's width plus the width itself,
          thinned to `points` evenly spaced counts per axis (`variant_points` for the variants other than g1);
          the first convolution (reading the image) keeps its input maps; a depthwise one keeps its depthwise form
  groups  each G of `groups` that divides the counts (a grouped convolution); not on depthwise convolutions
  taps    each (kh, kw) of `taps` smaller than the kernel: a kh×kw convolution, the input cropped / zero-padded
          so that the output keeps its size (as the compact layer does); with G = 1, and with every G when `combine`
The runtimes:
  eager        the layer as an nn.Module on a channels_last input, under inference mode
  onnxruntime  the same module exported (torch.onnx, TorchScript exporter, into memory) as a one-node model, run by
               an ONNX Runtime session set up as structprune.bench sets it up (intra_op_num_threads = threads); the
               time is its nodes' kernel time from ONNX Runtime's profiler, the layout reorders at the graph's
               edges left out (onnx_kernel_ms)
Timing is the median over runs (eager: torch.utils.benchmark's blocked_autorange; `min_run_time` per shape). Then the dense
network, a few uniformly pruned copies and the half-width copy with kernel blocks, and with an intra shape, are
timed whole (structprune.latency_model.network), and network ≈ α · Σ convolutions + β + γ_blocks · n_blocks +
γ_taps · n_taps is fitted on them (structprune.latency_model.calibration).
"""

from __future__ import annotations

import bisect
import io
import json
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.benchmark import Timer

from structprune.errors import StructpruneError
from structprune.latency_model.model import MODEL_RUNTIMES, Grid, LatencyModel, LayerTimes, variant_key
from structprune.latency_model.network import CALIBRATION_KEEPS, measure_calibration
from structprune.sparsity.fast_forms import round_to_or_default

log = logging.getLogger(__name__)

DEFAULT_TAPS = ((3, 1), (1, 3), (2, 3), (3, 2))
DEFAULT_GRID_POINTS = 5  # kept-map counts per axis of a plain convolution's grid


@dataclass(frozen=True)
class ConvCall:
    """A convolution as the network calls it."""

    name: str
    conv: nn.Conv2d
    input_shape: tuple[int, int, int]  # (C, H, W) of one sample
    output_size: tuple[int, int]  # (H, W) of its output maps
    first: bool  # reads the image: keeps its input maps


def conv_calls(model: nn.Module, input_shape: tuple[int, ...]) -> list[ConvCall]:
    """Every nn.Conv2d one forward pass calls, in call order; the first one called, and any reading the image
    itself, are marked `first`."""
    found: dict[str, ConvCall] = {}
    image = torch.zeros(1, *input_shape)

    def hook(name: str) -> Callable:
        def record(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            if name not in found and args and isinstance(args[0], torch.Tensor):
                first = not found or args[0] is image
                found[name] = ConvCall(name, module, tuple(args[0].shape[1:]), tuple(out.shape[2:]),  # type: ignore[arg-type]
                                       first)
        return record

    hooks = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(image)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return list(found.values())


def grid_counts(width: int, step: int, points: int) -> list[int]:
    """Multiples of `step` up to `width`, plus `width`, thinned to `points` evenly spaced ones (ends kept)."""
    counts = list(range(step, width + 1, step))
    if not counts or counts[-1] != width:
        counts.append(width)
    if len(counts) <= points:
        return counts
    picks = np.unique(np.linspace(0, len(counts) - 1, max(points, 2)).round().astype(int))
    return [counts[i] for i in picks]


def _axis_plan(size: int, k: int, s: int, p: int, d: int, taps: int) -> tuple[int, int, int, int]:
    """(conv padding, zeros before, zeros after, cropped at the end) along one axis for `taps` of a kernel of k
    taps, keeping the dense layer's output size."""
    if taps == k:  # the layer's own kernel size: its own padding
        return p, 0, 0, 0
    out = (size + 2 * p - d * (k - 1) - 1) // s + 1  # the dense layer's output size
    extra = (out - 1) * s + d * (taps - 1) + 1 - size  # input rows / cols to add (or cut)
    even = (extra + 1) // 2
    if extra >= 0 and (size + 2 * even - d * (taps - 1) - 1) // s + 1 == out:
        return even, 0, 0, 0  # symmetric padding fits
    before = extra // 2 if extra >= 0 else 0
    after = extra - before
    both = max(0, min(before, after))
    return both, before - both, max(0, after - both), max(0, -after)


class FormConv(nn.Module):
    """A convolution in one pruned form: `cin` → `cout` maps, `groups` groups, a kh×kw kernel on an input cropped /
    zero-padded so that the output has the dense layer's size (the padding that fits goes to the convolution)."""

    def __init__(self, conv: nn.Conv2d, size: tuple[int, int], cin: int, cout: int, groups: int,
                 kernel: tuple[int, int]):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, conv.stride, 0, conv.dilation, groups, conv.bias is not None)
        padding = conv.padding if not isinstance(conv.padding, str) else tuple(  # 'valid' or 'same' (odd kernels)
            0 if conv.padding == "valid" else d * (k - 1) // 2 for k, d in zip(conv.kernel_size, conv.dilation, strict=True))
        plans = [_axis_plan(size[a], conv.kernel_size[a], conv.stride[a], padding[a], conv.dilation[a], kernel[a])
                 for a in (0, 1)]
        self.conv.padding = (plans[0][0], plans[1][0])
        self.pad = (plans[1][1], plans[1][2], plans[0][1], plans[0][2])  # F.pad order: left, right, top, bottom
        self.crop = (plans[0][3], plans[1][3])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.crop):
            x = x[:, :, :x.shape[2] - self.crop[0], :x.shape[3] - self.crop[1]]
        if any(self.pad):
            x = F.pad(x, self.pad)
        return self.conv(x)


def _onnx_bytes(module: nn.Module, x: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buffer, input_names=["input"], output_names=["output"], opset_version=18,
                          dynamo=False)
    return buffer.getvalue()


@torch.inference_mode()
def time_form(module: nn.Module, input_shape: tuple[int, ...], runtime: str, batch: int, threads: int,
              min_run_time: float) -> float:
    """Median milliseconds per batch of `module` on a random input: in eager, the call on a channels_last input;
    in ONNX Runtime, its graph's kernels as the profiler times them (onnx_kernel_ms)."""
    module.eval()
    x = torch.randn(batch, *input_shape)
    if runtime != "eager":
        return onnx_kernel_ms(_onnx_bytes(module, x), x, threads, min_run_time)
    x = x.contiguous(memory_format=torch.channels_last)
    module.to(memory_format=torch.channels_last)
    timer = Timer("module(x)", globals={"module": module, "x": x}, num_threads=threads)
    timer.timeit(2)  # warm-up
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def onnx_kernel_ms(model: bytes, x: torch.Tensor, threads: int, min_run_time: float, warmup: int = 2,
                   min_runs: int = 5) -> float:
    """Median over runs of the summed kernel times of a one-layer ONNX graph's nodes, from ONNX Runtime's profiler,
    without the layout reorders at the graph's input and output (ReorderInput / ReorderOutput): inside a network
    a convolution reads and writes the blocked layout directly, and those reorders, memory-bound and timed
    afresh per shape, made standalone times scatter by up to a quarter between runs. Runs until `min_run_time`
    seconds and `min_runs` runs have passed after `warmup` runs."""
    import tempfile

    from structprune.export_onnx import onnx_session

    with tempfile.TemporaryDirectory(prefix="structprune-profile-") as tmp:
        session = onnx_session(model, threads=threads, profile_prefix=str(Path(tmp) / "layer"))
        feed = {"input": x.numpy()}
        for _ in range(warmup):
            session.run(None, feed)
        start, runs = time.perf_counter(), 0
        while runs < min_runs or time.perf_counter() - start < min_run_time:
            session.run(None, feed)
            runs += 1
        events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
    return float(np.median(run_kernel_ms(events)[warmup:]))


def run_kernel_ms(events: list[dict]) -> list[float]:
    """Per model run in an ONNX Runtime profile (its events), the milliseconds of its node kernels, layout
    reorders left out."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    begins = [begin for begin, _ in runs]
    totals = [0.0] * len(runs)
    for e in events:
        if e.get("cat") != "Node" or (e.get("args") or {}).get("op_name") in ("ReorderInput", "ReorderOutput"):
            continue
        i = bisect.bisect_right(begins, e["ts"]) - 1  # the last run begun by the node's start: runs do not overlap
        if i >= 0 and e["ts"] <= runs[i][1]:
            totals[i] += e["dur"] / 1e3
    return totals


def _variants(call: ConvCall, groups: tuple[int, ...], taps: tuple[tuple[int, int], ...],
              combine: bool) -> list[tuple[int, tuple[int, int] | None]]:
    kernel = call.conv.kernel_size
    shapes = [(kh, kw) for kh, kw in dict.fromkeys(taps) if kh <= kernel[0] and kw <= kernel[1] and (kh, kw) != kernel]
    block_counts = [1] if _depthwise(call.conv) else list(dict.fromkeys((1, *groups)))
    out: list[tuple[int, tuple[int, int] | None]] = [(g, None) for g in block_counts]
    for shape in shapes:
        out += [(g, shape) for g in block_counts if g == 1 or combine]
    return out


def _depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def _axes(call: ConvCall, blocks: int, round_to: int, points: int) -> tuple[list[int], list[int]] | None:
    """(kept input counts, kept output counts) of one variant's grid; None when G divides no count."""
    conv = call.conv
    if _depthwise(conv):
        return [1], grid_counts(conv.out_channels, round_to, points)
    step = math.lcm(round_to, blocks * conv.groups)
    outs = [c for c in grid_counts(conv.out_channels, step, points) if c % (blocks * conv.groups) == 0]
    ins = [conv.in_channels] if call.first else grid_counts(conv.in_channels, step, points)
    ins = [c for c in ins if c % (blocks * conv.groups) == 0]
    return (ins, outs) if ins and outs else None


def measure_layer(call: ConvCall, runtime: str, batch: int, threads: int, round_to: int, groups: tuple[int, ...],
                  taps: tuple[tuple[int, int], ...], points: int, variant_points: int, combine: bool,
                  min_run_time: float) -> LayerTimes:
    """The grids of one convolution (module doc)."""
    conv, (_, h, w) = call.conv, call.input_shape
    depthwise = _depthwise(conv)
    times = LayerTimes(conv.in_channels, conv.out_channels, (conv.kernel_size[0], conv.kernel_size[1]),
                       call.output_size, depthwise, groups=1 if depthwise else conv.groups)
    for blocks, shape in _variants(call, groups, taps, combine):
        base = blocks == 1 and shape is None
        axes = _axes(call, blocks, round_to, points if base else variant_points)
        if axes is None:
            continue
        ins, outs = axes
        grid = []
        for cin in ins:
            row = []
            for cout in outs:
                n_groups = cout if depthwise else blocks * conv.groups
                real_in = cout if depthwise else cin
                module = FormConv(conv, (h, w), real_in, cout, n_groups, shape or conv.kernel_size)
                row.append(time_form(module, (real_in, h, w), runtime, batch, threads, min_run_time))
            grid.append(row)
        times.grids[variant_key(blocks, shape)] = Grid(ins, outs, grid)
    return times


def fastest_of(first: LayerTimes, second: LayerTimes) -> LayerTimes:
    """One layer's grids from two passes over the same shapes, each shape's smaller time kept."""
    grids = {}
    for key, grid in first.grids.items():
        other = second.grids[key]
        if (grid.ins, grid.outs) != (other.ins, other.outs):
            raise StructpruneError(f"latency model: two passes timed different shapes for variant {key}")
        grids[key] = Grid(grid.ins, grid.outs, np.minimum(np.asarray(grid.ms), np.asarray(other.ms)).tolist())
    return replace(first, grids=grids)


def _check_args(runtime: str, batch: int, threads: int, round_to: int, groups: tuple[int, ...],
                taps: tuple[tuple[int, int], ...], points: int, variant_points: int) -> None:
    if runtime not in MODEL_RUNTIMES:
        raise StructpruneError(f"unknown runtime {runtime!r} for a latency model; choose from {', '.join(MODEL_RUNTIMES)}")
    for name, value in (("batch", batch), ("threads", threads), ("round_to", round_to)):
        if not isinstance(value, int) or value < 1:
            raise StructpruneError(f"{name} must be a positive integer, not {value!r}")
    if not groups or any(not isinstance(g, int) or g < 1 for g in groups):
        raise StructpruneError(f"kernel block counts must be positive integers, not {groups!r}")
    if any(len(t) != 2 or min(t) < 1 for t in taps):
        raise StructpruneError(f"tap shapes must be (kh, kw) pairs of positive integers, not {taps!r}")
    if points < 2 or variant_points < 2:
        raise StructpruneError("a grid needs at least 2 points per axis")


def measure_latency_model(model: nn.Module, input_shape: tuple[int, ...], runtime: str, batch: int, threads: int,
                          round_to: int | None = None, groups: tuple[int, ...] = (1, 2, 4),
                          taps: tuple[tuple[int, int], ...] = DEFAULT_TAPS, points: int = DEFAULT_GRID_POINTS,
                          variant_points: int = 3, combine: bool = False, min_run_time: float = 0.02, network_rounds: int = 7,
                          network_seconds: float = 0.3,
                          calibration_keeps: tuple[float, ...] = CALIBRATION_KEEPS,
                          calibration_repeats: int = 1, grid_repeats: int = 1) -> LatencyModel:
    """Measure `model`'s LatencyModel on this machine (module doc). `points` / `variant_points`: counts per grid
    axis of the plain convolution / of the other variants; `combine`: also time G > 1 with taps (else predicted
    from the two); `min_run_time`: seconds per timed shape; `network_rounds`, `network_seconds`: structprune.bench's
    rounds and sample_seconds for whole networks; `calibration_keeps`: shares of the maps kept by the uniformly
    pruned networks timed whole beside the dense one for the calibration (only 1.0: the dense network alone);
    `calibration_repeats`: separate bench runs of the calibration networks (each network's median ms kept);
    `grid_repeats`: passes over every layer's grids, each shape's fastest time kept (a slow stretch of a shared
    machine then spoils a shape only if it falls on that shape in every pass); `round_to`: the step of the
    kept-map grids (default: this CPU's channel block, fast_forms.default_round_to)."""
    round_to = round_to_or_default(round_to)
    _check_args(runtime, batch, threads, round_to, tuple(groups), tuple(taps), points, variant_points)
    if any(not 0 < k <= 1 for k in calibration_keeps):
        raise StructpruneError(f"calibration shares of kept maps must lie in (0, 1], not {tuple(calibration_keeps)}")
    for name, value in (("calibration", calibration_repeats), ("grid", grid_repeats)):
        if not isinstance(value, int) or value < 1:
            raise StructpruneError(f"{name} repeats must be a positive integer, not {value!r}")
    calls = conv_calls(model, input_shape)
    if not calls:
        raise StructpruneError("the network calls no nn.Conv2d: nothing for a latency model to measure")
    result = LatencyModel(runtime, batch, threads, tuple(input_shape))
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for repeat in range(grid_repeats):
            for call in calls:
                start = time.perf_counter()
                layer = measure_layer(call, runtime, batch, threads, round_to, tuple(groups), tuple(taps), points,
                                      variant_points, combine, min_run_time)
                earlier = result.layers.get(call.name)
                result.layers[call.name] = layer if earlier is None else fastest_of(earlier, layer)
                log.info("latency model: %s (%d→%d maps, %dx%d, input %s) %d variants, %d shapes in %.1f s%s",
                         call.name, call.conv.in_channels, call.conv.out_channels, *call.conv.kernel_size,
                         "x".join(map(str, call.input_shape)), len(layer.grids),
                         sum(len(g.ins) * len(g.outs) for g in layer.grids.values()), time.perf_counter() - start,
                         f" (pass {repeat + 1} of {grid_repeats})" if grid_repeats > 1 else "")
    finally:
        torch.set_num_threads(prev_threads)
    measure_calibration(result, model, round_to, network_rounds, network_seconds, tuple(calibration_keeps),
                        repeats=calibration_repeats)
    return result
