"""Whole networks for the latency model: their timing, and the calibration networks.

Networks are timed with structprune.bench (interleaved rounds, medians; eager: the faster of NCHW and
channels_last; onnxruntime: exported and run as `structprune bench --runtime onnxruntime` runs them), on copies.

The calibration (structprune.latency_model.calibration) times, together, the dense network and uniformly pruned
copies of it: for each share `keep` of CALIBRATION_KEEPS below 1, every conv-rooted channel group keeps that share
of its maps (rounded up to a multiple of `round_to`, at most all; the first maps), compacted. Each becomes one
calibration point: its measured time against the sum of its convolutions' predicted times. A copy that cannot be
built (a network the channel groups or compaction refuse), whose layers have no LayerForm, or that keeps the same
forms as one already taken, is left out (a warning); with the dense network alone, α = 1 and β = its fixed part.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from structprune.bench import Candidate, bench, runtime_candidate
from structprune.errors import StructpruneError
from structprune.latency_model.calibration import CalibrationPoint
from structprune.latency_model.model import LatencyModel

log = logging.getLogger(__name__)

CALIBRATION_KEEPS = (1.0, 0.75, 0.5, 0.25)  # shares of every channel group's maps the calibration networks keep


def network_times(models: dict[str, nn.Module], input_shape: tuple[int, ...], runtime: str, batch: int, threads: int,
                  rounds: int = 5, sample_seconds: float = 0.1) -> dict[str, float]:
    """Median milliseconds per batch of each network, timed together (interleaved rounds) by structprune.bench, on
    copies (bench changes the layout of what it times, under inference mode)."""
    candidates = [runtime_candidate(Candidate(name, copy.deepcopy(m).eval(), tuple(input_shape), {}), runtime, threads)
                  for name, m in models.items()]
    records = bench(candidates, [batch], threads=threads, rounds=rounds, sample_seconds=sample_seconds, progress=False)
    return {r["run"]: float(r["median_ms"]) for r in records}


def uniform_copy(model: nn.Module, input_shape: tuple[int, ...], round_to: int, keep: float) -> nn.Module | None:
    """`model` with every conv-rooted channel group keeping `keep` of its maps (rounded up to a multiple of
    `round_to`, at most all), compacted; None (with a warning) when that cannot be done or prunes nothing."""
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
            log.warning("latency model: keeping %.0f%% of the maps prunes no channel group; no calibration network",
                        100 * keep)
            return None
        return compact(model, mask, sample, groups).eval()
    except (StructpruneError, RuntimeError, ValueError) as exc:
        log.warning("latency model: no calibration network keeping %.0f%% of the maps (%s)", 100 * keep,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return None


def _calibration_networks(latency: LatencyModel, model: nn.Module, round_to: int,
                          keeps: tuple[float, ...]) -> dict[str, tuple[float, nn.Module, float]]:
    """{name: (keep, network, Σ of its convolutions' times)}: the dense network and its distinct uniform copies."""
    from structprune.latency_model.forms import network_forms

    nets = {"dense": (1.0, model, latency.conv_ms({}))}
    seen: list[dict] = [{}]
    for keep in sorted({k for k in keeps if k < 1}, reverse=True):
        net = uniform_copy(model, latency.input_shape, round_to, keep)
        if net is None:
            continue
        try:
            forms = network_forms(net, list(latency.layers))
        except StructpruneError as exc:
            log.warning("latency model: calibration network keeping %.0f%% of the maps left out: %s", 100 * keep, exc)
            continue
        dense = {n: t.dense_form() for n, t in latency.layers.items()}
        changed = {n: f for n, f in forms.items() if f != dense[n]}
        if changed in seen:
            continue  # the rounding made it a network already taken
        seen.append(changed)
        nets[f"uniform-{round(100 * keep)}"] = (keep, net, latency.conv_ms(forms))
    return nets


def measure_calibration(latency: LatencyModel, model: nn.Module, round_to: int, rounds: int, sample_seconds: float,
                        keeps: tuple[float, ...] = CALIBRATION_KEEPS) -> None:
    """Time the dense network and its uniform copies (`keeps` below 1) together; set `network_dense_ms` and
    `calibration` (module doc)."""
    nets = _calibration_networks(latency, model, round_to, keeps)
    times = network_times({name: net for name, (_, net, _) in nets.items()}, latency.input_shape, latency.runtime,
                          latency.batch, latency.threads, rounds, sample_seconds)
    latency.network_dense_ms = times["dense"]
    latency.calibration = [CalibrationPoint(name, keep, conv, times[name]) for name, (keep, _, conv) in nets.items()]
    alpha, beta = latency.coefficients()
    for point in latency.calibration:
        log.info("latency model: %s network %.3f ms measured, convolutions %.3f ms, predicted %.3f ms", point.name,
                 point.network_ms, point.conv_ms, alpha * point.conv_ms + beta)
    log.info("latency model: network ≈ %.3f · Σ convolutions %+.3f ms (%d networks; without calibration the fixed "
             "part would be %.3f ms)", alpha, beta, len(latency.calibration), latency.fixed_ms)
