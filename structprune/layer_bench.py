"""Layer by layer: where a compact network keeps, or loses, the speed its MAC count promises.

Each layer of a reference network (usually the dense one) is timed beside the layer of the same name in
another network (its pruned or compact form), on random inputs of the shapes each sees inside its network,
all in one process with `structprune.bench` (interleaved rounds, medians, faster layout). A record gives both
times, the MAC ratio, the efficiency (latency ratio / MAC ratio) and the PyTorch kernels that ran the
other network's convolutions: `onednn`, or the reference paths PyTorch picks for small single images
(`thnn`, im2col + GEMM; `slow_dilated`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from structprune.arch import input_shape_of
from structprune.bench import Candidate, bench
from structprune.errors import StructpruneError
from structprune.layers import layer_names

KERNELS = {"aten::mkldnn_convolution": "onednn", "aten::_slow_conv2d_forward": "thnn",
           "aten::slow_conv_dilated2d": "slow_dilated"}


@dataclass(frozen=True)
class LayerCall:
    name: str
    module: nn.Module
    input_shape: tuple[int, ...]  # one sample, no batch dimension


def layer_calls(model: nn.Module) -> list[LayerCall]:
    """The layers (`structprune.layers.is_layer`: compact convolutions count as one) one forward pass calls,
    in order; a layer called twice is listed at its first call."""
    calls: dict[str, LayerCall] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple, _out: Any) -> None:
            if name not in calls and args and isinstance(args[0], torch.Tensor):
                calls[name] = LayerCall(name, module, tuple(args[0].shape[1:]))
        return record

    hooks = [model.get_submodule(n).register_forward_hook(hook(n)) for n in layer_names(model)]
    try:
        with torch.no_grad():
            model.eval()(torch.randn(1, *input_shape_of(model)))
    finally:
        for h in hooks:
            h.remove()
    return list(calls.values())


def _macs(module: nn.Module, shape: tuple[int, ...]) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(torch.randn(1, *shape))
    return int(counter.get_total_flops() // 2)


def conv_kernels(module: nn.Module, shape: tuple[int, ...], batch: int) -> str:
    """The PyTorch convolution kernels one call of `module` runs on a channels_last input, e.g. 'onednn'."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "99")  # else the profiler writes two lines to stderr per use
    x = torch.randn(batch, *shape)
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof, torch.no_grad():
        module(x)
    names = [KERNELS[e.name] for e in prof.events() if e.name in KERNELS]
    return "+".join(dict.fromkeys(names)) or "-"


def compare_layers(reference: nn.Module, other: nn.Module, batches: list[int], threads: int = 2, rounds: int = 5,
                   sample_seconds: float = 0.05, clock: str = "wall", progress: bool = True) -> list[dict[str, Any]]:
    """One record per (layer, batch) for the layers both networks call under the same name."""
    ref_calls = {c.name: c for c in layer_calls(reference)}
    pairs = [(ref_calls[c.name], c) for c in layer_calls(other) if c.name in ref_calls]
    if not pairs:
        raise StructpruneError("the two networks share no layer names: nothing to compare layer by layer")
    candidates: list[Candidate] = []
    for ref, oth in pairs:
        for tag, call in (("reference", ref), ("other", oth)):
            layouts = None if len(call.input_shape) == 3 else ("nchw",)
            candidates.append(Candidate(f"{call.name}|{tag}", call.module, call.input_shape, {}, layouts=layouts))
    timed = bench(candidates, batches, threads=threads, rounds=rounds, sample_seconds=sample_seconds, clock=clock,
                  progress=progress)
    ms = {(r["run"], r["batch"]): r["median_ms"] for r in timed}
    records: list[dict[str, Any]] = []
    for ref, oth in pairs:
        computes = isinstance(ref.module, nn.Conv2d | nn.Linear)
        mac_ratio = _macs(ref.module, ref.input_shape) / max(_macs(oth.module, oth.input_shape), 1) if computes else None
        convolves = isinstance(ref.module, nn.Conv2d)
        for b in batches:
            r_ms, o_ms = ms[(f"{ref.name}|reference", b)], ms[(f"{oth.name}|other", b)]
            records.append({
                "layer": ref.name, "type": type(ref.module).__name__, "other_type": type(oth.module).__name__,
                "reference_input": list(ref.input_shape), "other_input": list(oth.input_shape), "batch": b,
                "threads": threads, "reference_ms": r_ms, "other_ms": o_ms, "latency_ratio": r_ms / o_ms,
                "mac_ratio": mac_ratio, "efficiency": (r_ms / o_ms) / mac_ratio if mac_ratio else None,
                "other_kernels": conv_kernels(oth.module, oth.input_shape, b) if convolves else None,
            })
    return records
