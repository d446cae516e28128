"""The Python API for a network of your own (any `nn.Module` of Conv2d, BatchNorm2d and Linear layers with
residual adds, concatenations, depthwise convolutions, ...), in a few calls:

    masks = structprune.prune(model, x, granularity="channel,intra", ratio=0.5)   # L1 (or random) selection
    masks = structprune.search(model, x, structprune.mcr_scorer(loader), ratio=0.5)  # particle filter
    small = structprune.compact(model, masks)      # a new, smaller network computing the masked one
    structprune.apply_masks(model, masks)          # or: zero the pruned weights in place
    structprune.save("runs/mine", small, example_input=x)
    small = structprune.load("runs/mine", model_factory=MyNet)

`x` is an example input batch (it is traced to find coupled channels; its shape is kept in the masks so
later calls need not repeat it). Masks are a `NetworkMask` (masks.json via `to_json`/`from_json`).

Run folders: a network created by `structprune.models.create` (the zoo, or your factory registered with
`@structprune.models.register`) is saved with its registry name and rebuilt by name, so every CLI verb
reads it. A network of your own class is saved with its layer specs and weights only (arch.json names its
class, "model": null; nothing is pickled, and no code is imported from a file): `load` then takes
`model_factory`, a no-argument callable building the unpruned network, and resizes its layers to the
saved (pruned, compacted) ones before loading the weights.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from structprune.arch import FACTORY_ATTR, describe, describe_unregistered
from structprune.compact.compaction import compact as _compact
from structprune.errors import StructpruneError
from structprune.jsonio import read_json
from structprune.metrics import count_macs, count_params, state_bytes
from structprune.rebuild import rebuild
from structprune.runfolder import ARCH_FILE, MODEL_FILE, load_run, load_state, save_run
from structprune.search.particle_filter import BitSpace, ChoiceSpace, ParticleFilter, PFConfig
from structprune.sparsity.channel_groups import ChannelGroups, find_channel_groups
from structprune.sparsity.fast_forms import EdgeOptions, resolve
from structprune.sparsity.granularity import Granularity, IntraPattern, KernelForm, KernelStructure
from structprune.sparsity.masking import MaskApplier
from structprune.sparsity.masks import MASKS_FILE, LayerMask, NetworkMask
from structprune.sparsity.method import ONE_SHOT_METHODS, Method
from structprune.sparsity.selection import SelectionConfig, select
from structprune.sparsity.selection_base import kernels_left

log = logging.getLogger(__name__)

ScoreFn = Callable[[nn.Module], float]  # the network (masked in place while called) -> score, lower is better
SELECTION_OPTIONS = ("scope", "seed", "kernel", "round_to", "intra_shared", "intra_patterns", "linear_ratio")
PRUNE_OPTIONS = (*SELECTION_OPTIONS, "intra_free")


# ----------------------------------------------------------------------------------------------- checks
def _check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise StructpruneError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    return model


def _check_masks(masks: Any) -> NetworkMask:
    if not isinstance(masks, NetworkMask):
        raise StructpruneError(f"masks must be a NetworkMask (from structprune.prune or structprune.search), "
                               f"not {type(masks).__name__}")
    return masks


def _sample(model: nn.Module, example_input: Any, masks: NetworkMask | None = None) -> torch.Tensor:
    """A one-image input for tracing: from `example_input`, else the masks' recorded shape, else the registry."""
    if example_input is not None:
        if not isinstance(example_input, torch.Tensor) or example_input.dim() < 2 or len(example_input) == 0:
            raise StructpruneError("example_input must be an input batch tensor, e.g. torch.randn(1, 3, 32, 32)")
        return example_input[:1]
    if masks is not None and masks.input_shape is not None:
        return torch.randn(1, *masks.input_shape)
    info = getattr(model, FACTORY_ATTR, None)
    if info is not None:
        return torch.randn(1, *info["input_shape"])
    raise StructpruneError("give example_input (an input batch, e.g. torch.randn(1, 3, 32, 32)): the network was not "
                           "created by structprune.models.create() and the masks record no input shape")


