"""Pruning a network by mask search: layer by layer, up a ladder of ratios, within a tolerance, resumable.

Order: for each granularity in the order given (e.g. channel, then intra), each convolution from the input
side to the output side. Per (granularity, layer) the rungs of a ladder are tried in increasing pruning
ratio (channel / kernel scale: fractions of the layer's original maps / kernels pruned; intra scale: tap
counts in decreasing order). Channel and kernel rungs nest: a rung prunes further among the units the
previous rung kept. Intra rungs replace the layer's pattern; taps pruned before come back at zero.

One rung:
  1. a candidate mask for the layer is chosen by `method` on the *score* subset of the validation split:
       pf / epf     particle filter / evolutionary PF (seeded with the L1 candidate unless `seed_with_l1=False`)
       l1           largest L1 magnitude (maps, kernels; per input map the pattern keeping the most |w|)
       random-best  best of N random candidates, N = particles × generations (the PF's scoring budget)
       tp-l2        Torch-Pruning's GroupMagnitudeImportance (L2 over the whole coupled group: the map's filter,
                    its batch norm and the next layer's input weights); channel scale only
  2. its MCR is checked on the *check* subset, disjoint from the score subset (the best of many candidates
     looks better than it is on the images that chose it);
  3. with `--max`: accepted when check MCR − unpruned check MCR ≤ tolerance; if not, the model is retrained
     `step_epochs` with the candidate held and checked again; a rung that still fails is undone and ends
     the layer. With a fixed `ratio` there is one rung per layer, accepted, retrained `step_epochs`.
After the last layer the network is retrained `final_epochs` with every mask held.

Options: `bn_batches` re-estimates the batch-norm statistics after the scored layer for every candidate on
that many training batches (scoring.LayerScorer), and those of the whole network for the chosen candidate
before its check (kept if the rung is accepted, restored if it is undone). `scope="global"` replaces the per-layer ladder by one
channel search over every layer's maps at a fixed overall ratio; with `latency_weight` λ > 0 its objective
adds λ × the conv latency predicted from a table measured on this machine (latency.py).

Resume: the output folder holds state/model.safetensors and state/driver.json (saved at the start of every
rung) and state/pf.json (after every generation); the same command continues from the last generation.
search.json (every generation: best and mean score, kept fraction per layer) is rewritten atomically.
The finished run replaces the work folder in one rename.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from structprune.arch import example_input
from structprune.data import Dataset, Split
from structprune.errors import StructpruneError
from structprune.jsonio import read_json, write_json_atomic
from structprune.metrics import size_metrics
from structprune.output import Output, fingerprint_files
from structprune.retrain import retrain_masked
from structprune.runfiles import LATENCY_FILE, MODEL_FILE, PF_STATE_FILE, SEARCH_FILE, SEARCH_STATE_FILE, STATE_DIR
from structprune.runfolder import Run, as_output, load_state, save_run
from structprune.search.backends import make_backend
from structprune.search.latency import LatencyTable, measure_latency_table
from structprune.search.particle_filter import BitSpace, ChoiceSpace, ParticleFilter, PFConfig, Space
from structprune.search.scoring import (
    ChainChannelScorer,
    LayerScorer,
    ScoreSet,
    as_chain,
    channel_masks_from_bits,
    conv_layers,
    intra_masks_from_choices,
    kernel_groups_in_use,
    kernel_masks_from_units,
    kernel_units,
    reestimate_norms,
)
from structprune.sparsity.granularity import (
    Granularity,
    IntraPattern,
    KernelForm,
    KernelStructure,
    require_kernel_form,
    require_patterns,
)
from structprune.sparsity.kernel_blocks import assign_output_blocks, block_masks, input_blocks, output_blocks
from structprune.sparsity.masking import MaskApplier
from structprune.sparsity.masks import MASKS_FILE, LayerMask, NetworkMask
from structprune.sparsity.method import SEARCH_METHODS, Method, require_method
from structprune.train import TrainConfig, evaluate

log = logging.getLogger(__name__)

DEFAULT_LADDER = (0.25, 0.5, 0.625, 0.75, 0.8125, 0.875, 0.9375)


@dataclass(frozen=True)
class SearchConfig:
    """A network search. `tolerance` is an MCR fraction (0.002 = 0.2 points); `ratio=None` means --max."""

    method: Method = Method.PF  # one of SEARCH_METHODS
    granularities: tuple[Granularity, ...] = (Granularity.CHANNEL,)  # searched in this order
    tolerance: float = 0.002
    ratio: float | None = None
    ladder: tuple[float, ...] = DEFAULT_LADDER
    particles: int = 16
    generations: int = 6
    temperature: float = 0.002
    seed_with_l1: bool = True
    score_images: int = 2000
    check_images: int = 2000
    tie: float = 1e-3
    bn_batches: int = 0  # re-estimate batch-norm statistics per candidate on this many training batches of 64
    step_epochs: int = 1
    step_images: int | None = None  # training images per retraining between steps (None: all)
    final_epochs: int = 1
    final_images: int | None = None  # training images for the final retraining (None: all)
    lr: float = 0.01
    layers: tuple[str, ...] | None = None  # convolutions to prune (None: all)
    kernel: KernelForm = field(default_factory=KernelForm)  # free, structured:G (G >= 1) or blocks:2 (half the kernels)
    intra_shared: bool = False  # intra scale: one pattern for the whole layer instead of one per input map
    intra_patterns: tuple[IntraPattern, ...] | None = None  # intra scale: the choices (None: all)
    scope: str = "layer"  # "layer": one layer at a time; "global": one channel search over every layer at once
    latency_weight: float = 0.0  # λ, MCR per millisecond of predicted conv latency (see latency.py)
    latency_table: str | None = None  # a saved table (JSON); measured into the output folder when absent
    backend: str = "inprocess"
    workers: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        require_method(self.method, SEARCH_METHODS, "search method")
        if not self.granularities or not all(isinstance(g, Granularity) for g in self.granularities):
            raise StructpruneError(f"granularities must be a non-empty tuple of Granularity (e.g. "
                                   f"tuple(Granularity.parse_list('channel,intra'))), not {self.granularities!r}")
        if not 0.0 <= self.tolerance < 1.0:
            raise StructpruneError(f"tolerance {self.tolerance * 100:g} points is out of range (0 to 100 points)")
        if self.ratio is not None and not 0.0 < self.ratio < 1.0:
            raise StructpruneError(f"pruning ratio {self.ratio} must be between 0 and 1 (exclusive)")
        if not self.ladder or any(not 0.0 < r < 1.0 for r in self.ladder):
            raise StructpruneError("ladder ratios must lie between 0 and 1 (exclusive)")
        if self.score_images < 1 or self.check_images < 1:
            raise StructpruneError("score and check subsets need at least one image each")
        if self.step_epochs < 0 or self.final_epochs < 0:
            raise StructpruneError("retraining epochs must be >= 0")
        PFConfig(particles=self.particles, generations=self.generations, temperature=self.temperature)
        if self.scope not in ("layer", "global"):
            raise StructpruneError(f"unknown scope {self.scope!r}; choose layer or global")
        if self.scope == "global" and (self.ratio is None or tuple(self.granularities) != (Granularity.CHANNEL,)):
            raise StructpruneError("the global search takes --granularity channel and a --ratio")
        if self.bn_batches < 0:
            raise StructpruneError("batch-norm recalibration batches must be >= 0")
        if self.latency_weight < 0:
            raise StructpruneError(f"latency weight {self.latency_weight} must be >= 0")
        require_kernel_form(self.kernel)
        require_patterns(self.intra_patterns)
        if self.kernel.structure is KernelStructure.BLOCKS and self.kernel.groups != 2:
            raise StructpruneError(f"the search chooses 2 kernel blocks per layer, not {self.kernel.groups}")

    @property
    def budget(self) -> int:
        """Candidates scored per rung by random best-of-N: the particle filter's budget."""
        return self.particles * self.generations


