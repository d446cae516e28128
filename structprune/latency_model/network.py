"""Whole networks for the latency model: their timing, and the fixed part's share that shrinks with activations.

Networks are timed with structprune.bench (interleaved rounds, medians; eager: the faster of NCHW and
channels_last; onnxruntime: exported and run as `structprune bench --runtime onnxruntime` runs them), on copies.

The fixed part (model module doc) is measured on the dense network. When asked, a second network is timed beside
it: a uniform copy, every channel group keeping a quarter of its maps (rounded up to `round_to`), compacted. Its fixed part
(its measured time minus its convolutions' predicted times) against the dense one gives the share of the fixed part
that shrinks with the activation volume:
    share = (fixed_dense − fixed_uniform) / (fixed_dense · (1 − volume_uniform / volume_dense)), clipped to [0, 1]
Where the copy cannot be built (a network the channel groups or compaction refuse) or the dense fixed part is not
positive, or the copy keeps more than MAX_VOLUME of the activations (a network of few maps), the share is 0: the
fixed part stays constant.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from structprune.bench import Candidate, bench, runtime_candidate
from structprune.errors import StructpruneError
from structprune.latency_model.model import LatencyModel

log = logging.getLogger(__name__)

UNIFORM_KEEP = 0.25  # the uniform copy keeps this fraction of each channel group's maps
MAX_VOLUME = 0.8  # a copy keeping more of the activations than this says too little about the share: it stays 0


def network_times(models: dict[str, nn.Module], input_shape: tuple[int, ...], runtime: str, batch: int, threads: int,
                  rounds: int = 5, sample_seconds: float = 0.1) -> dict[str, float]:
    """Median milliseconds per batch of each network, timed together (interleaved rounds) by structprune.bench, on
    copies (bench changes the layout of what it times, under inference mode)."""
    candidates = [runtime_candidate(Candidate(name, copy.deepcopy(m).eval(), tuple(input_shape), {}), runtime, threads)
                  for name, m in models.items()]
    records = bench(candidates, [batch], threads=threads, rounds=rounds, sample_seconds=sample_seconds, progress=False)
    return {r["run"]: float(r["median_ms"]) for r in records}


def uniform_copy(model: nn.Module, input_shape: tuple[int, ...], round_to: int,
                 keep: float = UNIFORM_KEEP) -> nn.Module | None:
    """`model` with every conv-rooted channel group keeping `keep` of its maps (rounded up to a multiple of
    `round_to`, at most all), compacted; None (with a warning) when that cannot be done."""
    from structprune.compact.compaction import compact
    from structprune.sparsity.channel_groups import find_channel_groups
    from structprune.sparsity.masks import NetworkMask

    try:
        sample = torch.randn(2, *input_shape)
        model = copy.deepcopy(model).eval()
        groups = find_channel_groups(model, sample)
        mask = NetworkMask()
        for group in groups:
            kept = min(group.size, max(round_to, -(-round(keep * group.size) // round_to) * round_to))
            if group.linear or kept >= group.size:
                continue
            alive = torch.zeros(group.size, dtype=torch.bool)
            alive[:kept] = True
            mask.layer(group.root, model.get_submodule(group.root)).keep_out = alive
        if not mask.layers:
            log.warning("latency model: no channel group to prune; the fixed part stays constant")
            return None
        return compact(model, mask, sample, groups).eval()
    except (StructpruneError, RuntimeError, ValueError) as exc:
        log.warning("latency model: no uniformly pruned copy (%s); the fixed part stays constant",
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return None


def measure_fixed_part(latency: LatencyModel, model: nn.Module, round_to: int, rounds: int, sample_seconds: float,
                       share: bool = True) -> None:
    """Time the dense network (and, with `share`, its uniform copy) and set `network_dense_ms` and `fixed_share`."""
    from structprune.latency_model.forms import network_forms

    shape, runtime, batch, threads = latency.input_shape, latency.runtime, latency.batch, latency.threads
    uniform = uniform_copy(model, shape, round_to) if share else None
    nets = {"dense": model, **({"uniform": uniform} if uniform is not None else {})}
    times = network_times(nets, shape, runtime, batch, threads, rounds, sample_seconds)
    latency.network_dense_ms, latency.fixed_share = times["dense"], 0.0
    fixed = latency.fixed_ms
    log.info("latency model: dense network %.3f ms, of which %.3f ms outside the convolutions (fixed part)",
             times["dense"], fixed)
    if uniform is None:
        return
    try:
        forms = network_forms(uniform, list(latency.layers))
    except StructpruneError as exc:
        log.warning("latency model: %s; the fixed part stays constant", exc)
        return
    volume = latency.volume_fraction(forms)
    fixed_uniform = times["uniform"] - (latency.network_ms(forms) - fixed)  # its time minus its convolutions'
    if fixed > 0 and volume <= MAX_VOLUME:
        latency.fixed_share = min(1.0, max(0.0, (fixed - fixed_uniform) / (fixed * (1 - volume))))
    log.info("latency model: uniform copy (%.0f%% of the activations) %.3f ms, fixed part %.3f ms: %.0f%% of the "
             "fixed part shrinks with the activations", 100 * volume, times["uniform"], fixed_uniform,
             100 * latency.fixed_share)