def _runs_on(model: nn.Module, sample: torch.Tensor) -> None:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(sample.to(device))
    except Exception as exc:  # the user's network: any failure is reported as one line
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise StructpruneError(f"the model does not run on example_input of shape {list(sample.shape)} "
                               f"({type(exc).__name__}: {first})") from None
    finally:
        model.train(was_training)


def _granularities(granularity: str | Iterable[str]) -> list[Granularity]:
    if isinstance(granularity, str):
        return Granularity.parse_list(granularity)
    try:
        return Granularity.parse_list(",".join(str(g) for g in granularity))
    except TypeError:
        raise StructpruneError(f"granularity must be a string such as 'channel,intra', not {granularity!r}") from None


def _ratios(ratio: float | Iterable[float], count: int) -> list[float]:
    values = [ratio] if isinstance(ratio, int | float) else list(ratio)
    if not values or not all(isinstance(r, int | float) and not isinstance(r, bool) for r in values):
        raise StructpruneError(f"ratio must be a number in [0, 1) or one per granularity, not {ratio!r}")
    if len(values) not in (1, count):
        raise StructpruneError(f"{len(values)} ratios given for {count} granularities")
    for r in values:
        if not 0.0 <= r < 1.0:
            raise StructpruneError(f"pruning ratio {r} must be in [0, 1)")
    return [float(r) for r in values] * (count if len(values) == 1 else 1)


def _selection_config(method: Method | str, options: dict[str, Any]) -> SelectionConfig:
    unknown = sorted(set(options) - set(SELECTION_OPTIONS))
    if unknown:
        raise StructpruneError(f"unknown option(s) {', '.join(unknown)}; options: {', '.join(SELECTION_OPTIONS)}")
    if isinstance(options.get("kernel"), str):
        options = {**options, "kernel": KernelForm.parse(options["kernel"])}
    if options.get("intra_patterns") is not None:
        options = {**options, "intra_patterns": _patterns(options["intra_patterns"])}
    return SelectionConfig(method=Method.parse(method, ONE_SHOT_METHODS, "selection method"), **options)


def _edge_config(method: Method | str, grans: list[Granularity], ratios: list[float],
                 options: dict[str, Any]) -> tuple[list[float], SelectionConfig]:
    """`prune`'s options resolved to the fast forms where not given (structprune.sparsity.fast_forms)."""
    unknown = sorted(set(options) - set(PRUNE_OPTIONS))
    if unknown:
        raise StructpruneError(f"unknown option(s) {', '.join(unknown)}; options: {', '.join(PRUNE_OPTIONS)}")
    kernel, structure = options.get("kernel"), None
    if kernel == KernelStructure.BLOCKS:  # "blocks" without G: G from the kernel ratio
        kernel, structure = None, KernelStructure.BLOCKS
    elif isinstance(kernel, str):
        kernel = KernelForm.parse(kernel)
    patterns = options.get("intra_patterns")
    edge = EdgeOptions(kernel=kernel, kernel_structure=structure, round_to=options.get("round_to"),
                       intra_shared=bool(options.get("intra_shared", False)),
                       intra_patterns=None if patterns is None else _patterns(patterns),
                       intra_free=bool(options.get("intra_free", False)))
    fields = {k: options[k] for k in ("scope", "seed", "linear_ratio") if k in options}
    return resolve(grans, ratios, Method.parse(method, ONE_SHOT_METHODS, "selection method"), edge, **fields)


def _patterns(value: Any) -> tuple[IntraPattern, ...]:
    """IntraPatterns, or (start, stride) pairs, as a tuple of IntraPattern."""
    try:
        return tuple(p if isinstance(p, IntraPattern) else IntraPattern(int(p[0]), int(p[1])) for p in value)
    except (TypeError, ValueError, IndexError):
        raise StructpruneError(f"intra_patterns must list IntraPatterns or (start, stride) pairs, not {value!r}") from None


def _groups(model: nn.Module, sample: torch.Tensor) -> ChannelGroups:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return find_channel_groups(model, sample.to(device))