# ----------------------------------------------------------------------------------------- mask helpers
def _prev_conv(model: nn.Module, layer: str) -> str | None:
    convs = conv_layers(model)
    i = convs.index(layer)
    return convs[i - 1] if i > 0 else None


def alive_inputs(model: nn.Module, mask: NetworkMask, layer: str) -> torch.Tensor:
    """bool [I]: input maps of `layer` still produced by the previous convolution."""
    conv = model.get_submodule(layer)
    prev = _prev_conv(model, layer)
    if prev is None or prev not in mask.layers or mask.layers[prev].keep_out is None:
        return torch.ones(conv.in_channels, dtype=torch.bool)
    return mask.layers[prev].keep_out.clone()


def alive_outputs(model: nn.Module, mask: NetworkMask, layer: str) -> torch.Tensor:
    conv = model.get_submodule(layer)
    lm = mask.layers.get(layer)
    return torch.ones(conv.out_channels, dtype=torch.bool) if lm is None or lm.keep_out is None else lm.keep_out.clone()


def alive_kernels(model: nn.Module, mask: NetworkMask, layer: str) -> torch.Tensor:
    """bool [O, I]: kernels not yet pruned at any scale."""
    alive = alive_outputs(model, mask, layer)[:, None] & alive_inputs(model, mask, layer)[None, :]
    lm = mask.layers.get(layer)
    if lm is not None and lm.keep_kernel is not None:
        alive &= lm.keep_kernel
    return alive


def kept_weight_fraction(model: nn.Module, mask: NetworkMask, layer: str) -> float:
    """Fraction of the layer's conv weights (and so its MACs) that the mask keeps."""
    conv = model.get_submodule(layer)
    lm = mask.layers.get(layer) or LayerMask(shape=tuple(conv.weight.shape))
    weight = lm.weight_mask() * alive_inputs(model, mask, layer).float().view(1, -1, 1, 1)  # [O, I, kh, kw]
    return float(weight.mean())


