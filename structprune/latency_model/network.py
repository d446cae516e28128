"""Whole networks for the latency model: their timing, and the calibration networks.

Networks are timed with structprune.bench (interleaved rounds, medians; eager: the faster of NCHW and
channels_last; onnxruntime: exported and run as `structprune bench --runtime onnxruntime` runs them), on copies.

The calibration (structprune.latency_model.calibration) times, together, the dense network and uniformly pruned
copies of it: for each share `keep` of CALIBRATION_KEEPS below 1, every conv-rooted channel group keeps that share
of its maps (rounded up to a multiple of `round_to`, at most all; the first maps), compacted. Each becomes one
calibration point: its measured time against the sum of its convolutions' predicted times. A copy that cannot be
built (a network the channel groups or compaction refuse), whose layers have no LayerForm, or that keeps the same
forms as one already taken, is left out (a warning); with the dense network alone, α = 1 and β = its fixed part.

Two more copies calibrate the fast forms' cost inside the network (γ_blocks, γ_taps): the copy keeping FORM_KEEP
of the maps with kernel blocks (G = FORM_BLOCKS, else the smallest measured G > 1) on every conv where the target
search offers them (structprune.search.target_forms.layer_choices) and the kept maps divide by G, and the same
copy with one intra shape (FORM_TAPS, else the first measured of the search's shapes) on every conv offered
one, chosen by L1 as the target search chooses them (`apply_forms`). Only on convs whose latency grids hold that
variant; none when no conv can take the form, or when the calibration is the dense network alone.

RANDOM_NETWORKS more copies, seeded, keep in each group its own share drawn from [the smallest share of `keeps`,
1] (rounded as above): the structures a search compares are rarely uniform, and a line fitted through uniform
networks alone mispredicted them (docs/benchmarks.md); these put such networks into the fit.
"""

from __future__ import annotations

import copy
import logging
import statistics
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from structprune.bench import Candidate, bench, runtime_candidate
from structprune.errors import StructpruneError
from structprune.latency_model.calibration import CalibrationPoint
from structprune.latency_model.model import LatencyModel, LayerForm

if TYPE_CHECKING:
    from structprune.sparsity.channel_groups import ChannelGroups
    from structprune.sparsity.masks import NetworkMask

log = logging.getLogger(__name__)

CALIBRATION_KEEPS = (1.0, 0.75, 0.5, 0.25)  # shares of every channel group's maps the calibration networks keep
RANDOM_NETWORKS = 4  # calibration networks whose groups keep shares drawn from [the smallest keep, 1], seeded
RANDOM_SEED = 20  # their draw: the same networks on every machine
FORM_KEEP = 0.5  # the share of maps the calibration networks with kernel blocks or an intra shape keep
FORM_BLOCKS = 2  # their kernel blocks G
FORM_TAPS = (2, 3)  # their intra shape


def network_times(models: dict[str, nn.Module], input_shape: tuple[int, ...], runtime: str, batch: int, threads: int,
                  rounds: int = 5, sample_seconds: float = 0.1) -> dict[str, float]:
    """Median milliseconds per batch of each network, timed together (interleaved rounds) by structprune.bench, on
    copies (bench changes the layout of what it times, under inference mode)."""
    candidates = [runtime_candidate(Candidate(name, copy.deepcopy(m).eval(), tuple(input_shape), {}), runtime, threads)
                  for name, m in models.items()]
    records = bench(candidates, [batch], threads=threads, rounds=rounds, sample_seconds=sample_seconds, progress=False)
    return {r["run"]: float(r["median_ms"]) for r in records}