# ----------------------------------------------------------------------------------------------- prune
def prune(
    model: nn.Module,
    example_input: torch.Tensor | None,
    granularity: str | Iterable[str] = "channel",
    ratio: float | Iterable[float] = 0.5,
    method: Method | str = Method.L1,
    base: NetworkMask | None = None,
    **options: Any,
) -> NetworkMask:
    """Masks pruning `ratio` of each layer's units at each granularity ("channel", "kernel", "intra", or several:
    "channel,intra"; one ratio, or one per granularity), chosen by L1 magnitude ("l1") or at random ("random"): a
    Method or its text.

    The model is not changed. `base`: earlier masks to nest in. `options`: scope ("layer" | "global"), seed,
    kernel (a KernelForm, or its text: "unstructured", "structured:G", "blocks:G", "blocks"), round_to,
    intra_shared, intra_patterns (IntraPatterns or (start, stride) pairs), intra_free, linear_ratio (hidden units
    of fully connected layers).

    Unless told otherwise, the masks take the forms that run fast once compacted: kernel blocks with G of 2, 4 or 8,
    the nearest the kernel ratio (the kernel ratio becomes 1 - 1/G, logged); one shared intra pattern per layer
    among those that compact into one smaller convolution, at the tap count nearest the ratio's, none on layers
    reading 3 or fewer maps; kept maps rounded up to a multiple of 8. `kernel="unstructured"`, `intra_free=True`
    (any pattern, per input map) or `intra_patterns`, and `round_to=1` restore free masks and exact counts.
    """
    _check_model(model)
    sample = _sample(model, example_input, base)
    _runs_on(model, sample)
    grans = _granularities(granularity)
    ratios, cfg = _edge_config(method, grans, _ratios(ratio, len(grans)), options)
    if base is not None:
        _check_masks(base)
    masks = select(model, grans, ratios, cfg, groups=_groups(model, sample), base=base)
    masks.input_shape = tuple(sample.shape[1:])
    return masks


# ----------------------------------------------------------------------------------------------- masks
def apply_masks(model: nn.Module, masks: NetworkMask) -> nn.Module:
    """Zero `model`'s pruned weights in place (coupled batch norms and consumers included); returns the model."""
    _check_model(model)
    _check_masks(masks)
    needs_groups = any(lm.keep_out is not None for _, lm in masks)
    groups = _groups(model, _sample(model, None, masks)) if needs_groups else None
    MaskApplier(model, groups).apply_(masks)
    return model


def compact(model: nn.Module, masks: NetworkMask, example_input: torch.Tensor | None = None) -> nn.Module:
    """A new, smaller network computing what `model` computes under `masks` (the model is not changed): pruned
    channels removed, kernel and intra-kernel masks turned into smaller dense convolutions. Checked against
    the masked network on a random input (one line of error if they differ)."""
    _check_model(model)
    _check_masks(masks)
    sample = _sample(model, example_input, masks)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return _compact(model, masks, sample=sample.to(device))


# ----------------------------------------------------------------------------------------------- scoring
def _batches(loader: Iterable[Any]) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    for batch in loader:
        if not isinstance(batch, list | tuple) or len(batch) < 2 or not all(
                isinstance(t, torch.Tensor) for t in batch[:2]):
            raise StructpruneError("the data loader must yield (inputs, labels) batches of tensors")
        yield batch[0], batch[1]


def mcr_scorer(loader: Iterable[Any], tie: float = 1e-3, max_batches: int | None = None) -> ScoreFn:
    """A score function for `search`: the misclassification rate of the network on `loader` (any iterable of
    (inputs, labels) batches, e.g. a torch DataLoader), plus `tie` × the mean cross-entropy, which orders
    candidates of equal MCR (0: the plain MCR). The network runs in eval mode, on its own device;
    `max_batches` limits the batches read per call."""
    if not isinstance(loader, Iterable):
        raise StructpruneError(f"mcr_scorer needs a data loader (an iterable of batches), not {type(loader).__name__}")
    if tie < 0:
        raise StructpruneError(f"tie {tie} must be >= 0")

    @torch.no_grad()
    def score(model: nn.Module) -> float:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        was_training = model.training
        model.eval()
        wrong, ce, count = 0, 0.0, 0
        try:
            for i, (x, y) in enumerate(_batches(loader)):
                if max_batches is not None and i >= max_batches:
                    break
                logits = model(x.to(device))
                y = y.to(device)
                wrong += int((logits.argmax(1) != y).sum())
                ce += float(F.cross_entropy(logits, y, reduction="sum"))
                count += len(y)
        finally:
            model.train(was_training)
        if count == 0:
            raise StructpruneError("the data loader yielded no images")
        return wrong / count + tie * ce / count

    return score