def conv_output_sizes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Output pixels (H·W) of every conv, from one forward pass."""
    sizes: dict[str, int] = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda _m, _i, out, n=n: sizes.__setitem__(n, out.shape[-1] * out.shape[-2])) for n in conv_layers(model)]
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    for h in hooks:
        h.remove()
    return sizes


def conv_macs(model: nn.Module, mask: NetworkMask, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(masked, dense) multiply–accumulates of the convolutions for one image."""
    sizes = conv_output_sizes(model, input_shape)
    masked = dense = 0
    for name in conv_layers(model):
        w = model.get_submodule(name).weight
        dense += sizes[name] * w.numel()
        masked += round(sizes[name] * w.numel() * kept_weight_fraction(model, mask, name))
    return masked, dense


def _with_layer(mask: NetworkMask, layer: str, shape: tuple[int, ...], **fields: Any) -> NetworkMask:
    out = copy.deepcopy(mask)
    lm = out.layers.get(layer) or LayerMask(shape=tuple(shape))
    out.layers[layer] = replace(lm, **fields)
    return out


# ------------------------------------------------------------------------------------------ one step
@dataclass
class Rung:
    """One candidate step: the particle space of a layer at a granularity and pruning level."""

    granularity: Granularity
    layer: str
    ratio: float  # fraction of the layer's units (intra: taps) pruned at this rung
    space: Space
    alive: torch.Tensor | None = None  # channel: bool [O]; kernel: bool [O, I]
    units: torch.Tensor | None = None  # kernel: long [O, I], the particle bit deciding each kernel (-1: dead)
    in_blocks: torch.Tensor | None = None  # kernel blocks: long [I], the block of each input map (-1: dead);
    # the particle's bits are the blocks of the alive output maps
    patterns: list[IntraPattern] = field(default_factory=list)  # intra: the choices
    shared: bool = False  # intra: one choice for every input map of the layer
    layers: list[str] = field(default_factory=list)  # global: the layers whose maps `alive` concatenates
    sizes: list[int] = field(default_factory=list)  # global: maps per layer
    shapes: list[tuple[int, ...]] = field(default_factory=list)  # global: weight shape per layer

    def decode(self, particles: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
        if self.granularity is Granularity.CHANNEL:
            return channel_masks_from_bits(particles, self.alive)
        if self.granularity is Granularity.KERNEL and self.in_blocks is not None:
            rows = self.alive.any(1)
            out_blocks = torch.full((len(particles), len(rows)), -1, dtype=torch.long)
            out_blocks[:, rows] = torch.from_numpy(particles.astype(np.int64))
            keep = block_masks(out_blocks, self.in_blocks, self.alive).float()  # [P, O, I]
            return keep.view(*keep.shape, 1, 1).expand(*keep.shape, *shape[2:])
        if self.granularity is Granularity.KERNEL:
            return kernel_masks_from_units(particles, self.units, shape)
        return intra_masks_from_choices(self._per_input(particles, shape), self.patterns, shape)

    def _per_input(self, particles: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return np.repeat(particles, shape[1], axis=1) if self.shared else particles

    def to_mask(self, particle: np.ndarray, mask: NetworkMask, shape: tuple[int, ...] | None) -> NetworkMask:
        if self.layers:  # global: split the concatenated keep vector by layer
            keep = channel_masks_from_bits(particle[None], self.alive)[0]
            for name, part, shp in zip(self.layers, keep.split(self.sizes), self.shapes, strict=True):
                mask = _with_layer(mask, name, shp, keep_out=part.clone())
            return mask
        if self.granularity is Granularity.CHANNEL:
            return _with_layer(mask, self.layer, shape, keep_out=channel_masks_from_bits(particle[None], self.alive)[0])
        if self.granularity is Granularity.KERNEL:
            keep = self.decode(particle[None], shape)[0, :, :, 0, 0].bool()
            return _with_layer(mask, self.layer, shape, keep_kernel=keep)
        choices = self._per_input(particle[None], shape)[0]
        return _with_layer(mask, self.layer, shape, intra=[self.patterns[int(c)] for c in choices])


def rungs_for(model: nn.Module, mask: NetworkMask, g: Granularity, layer: str, cfg: SearchConfig) -> list[Rung]:
    """The ladder of a layer at one granularity, from the current mask (already-passed levels skipped)."""
    conv = model.get_submodule(layer)
    shape = tuple(conv.weight.shape)
    ratios = [cfg.ratio] if cfg.ratio is not None else sorted(cfg.ladder)
    out: list[Rung] = []
    if g is Granularity.CHANNEL:
        alive = alive_outputs(model, mask, layer)
        for r in ratios:
            keep = max(1, round((1 - r) * shape[0]))
            if keep < int(alive.sum()) and (not out or keep < out[-1].space.keep):
                out.append(Rung(g, layer, r, BitSpace(int(alive.sum()), keep), alive=alive))
    elif g is Granularity.KERNEL and cfg.kernel.structure is KernelStructure.BLOCKS:
        block_rung = kernel_block_rung(model, mask, layer, cfg.kernel.groups)
        out = [block_rung] if block_rung is not None else []
    elif g is Granularity.KERNEL:
        alive = alive_kernels(model, mask, layer)
        kernel_groups = cfg.kernel.groups if cfg.kernel.structure is KernelStructure.STRUCTURED else 0  # 0: free kernels
        units = kernel_units(alive, kernel_groups)
        count = int(units.max()) + 1
        # units of the unpruned layer: O·I kernels, or (groups in use) × I input maps
        full = shape[0] * shape[1] if kernel_groups == 0 else kernel_groups_in_use(alive, kernel_groups) * shape[1]
        for r in ratios:
            keep = max(1, round((1 - r) * full))
            if keep < count and (not out or keep < out[-1].space.keep):
                out.append(Rung(g, layer, r, BitSpace(count, keep), alive=alive, units=units))
    else:
        positions = shape[2] * shape[3]
        allowed = IntraPattern.all_patterns(positions) if cfg.intra_patterns is None else list(cfg.intra_patterns)
        available = sorted({len(p.taps(positions)) for p in allowed} - {positions, 0})
        if not available:
            raise StructpruneError(f"{layer}: no allowed intra-kernel pattern prunes a kernel of {positions} positions")
        # the tap counts nearest to the ladder's ratios, fewest pruned first
        counts = sorted({min(available, key=lambda c: (abs(c - (1 - r) * positions), -c)) for r in ratios}, reverse=True)
        for c in counts:
            patterns = [p for p in IntraPattern.with_taps(positions, c) if p in allowed]
            choices = 1 if cfg.intra_shared else shape[1]
            out.append(Rung(g, layer, 1 - c / positions, ChoiceSpace(choices, len(patterns)), patterns=patterns,
                            shared=cfg.intra_shared))
    return out


def kernel_block_rung(model: nn.Module, mask: NetworkMask, layer: str, blocks: int) -> Rung | None:
    """The one kernel-blocks rung of a layer: its input maps keep the blocks of the previous conv's outputs, and
    the particle assigns the alive output maps to blocks, half to each. None where the layer reads the image,
    is blocked already, or has an odd number of alive output maps (two equal blocks are what compact into one
    grouped convolution)."""
    prev = _prev_conv(model, layer)
    if prev is None:
        return None
    lm = mask.layers.get(layer)
    if lm is not None and lm.keep_kernel is not None and input_blocks(lm.keep_kernel) is not None:
        return None
    alive = alive_kernels(model, mask, layer)
    n = int(alive.any(1).sum())  # alive output maps
    prev_mask = mask.layers.get(prev)
    in_blocks = output_blocks(None if prev_mask is None else prev_mask.keep_kernel, alive_outputs(model, mask, prev),
                              blocks)
    read = alive.any(0) & (in_blocks >= 0)
    per_block = torch.bincount(in_blocks[read], minlength=blocks)
    if n % blocks or int(per_block.min()) == 0 or int(per_block.min()) != int(per_block.max()):
        log.info("%s: %d alive output maps, %s input maps per block: no kernel blocks", layer, n, per_block.tolist())
        return None
    return Rung(Granularity.KERNEL, layer, 1 - 1 / blocks, BitSpace(n, n // blocks), alive=alive, in_blocks=in_blocks)


def global_rung(model: nn.Module, mask: NetworkMask, layers: list[str], ratio: float) -> Rung:
    """One channel rung over every layer's maps at once: keep (1 - ratio) of all maps, anywhere."""
    alive = torch.cat([alive_outputs(model, mask, name) for name in layers])
    shapes = [tuple(model.get_submodule(name).weight.shape) for name in layers]
    keep = max(len(layers), round((1 - ratio) * len(alive)))
    return Rung(Granularity.CHANNEL, "*", ratio, BitSpace(int(alive.sum()), min(keep, int(alive.sum()))), alive=alive,
                layers=list(layers), sizes=[s[0] for s in shapes], shapes=shapes)


def tp_particle(model: nn.Module, rung: Rung) -> np.ndarray:
    """Torch-Pruning's group L2 importance of the layer's maps: keep the most important alive ones."""
    import torch_pruning as tp

    if rung.granularity is not Granularity.CHANNEL or rung.layers:
        raise StructpruneError("--method tp-l2 applies to layer-by-layer channel pruning only")
    conv = model.get_submodule(rung.layer)
    was_training = model.training
    with torch.enable_grad():  # the graph cannot be built under no_grad (TORCH-PRUNING-NOTES)
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input(model))
    model.train(was_training)
    group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(conv.out_channels)))
    scores = tp.importance.GroupMagnitudeImportance(p=2)(group)[rung.alive]
    bits = np.zeros(len(scores), dtype=np.int16)
    bits[torch.argsort(scores, descending=True, stable=True)[: rung.space.keep].numpy()] = 1
    return bits


def l1_particle(model: nn.Module, rung: Rung) -> np.ndarray:
    """The L1-magnitude candidate of a rung, as a particle (global: L1 over the layer's mean L1)."""
    if rung.layers:
        norms = [model.get_submodule(n).weight.detach().abs().sum((1, 2, 3)) for n in rung.layers]
        scores = torch.cat([v / v.mean().clamp_min(1e-12) for v in norms])[rung.alive]
        bits = np.zeros(len(scores), dtype=np.int16)
        bits[torch.argsort(scores, descending=True, stable=True)[: rung.space.keep].numpy()] = 1
        return bits
    w = model.get_submodule(rung.layer).weight.detach().abs()  # [O, I, kh, kw]
    if rung.granularity is Granularity.CHANNEL:
        scores = w.sum((1, 2, 3))[rung.alive]
    elif rung.granularity is Granularity.KERNEL and rung.in_blocks is not None:
        rows = rung.alive.any(1)
        out_blocks = assign_output_blocks(w.sum((2, 3)).cpu(), rung.alive, rung.in_blocks, 2)
        return (out_blocks[rows] == 1).numpy().astype(np.int16)
    elif rung.granularity is Granularity.KERNEL:
        per_kernel, units = w.sum((2, 3)).cpu(), rung.units
        scores = torch.zeros(int(units.max()) + 1).index_add_(0, units[units >= 0], per_kernel[units >= 0])
    else:
        per_tap = w.sum(0).flatten(1)  # [I, kh·kw]
        table = torch.stack([per_tap[:, list(p.taps(per_tap.shape[1]))].sum(1) for p in rung.patterns], 1)  # [I, patterns]
        if rung.shared:
            table = table.sum(0, keepdim=True)
        return table.argmax(1).cpu().numpy().astype(np.int16)
    bits = np.zeros(len(scores), dtype=np.int16)
    bits[torch.argsort(scores, descending=True, stable=True)[: rung.space.keep].numpy()] = 1
    return bits


# ------------------------------------------------------------------------------------------ the search
@dataclass
class DriverState:
    """Where a search stands; saved as state/driver.json with the model weights beside it."""

    step: int = 0  # index into the (granularity, layer) plan
    rung: int = 0  # index into that step's ladder (rebuilt from the mask on resume)
    mask: dict[str, Any] = field(default_factory=lambda: NetworkMask().to_json())
    steps: list[dict[str, Any]] = field(default_factory=list)  # one record per rung tried
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per PF generation
    base_check_mcr: float | None = None
    final_done: bool = False


class Search:
    """Runs one SearchConfig on a loaded run, writing progress into `out`."""

    def __init__(self, run: Run, data: Dataset, cfg: SearchConfig, out: Output | str | Path):
        self.run, self.model, self.data, self.cfg = run, run.model, data, cfg
        self.output = as_output(out, "prune", inputs=(run.path,))
        self.out = self.output.path
        self.state_dir = self.output.checkpoints / STATE_DIR
        if len(data.val) == 0:
            raise StructpruneError("the validation split is empty: nothing to score candidates on")
        n_score = min(cfg.score_images, len(data.val) // 2) if len(data.val) > 1 else 1
        n_check = min(cfg.check_images, len(data.val) - n_score)
        if n_check < 1:
            raise StructpruneError(f"the validation split has {len(data.val)} image(s): need disjoint score and check subsets")
        self.score_set = ScoreSet(data.val.x[:n_score], data.val.y[:n_score])
        self.check_split = Split(data.val.x[n_score:n_score + n_check], data.val.y[n_score:n_score + n_check])
        self.grans = list(cfg.granularities)
        convs = conv_layers(self.model)
        if cfg.layers is not None:
            unknown = [name for name in cfg.layers if name not in convs]
            if unknown:
                raise StructpruneError(f"no convolution named {unknown[0]!r}; the network has {', '.join(convs)}")
            convs = [name for name in convs if name in cfg.layers]
        self.convs = convs
        self.plan = [(Granularity.CHANNEL, "*")] if cfg.scope == "global" else [(g, layer) for g in self.grans for layer in convs]
        self.applier = MaskApplier(self.model)
        self.input_shape = tuple(run.arch["input_shape"])
        self.state = DriverState()
        self.identity = {**self._fingerprint(), "data": data.fingerprint(), "source_files": fingerprint_files(run.path)}

    # -- persistence
    def _fingerprint(self) -> dict[str, Any]:
        return json.loads(json.dumps({"config": asdict(self.cfg), "source": str(self.run.path)}))  # as saved

    def _save_driver(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().clone() for k, v in self.model.state_dict().items()}
        tmp = self.state_dir / f".{MODEL_FILE}.tmp"
        save_file(state, str(tmp))
        tmp.replace(self.state_dir / MODEL_FILE)
        write_json_atomic(self.state_dir / SEARCH_STATE_FILE, {**self._fingerprint(), "state": asdict(self.state)})

    def _save_pf(self, pf: ParticleFilter) -> None:
        """After a generation: the filter, and the driver's history (the weights do not change during a rung)."""
        write_json_atomic(self.state_dir / PF_STATE_FILE, {"step": self.state.step, "rung": self.state.rung,
                                                       "pf": pf.state_dict()})
        write_json_atomic(self.state_dir / SEARCH_STATE_FILE, {**self._fingerprint(), "state": asdict(self.state)})

    def _try_resume(self) -> bool:
        path = self.state_dir / SEARCH_STATE_FILE
        if not path.exists():
            return False
        saved = read_json(path)
        if {k: saved.get(k) for k in ("config", "source")} != self._fingerprint():
            raise StructpruneError(f"{self.state_dir} holds a search with other settings; pass --restart to discard it")
        self.state = DriverState(**saved["state"])
        self.model.load_state_dict(load_state(self.state_dir / MODEL_FILE))
        log.info("resuming %s at step %d, rung %d", self.out, self.state.step, self.state.rung)
        return True

    def _write_search_json(self) -> None:
        """Progress a user can follow while the search runs, in the staging folder (the run folder gets it at the end)."""
        write_json_atomic(self.output.checkpoints / SEARCH_FILE, self.search_record())

    def search_record(self) -> dict[str, Any]:
        return {"format": "structprune-search/1", "config": asdict(self.cfg), "order": [[g.value, n] for g, n in self.plan],
                "base_check_mcr": self.state.base_check_mcr, "steps": self.state.steps, "history": self.state.history}

    # -- pieces
    @property
    def mask(self) -> NetworkMask:
        return NetworkMask.from_json(self.state.mask)

    def kept_fractions(self, mask: NetworkMask) -> dict[str, float]:
        return {name: round(kept_weight_fraction(self.model, mask, name), 5) for name in conv_layers(self.model)}

    def check_mcr(self, mask: NetworkMask) -> float:
        with self.applier.applied(mask):
            return evaluate(self.model, self.check_split).mcr

    def recalibrate_norms(self, mask: NetworkMask) -> dict[str, torch.Tensor] | None:
        """With bn_batches > 0: re-estimate every batch norm's statistics under `mask` on that many training
        batches (no gradient, cumulative average), as the candidates were scored. Returns the statistics it
        replaced (restore them if the candidate is undone), or None when there is nothing to do."""
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if self.cfg.bn_batches < 1 or not norms:
            return None
        saved = {k: v.detach().clone() for k, v in self.model.state_dict().items() if "running_" in k
                 or "num_batches_tracked" in k}
        images = self.data.train.x[: self.cfg.bn_batches * 64]
        with self.applier.applied(mask):
            reestimate_norms(norms, (lambda start=start: self.model(images[start:start + 64])
                                     for start in range(0, len(images), 64)))
        return saved

    def retrain(self, mask: NetworkMask, epochs: int, seed: int, images: int | None) -> None:
        if epochs < 1:
            return
        data = self.data
        if images is not None and images < len(data.train):
            order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))[:images]
            data = replace(data, train=Split(data.train.x[order], data.train.y[order]))
        cfg = TrainConfig(epochs=epochs, lr=self.cfg.lr, seed=seed)
        retrain_masked(self.model, mask, data, cfg, groups=self.applier.groups)
        self.model.eval()

    def shape_of(self, layer: str) -> tuple[int, ...] | None:
        return None if layer == "*" else tuple(self.model.get_submodule(layer).weight.shape)

    def latency_table(self) -> LatencyTable:
        if self.cfg.latency_table is not None:
            return LatencyTable.from_json(read_json(self.cfg.latency_table))
        path = self.state_dir / LATENCY_FILE
        if not path.exists():
            table = measure_latency_table(self.model, self.input_shape)
            self.state_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, table.to_json())
        return LatencyTable.from_json(read_json(path))

    def _objective(self, rung: Rung, score_fn):
        """Global rungs: add λ·predicted latency, and rule out masks that empty a layer."""
        table = self.latency_table() if self.cfg.latency_weight > 0 else None
        first_in = self.model.get_submodule(rung.layers[0]).in_channels

        def objective(particles: np.ndarray) -> np.ndarray:
            keeps = rung.decode(particles, None)  # [P, total maps]
            per_layer = torch.stack([part.sum(1) for part in keeps.split(rung.sizes, dim=1)], 1)  # [P, layers]
            scores = score_fn(particles) + 10.0 * (per_layer == 0).any(1).double().numpy()
            if table is not None:
                for p, counts in enumerate(per_layer.tolist()):
                    ins = [first_in, *counts[:-1]]
                    scores[p] += self.cfg.latency_weight * table.network_ms(
                        {name: (i, o) for name, i, o in zip(rung.layers, ins, counts, strict=True)})
            return scores

        objective.close = getattr(score_fn, "close", None)
        return objective

    def choose(self, rung: Rung, mask: NetworkMask, seed: int) -> tuple[np.ndarray, float]:
        """The method's candidate for one rung, and its score on the score subset."""
        shape = self.shape_of(rung.layer)
        self.applier.apply_(mask)  # pruned weights are zero in the model the scorer sees
        if rung.layers:
            scorer = ChainChannelScorer(self.model, rung.layers, self.score_set, tie=self.cfg.tie)
            score_fn = self._objective(rung, make_backend(self.cfg.backend, scorer, lambda p: rung.decode(p, None),
                                                          self.cfg.workers))
        else:
            recal = self.data.train.x[: self.cfg.bn_batches * 64] if self.cfg.bn_batches > 0 else None
            scorer = LayerScorer(self.model, rung.layer, rung.granularity, self.score_set, tie=self.cfg.tie,
                                 recalibrate=recal)
            score_fn = make_backend(self.cfg.backend, scorer, lambda p: rung.decode(p, shape), self.cfg.workers)
        try:
            if self.cfg.method in (Method.L1, Method.TP_L2):
                best = l1_particle(self.model, rung) if self.cfg.method is Method.L1 else tp_particle(self.model, rung)
                return best, float(score_fn(best[None])[0])
            if self.cfg.method is Method.RANDOM_BEST:
                rng = np.random.default_rng(seed)
                candidates = rung.space.sample(rng, self.cfg.budget)
                scores = np.concatenate([score_fn(chunk) for chunk in np.array_split(candidates, self.cfg.generations)])
                return candidates[int(np.argmin(scores))], float(scores.min())
            return self._particle_filter(rung, mask, seed, score_fn)
        finally:
            close = getattr(score_fn, "close", None)
            if close is not None:
                close()

    def _particle_filter(self, rung: Rung, mask: NetworkMask, seed: int, score_fn) -> tuple[np.ndarray, float]:
        pf_cfg = PFConfig(particles=self.cfg.particles, generations=self.cfg.generations,
                          temperature=self.cfg.temperature, evolutionary=self.cfg.method is Method.EPF, seed=seed)
        pf_path = self.state_dir / PF_STATE_FILE
        pf = None
        if pf_path.exists():
            saved = read_json(pf_path)
            if saved.get("step") == self.state.step and saved.get("rung") == self.state.rung:
                pf = ParticleFilter.from_state(saved["pf"])
        if pf is None:
            init = l1_particle(self.model, rung)[None] if self.cfg.seed_with_l1 else None
            pf = ParticleFilter(rung.space, pf_cfg, init=init)
        bar = tqdm(total=pf_cfg.generations, initial=pf.generation, desc=f"{rung.layer} {rung.granularity.value} "
                   f"{rung.ratio:.3f}", unit="gen", leave=False, disable=None)

        shape = self.shape_of(rung.layer)

        def after(current: ParticleFilter) -> None:
            rec = current.history[-1]
            kept = self.kept_fractions(rung.to_mask(current.best, mask, shape))
            self.state.history.append({"step": self.state.step, "layer": rung.layer, "granularity": rung.granularity.value,
                                       "ratio": rung.ratio, **rec, "kept_fraction": kept})
            self._save_pf(current)
            self._write_search_json()
            bar.update(1)
            bar.set_postfix(best=f"{rec['best']:.4f}", ess=f"{rec['ess']:.1f}")

        pf.run(score_fn, on_generation=after)
        bar.close()
        return pf.best, pf.best_score

    # -- the loop
    def run_search(self) -> tuple[NetworkMask, dict[str, Any]]:
        """Search every step (resuming if the output folder holds a matching state), then retrain."""
        resumed = self._try_resume()
        if not resumed:  # with bn_batches, under the same re-estimation as the candidates: its own cost is no pruning's
            norms = self.recalibrate_norms(NetworkMask())
            self.state.base_check_mcr = evaluate(self.model, self.check_split).mcr
            if norms is not None:
                self.model.load_state_dict(norms, strict=False)
            self._save_driver()
        base = self.state.base_check_mcr
        while self.state.step < len(self.plan):
            g, layer = self.plan[self.state.step]
            mask = self.mask
            if layer == "*":
                ladder = [global_rung(self.model, mask, self.convs, self.cfg.ratio)] if self.state.rung == 0 else []
            else:
                ladder = rungs_for(self.model, mask, g, layer, self.cfg)
            if g is Granularity.INTRA:  # intra rungs do not nest: their position is remembered, not derived
                ladder = ladder[self.state.rung:]
            if not ladder:
                self._next_step()
                continue
            rung = ladder[0]
            seed = self.cfg.seed * 100003 + self.state.step * 101 + len(self.state.steps)
            shape = self.shape_of(layer)
            particle, score = self.choose(rung, mask, seed)
            trial = rung.to_mask(particle, mask, shape)
            norms_before = self.recalibrate_norms(trial)
            check = self.check_mcr(trial)
            record = {"step": self.state.step, "layer": layer, "granularity": g.value, "ratio": rung.ratio,
                      "score": score, "check_mcr": check, "retrained": False}
            fixed = self.cfg.ratio is not None
            ok = fixed or self.within_tolerance(check, base)
            if not ok and self.cfg.step_epochs > 0:
                backup = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                self.retrain(trial, self.cfg.step_epochs, seed, self.cfg.step_images)
                check = record["check_mcr_after_retrain"] = self.check_mcr(trial)
                record["retrained"] = True
                ok = self.within_tolerance(check, base)
                if not ok:
                    self.model.load_state_dict(backup)
            elif fixed and self.cfg.step_epochs > 0:
                self.retrain(trial, self.cfg.step_epochs, seed, self.cfg.step_images)
                record["retrained"] = True
                record["check_mcr_after_retrain"] = self.check_mcr(trial)
            record["accepted"] = ok
            record["kept_fraction"] = self.kept_fractions(trial if ok else mask)
            self.state.steps.append(record)
            log.info("%s %s ratio %.3f: score %.4f, check MCR %.4f (base %.4f) -> %s", layer, g.value, rung.ratio,
                     score, check, base, "kept" if ok else "undone")
            if ok:
                self.applier.apply_(trial)
                self.state.mask = trial.to_json()
                self.state.rung += 1
                if fixed:
                    self._next_step()
            else:
                if norms_before is not None:
                    self.model.load_state_dict(norms_before, strict=False)
                self._next_step()
            (self.state_dir / PF_STATE_FILE).unlink(missing_ok=True)
            self._save_driver()
            self._write_search_json()
        if not self.state.final_done:
            mask = self.mask
            self.retrain(mask, self.cfg.final_epochs, self.cfg.seed * 7919 + 1, self.cfg.final_images)
            self.applier.apply_(mask)
            self.state.final_done = True
            self._save_driver()
        return self.mask, self.search_record()

    def within_tolerance(self, check: float, base: float) -> bool:
        """MCRs are counts over the check images: a rise of exactly the tolerance is within it (no float rounding
        may turn 0.021 - 0.019 into more than 0.002)."""
        return check - base <= self.cfg.tolerance + 1e-9

    def _next_step(self) -> None:
        self.state.step += 1
        self.state.rung = 0