def _uniform_mask(model: nn.Module, groups: ChannelGroups, round_to: int, keep: float,
                  draw: np.random.Generator | None = None) -> NetworkMask:
    """Every conv-rooted group of `groups` keeping `keep` of its maps (rounded up to a multiple of `round_to`, at
    most all; the first maps); with `draw`, each group its own share drawn uniformly from [`keep`, 1]."""
    from structprune.sparsity.masks import NetworkMask

    mask = NetworkMask()
    for group in groups:
        share = keep if draw is None else float(draw.uniform(keep, 1.0))
        kept = min(group.size, max(round_to, -(-round(share * group.size) // round_to) * round_to))
        if group.linear or kept >= group.size:
            continue
        alive = torch.zeros(group.size, dtype=torch.bool)
        alive[:kept] = True
        mask.layer(group.root, model.get_submodule(group.root)).keep_out = alive
    return mask


def uniform_copy(model: nn.Module, input_shape: tuple[int, ...], round_to: int, keep: float,
                 forms: Callable[[nn.Module, ChannelGroups, NetworkMask], None] | None = None,
                 draw: np.random.Generator | None = None) -> nn.Module | None:
    """`model` with every conv-rooted channel group keeping `keep` of its maps (rounded up to a multiple of
    `round_to`, at most all; with `draw`, a share of its own drawn from [keep, 1]), then `forms` added to its
    mask (in place), compacted; None (with a warning) when that cannot be done or prunes nothing."""
    from structprune.compact.compaction import compact
    from structprune.sparsity.channel_groups import find_channel_groups

    what = (f"keeping {100 * keep:.0f}% of the maps" if draw is None else f"keeping {100 * keep:.0f}-100% at random")
    what += " with forms" if forms is not None else ""
    try:
        sample = torch.randn(2, *input_shape)
        model = copy.deepcopy(model).eval()
        groups = find_channel_groups(model, sample)
        mask = _uniform_mask(model, groups, round_to, keep, draw)
        if forms is not None:
            forms(model, groups, mask)
        if not mask.layers:
            log.warning("latency model: %s prunes nothing; no calibration network", what)
            return None
        return compact(model, mask, sample, groups).eval()
    except (StructpruneError, RuntimeError, ValueError) as exc:
        log.warning("latency model: no calibration network %s (%s)", what,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return None


def _form_choices(latency: LatencyModel, kept: dict[str, LayerForm], groups: int,
                  taps: tuple[int, int] | None) -> Callable[[nn.Module, ChannelGroups, NetworkMask], None]:
    """What uniform_copy adds for a calibration network with kernel blocks `groups` (or intra shape `taps`) on
    every conv the target search offers it, whose latency grids hold it (and, for blocks, whose `kept` maps
    divide by G); StructpruneError when no conv can take it."""
    from structprune.latency_model.model import variant_key
    from structprune.search.target_forms import FORM_NAMES, FormChoice, apply_forms, layer_choices

    def add(model: nn.Module, channel_groups: ChannelGroups, mask: NetworkMask) -> None:
        choices = layer_choices(model, channel_groups, FORM_NAMES)
        forms = {}
        for name, choice in choices.items():
            measured = name in latency.layers and variant_key(groups, taps) in latency.layers[name].grids
            form = kept.get(name)
            if taps is not None and measured and taps in choice.shapes:
                forms[name] = FormChoice(shape=taps)
            elif (taps is None and measured and groups in choice.blocks and form is not None
                  and form.kept_in % groups == 0 and form.kept_out % groups == 0):
                forms[name] = FormChoice(groups=groups)
        if not forms:
            raise StructpruneError("no convolution can take that form")
        apply_forms(model, channel_groups, mask, forms, choices)
    return add


def _measured(latency: LatencyModel) -> tuple[int | None, tuple[int, int] | None]:
    """The kernel blocks G and intra shape of the calibration networks with forms: FORM_BLOCKS and FORM_TAPS when
    measured on some conv, else the smallest measured G > 1 and the first measured of the search's shapes."""
    from structprune.latency_model.model import parse_variant
    from structprune.search.target_forms import TAP_SHAPES

    variants = {parse_variant(k) for t in latency.layers.values() for k in t.grids}
    blocks = sorted(g for g, s in variants if g > 1 and s is None)
    shapes = [s for s in (FORM_TAPS, *TAP_SHAPES) if (1, s) in variants]
    return (FORM_BLOCKS if FORM_BLOCKS in blocks else next(iter(blocks), None)), next(iter(shapes), None)


def _calibration_networks(latency: LatencyModel, model: nn.Module, round_to: int, keeps: tuple[float, ...],
                          random_networks: int = RANDOM_NETWORKS,
                          ) -> dict[str, tuple[float, nn.Module, dict[str, LayerForm]]]:
    """{name: (keep, network, its convolutions' forms)}: the dense network, its distinct uniform copies, the
    copies with forms and the random ones (module doc; a random one's keep: the mean share its convs write)."""
    nets: dict[str, tuple[float, nn.Module, dict[str, LayerForm]]] = {"dense": (1.0, model, {})}
    seen: list[dict] = [{}]
    plain = sorted({k for k in keeps if k < 1}, reverse=True)
    blocks, taps = _measured(latency)
    runs: list[tuple[str, float, int, tuple[int, int] | None]] = [(f"uniform-{round(100 * k)}", k, 1, None)
                                                                   for k in plain]
    if plain and blocks is not None:
        runs.append((f"uniform-{round(100 * FORM_KEEP)}-blocks{blocks}", FORM_KEEP, blocks, None))
    if plain and taps is not None:
        runs.append((f"uniform-{round(100 * FORM_KEEP)}-taps{taps[0]}x{taps[1]}", FORM_KEEP, 1, taps))
    plain_forms: dict[float, dict[str, LayerForm]] = {}  # of the plain copies: where kernel blocks divide the maps
    for name, keep, groups, shape in runs:
        if groups > 1 and keep not in plain_forms:
            net = uniform_copy(model, latency.input_shape, round_to, keep)
            plain_forms[keep] = (_forms(latency, net, name) if net is not None else None) or {}
        formed = None if groups == 1 and shape is None else _form_choices(latency, plain_forms.get(keep, {}), groups,
                                                                          shape)
        net = uniform_copy(model, latency.input_shape, round_to, keep, formed)
        forms = None if net is None else _forms(latency, net, name)
        if net is None or forms is None:
            continue
        if formed is None:
            plain_forms[keep] = forms
        dense = {n: t.dense_form() for n, t in latency.layers.items()}
        changed = {n: f for n, f in forms.items() if f != dense[n]}
        if changed in seen:
            continue  # the rounding made it a network already taken
        seen.append(changed)
        nets[name] = (keep, net, forms)
    draw = np.random.default_rng(RANDOM_SEED)
    for i in range(random_networks if plain else 0):
        net = uniform_copy(model, latency.input_shape, round_to, min(plain), draw=draw)
        forms = None if net is None else _forms(latency, net, f"random-{i + 1}")
        if net is not None and forms is not None:
            kept = [f.kept_out / latency.layers[n].out_channels for n, f in forms.items()]
            nets[f"random-{i + 1}"] = (float(np.mean(kept)), net, forms)
    return nets


def _forms(latency: LatencyModel, net: nn.Module, name: str) -> dict[str, LayerForm] | None:
    """The forms of a calibration network's convolutions; None (a warning) when some have no LayerForm."""
    from structprune.latency_model.forms import network_forms

    try:
        return network_forms(net, list(latency.layers))
    except StructpruneError as exc:
        log.warning("latency model: calibration network %s left out: %s", name, exc)
        return None


def measure_calibration(latency: LatencyModel, model: nn.Module, round_to: int, rounds: int, sample_seconds: float,
                        keeps: tuple[float, ...] = CALIBRATION_KEEPS, random_networks: int = RANDOM_NETWORKS,
                        repeats: int = 1) -> None:
    """Time the dense network, its uniform copies (`keeps` below 1), the copies with forms and `random_networks`
    random copies together, in `repeats` (at least 1, checked by measure_latency_model) separate bench runs (each
    network's median ms over them); set `network_dense_ms` and `calibration` (module doc)."""
    nets = _calibration_networks(latency, model, round_to, keeps, random_networks)
    runs = [network_times({name: net for name, (_, net, _) in nets.items()}, latency.input_shape, latency.runtime,
                          latency.batch, latency.threads, rounds, sample_seconds) for _ in range(repeats)]
    times = {name: statistics.median(run[name] for run in runs) for name in nets}
    latency.network_dense_ms = times["dense"]
    latency.calibration = [CalibrationPoint(name, keep, latency.conv_ms(forms), times[name], *latency.form_counts(forms))
                           for name, (keep, _, forms) in nets.items()]
    c = latency.coefficients()
    for point in latency.calibration:
        log.info("latency model: %s network %.3f ms measured, convolutions %.3f ms (%d with kernel blocks, %d with an "
                 "intra shape), predicted %.3f ms", point.name, point.network_ms, point.conv_ms, point.blocks,
                 point.taps, c.predict(point.conv_ms, point.blocks, point.taps))
    log.info("latency model: network ≈ %.3f · Σ convolutions %+.3f ms %+.4f ms per conv with kernel blocks %+.4f ms "
             "per conv with an intra shape (%d networks; without calibration the fixed part would be %.3f ms)",
             c.alpha, c.beta, c.gamma_blocks, c.gamma_taps, len(latency.calibration), latency.fixed_ms)