# ----------------------------------------------------------------------------------------------- search
@dataclass
class _Unit:
    """One layer's choice at one granularity, as a particle space: `decode` turns a particle into LayerMask fields."""

    name: str
    space: BitSpace | ChoiceSpace
    init: np.ndarray  # the L1 choice, as a particle
    decode: Callable[[np.ndarray], dict[str, Any]]


def _bits_decoder(field_name: str, alive: torch.Tensor) -> Callable[[np.ndarray], dict[str, Any]]:
    """Particles over the alive entries of `alive` -> {field_name: bool tensor of alive's shape}."""
    idx = torch.nonzero(alive.flatten()).flatten()

    def decode(bits: np.ndarray) -> dict[str, Any]:
        keep = torch.zeros(alive.numel(), dtype=torch.bool)
        keep[idx[torch.from_numpy(bits.astype(np.int64)).bool()]] = True
        return {field_name: keep.view(alive.shape)}

    return decode


def _bits_unit(name: str, field_name: str, alive: torch.Tensor, kept: torch.Tensor) -> _Unit | None:
    """The unit choosing which of the alive entries stay, as many as `kept` keeps (None: nothing to choose)."""
    kept = kept & alive
    if not 0 < int(kept.sum()) < int(alive.sum()):
        return None
    init = kept.flatten()[alive.flatten()].numpy().astype(np.int16)
    return _Unit(name, BitSpace(int(alive.sum()), int(kept.sum())), init, _bits_decoder(field_name, alive))


def _channel_units(candidate: NetworkMask, start: NetworkMask) -> list[_Unit]:
    """A unit per channel group (conv or hidden linear layer) whose kept maps the L1 candidate set."""
    units = []
    for name, lm in candidate:
        if lm.keep_out is None:
            continue
        before = start.layers.get(name)
        alive = before.keep_out if before is not None and before.keep_out is not None else torch.ones_like(lm.keep_out)
        units.append(_bits_unit(name, "keep_out", alive, lm.keep_out))
    return [u for u in units if u is not None]


def _kernel_units(candidate: NetworkMask, start: NetworkMask, model: nn.Module, groups: ChannelGroups) -> list[_Unit]:
    """A unit per conv whose kernels the L1 candidate set, over the kernels left between kept channels."""
    units = []
    for name, lm in candidate:
        if lm.keep_kernel is not None:
            alive = kernels_left(name, model.get_submodule(name), start, groups)
            units.append(_bits_unit(name, "keep_kernel", alive, lm.keep_kernel))
    return [u for u in units if u is not None]


def _intra_decoder(patterns: list[IntraPattern], inputs: int, shared: bool) -> Callable[[np.ndarray], dict[str, Any]]:
    def decode(choices: np.ndarray) -> dict[str, Any]:
        picks = [patterns[int(c)] for c in choices]
        return {"intra": picks * inputs if shared else picks}

    return decode


def _intra_units(candidate: NetworkMask, cfg: SelectionConfig) -> list[_Unit]:
    """A unit per conv whose intra-kernel patterns the L1 candidate set: one of the patterns with the same tap
    count (among `intra_patterns`) per input map, or per layer (`intra_shared`)."""
    allowed = None if cfg.intra_patterns is None else set(cfg.intra_patterns)
    shared = cfg.intra_shared
    units = []
    for name, lm in candidate:
        if lm.intra is None or all(p is None for p in lm.intra):
            continue
        positions = lm.kernel_positions
        taps = len(next(p for p in lm.intra if p is not None).taps(positions))
        patterns = [p for p in IntraPattern.with_taps(positions, taps) if allowed is None or p in allowed]
        chosen = [patterns.index(p) if p in patterns else 0 for p in lm.intra]
        init = np.array(chosen[:1] if shared else chosen, dtype=np.int16)
        units.append(_Unit(name, ChoiceSpace(len(init), len(patterns)), init,
                           _intra_decoder(patterns, len(chosen), shared)))
    return units