def search_run(run: Run, data: Dataset, cfg: SearchConfig, out: Output | str | Path,
               extra_config: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """Search, retrain, and save the pruned run (masks.json, search.json, metrics with conv MACs) in `out`."""
    search = Search(run, data, cfg, out)
    started = time.perf_counter()
    with search.output.staged(search.identity):
        mask, record = search.run_search()
    seconds = time.perf_counter() - started  # this invocation only (a resumed search counts its last part)
    model = search.model
    masked, dense = conv_macs(model, mask, search.input_shape)
    val, test = evaluate(model, data.val), evaluate(model, data.test)
    metrics = {"val_mcr": val.mcr, "test_mcr": test.mcr, "val_loss": val.loss, "test_loss": test.loss,
               **size_metrics(model), "test_images": len(data.test), "conv_macs": masked, "conv_macs_dense": dense,
               "conv_macs_removed": 1 - masked / dense if dense else 0.0,
               "kept_fraction": search.kept_fractions(mask), "search_seconds": round(seconds, 1),
               "source_metrics": {k: run.metrics[k] for k in ("val_mcr", "test_mcr", "macs") if k in run.metrics}}
    extra = {MASKS_FILE: mask.to_json(), SEARCH_FILE: record}
    if cfg.latency_weight > 0:
        table = search.latency_table()
        extra[LATENCY_FILE] = table.to_json()
        first_in = model.get_submodule(search.convs[0]).in_channels
        outs = [int(alive_outputs(model, mask, n).sum()) for n in search.convs]
        dense_outs = [model.get_submodule(n).out_channels for n in search.convs]
        metrics["predicted_conv_ms"] = table.network_ms(dict(zip(search.convs, zip([first_in, *outs[:-1]], outs, strict=True),
                                                                 strict=True)))
        metrics["predicted_conv_ms_dense"] = table.network_ms(dict(zip(
            search.convs, zip([first_in, *dense_outs[:-1]], dense_outs, strict=True), strict=True)))
    config = {**run.config, **(extra_config or {}), "search": asdict(cfg), "source_run": str(run.path)}
    if not math.isfinite(metrics["test_mcr"]):
        raise StructpruneError("the pruned network produced non-finite outputs")
    return save_run(search.output, model, run.arch, metrics, config, extra_json=extra), metrics


__all__ = ["Search", "SearchConfig", "as_chain", "conv_macs", "search_run"]