def _with(masks: NetworkMask, name: str, model: nn.Module, fields: dict[str, Any]) -> NetworkMask:
    out = copy.deepcopy(masks)
    layer = out.layer(name, model.get_submodule(name))
    for key, value in fields.items():
        setattr(layer, key, value)
    return out


class _Scorer:
    """score_fn on `model` with a candidate mask applied (restored afterwards); counts the calls."""

    def __init__(self, model: nn.Module, groups: ChannelGroups, score_fn: ScoreFn):
        self.model, self.applier, self.score_fn, self.calls = model, MaskApplier(model, groups), score_fn, 0

    def __call__(self, candidate: NetworkMask) -> float:
        self.calls += 1
        with self.applier.applied(candidate):
            value = self.score_fn(self.model)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise StructpruneError(f"score_fn returned {type(value).__name__}, not a number") from None
        if not math.isfinite(value):
            raise StructpruneError(f"score_fn returned {value}; it must return a finite number")
        return value


def _search_unit(unit: _Unit, current: NetworkMask, model: nn.Module, scorer: _Scorer, config: PFConfig) -> NetworkMask:
    """`current` with the unit's layer set to the best particle the filter finds (the L1 choice is one of them)."""

    def to_mask(particle: np.ndarray) -> NetworkMask:
        return _with(current, unit.name, model, unit.decode(particle))

    pf = ParticleFilter(unit.space, config, init=unit.init[None])
    best = pf.run(lambda batch: np.array([scorer(to_mask(p)) for p in batch]))
    log.info("search: %s: score %.5f (generation 0 best %.5f)", unit.name, pf.best_score, pf.history[0]["best"])
    return to_mask(best)


def search(
    model: nn.Module,
    example_input: torch.Tensor | None,
    score_fn: ScoreFn,
    granularity: str | Iterable[str] = "channel",
    ratio: float | Iterable[float] = 0.5,
    particles: int = 16,
    generations: int = 6,
    temperature: float = 0.002,
    evolutionary: bool = False,
    seed: int = 0,
    base: NetworkMask | None = None,
    **options: Any,
) -> NetworkMask:
    """Masks at `ratio` chosen by the particle filter (Anwar et al. 2017), scored by `score_fn(model) -> float`
    (lower is better: an MCR, e.g. `mcr_scorer(loader)`, or a loss), called with the candidate masks applied
    to `model` in place (the weights are restored after every call).

    Per granularity (channel, then kernel, then intra): start from the L1 masks at that scale, given the masks
    searched so far (the library's L1 selection with the same options: free kernels, every intra pattern and
    exact counts unless they say otherwise; they fix each layer's count of kept units). Then, per layer (channel
    group, or convolution), a particle filter seeded with the layer's current choice searches which units it
    keeps, every other layer held; the best particle replaces the choice. The current choice is among the scored
    candidates, so with a deterministic score_fn no layer's search makes the
    score worse: with one granularity, the result never scores worse than the L1 masks. Cost: at most
    particles × generations calls of `score_fn` per layer. `temperature` is in score units (0.002 suits an
    MCR; scale it for a loss); `evolutionary` adds crossover and elitism (EPF). Kernel masks are searched
    free (kernel "unstructured").
    """
    _check_model(model)
    if not callable(score_fn):
        raise StructpruneError(f"score_fn must be a function of the network returning a number, not {type(score_fn).__name__}")
    cfg = _selection_config(Method.L1, {**options, "seed": seed})
    if cfg.kernel != KernelForm():
        raise StructpruneError(f"search chooses free kernel masks (kernel 'unstructured', not {str(cfg.kernel)!r}); "
                               "structured and block kernel masks come from structprune.prune")
    pf_config = PFConfig(particles=particles, generations=generations, temperature=temperature,
                         evolutionary=evolutionary, elite=min(2, particles - 1), seed=seed)
    sample = _sample(model, example_input, base)
    _runs_on(model, sample)
    grans = _granularities(granularity)
    ratios = _ratios(ratio, len(grans))
    if base is not None:
        _check_masks(base)
    groups = _groups(model, sample)
    scorer = _Scorer(model, groups, score_fn)
    order = {Granularity.CHANNEL: 0, Granularity.KERNEL: 1, Granularity.INTRA: 2}
    current = copy.deepcopy(base) if base is not None else NetworkMask()
    searched = 0
    for g, r in sorted(zip(grans, ratios, strict=True), key=lambda gr: order[gr[0]]):
        start = current
        current = select(model, [g], [r], cfg, groups=groups, base=start)  # the L1 candidate at this scale
        if g is Granularity.CHANNEL:
            units = _channel_units(current, start)
        elif g is Granularity.KERNEL:
            units = _kernel_units(current, start, model, groups)
        else:
            units = _intra_units(current, cfg)
        for unit in units:
            current = _search_unit(unit, current, model, scorer, replace(pf_config, seed=seed + searched))
            searched += 1
    log.info("search: %d layer searches, %d calls of score_fn", searched, scorer.calls)
    current.validate(model)
    current.input_shape = tuple(sample.shape[1:])
    return current


# ----------------------------------------------------------------------------------------------- run folders
def save(
    run_dir: str | Path,
    model: nn.Module,
    masks: NetworkMask | None = None,
    example_input: torch.Tensor | None = None,
    metrics: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """Write a run folder: model.safetensors, arch.json, metrics.json (params, MACs, weight bytes, plus `metrics`),
    config.json (`config`) and, with `masks`, masks.json. Written under a temporary name and renamed.

    A network made by structprune.models.create is rebuilt by name (every CLI verb reads the folder); one of
    your own class is saved as layer specs + weights and loaded with `load(run_dir, model_factory=...)`.
    `example_input` (or the masks' input shape) gives its input shape."""
    _check_model(model)
    if masks is not None:
        _check_masks(masks)
        try:
            masks.validate(model)
        except StructpruneError as exc:
            raise StructpruneError(f"the masks do not fit this network ({exc}); save masks with the network they were "
                                   "chosen on, not with its compact form") from None
    sample = _sample(model, example_input, masks)
    _runs_on(model, sample)
    shape = tuple(sample.shape[1:])
    registered = getattr(model, FACTORY_ATTR, None) is not None
    arch = describe(model) if registered else describe_unregistered(model, shape)
    sizes = {"params": count_params(model), "macs": count_macs(model, shape), "weight_bytes": state_bytes(model)}
    extra = {MASKS_FILE: masks.to_json()} if masks is not None else None
    return save_run(run_dir, model, arch, {**sizes, **(metrics or {})}, {"verb": "api", **(config or {})},
                    extra_json=extra)


def load(run_dir: str | Path, model_factory: Callable[[], nn.Module] | None = None) -> nn.Module:
    """The network of a run folder, weights loaded, in eval mode. `model_factory`: a no-argument callable building
    the unpruned network, needed for a network of your own class (saved with "model": null); the saved layer
    shapes (pruned, compacted) replace its layers before the weights are loaded. Nothing is unpickled."""
    path = Path(run_dir)
    if model_factory is None:
        return load_run(path).model
    if not callable(model_factory):
        raise StructpruneError(f"model_factory must be a callable building the network, not {type(model_factory).__name__}")
    if not (path / ARCH_FILE).is_file() or not (path / MODEL_FILE).is_file():
        raise StructpruneError(f"{path}: not a run folder ({ARCH_FILE} and {MODEL_FILE} expected)")
    model = rebuild(read_json(path / ARCH_FILE), source=str(path / ARCH_FILE), factory=model_factory)
    try:
        model.load_state_dict(load_state(path / MODEL_FILE), strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise StructpruneError(f"{path / MODEL_FILE}: does not match the network model_factory builds ({first})") from None
    return model.eval()


def load_masks(run_dir: str | Path) -> NetworkMask:
    """The masks.json of a run folder (or a masks.json file)."""
    path = Path(run_dir)
    target = path / MASKS_FILE if path.is_dir() else path
    if not target.is_file():
        raise StructpruneError(f"{target}: no masks file")
    return NetworkMask.from_json(read_json(target))


__all__ = ["LayerMask", "Method", "NetworkMask", "apply_masks", "compact", "load", "load_masks", "mcr_scorer", "prune", "save",
           "search"]
