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

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from structprune.api_inputs import (
    channel_groups_of,
    check_masks,
    check_model,
    check_runs_on,
    edge_config,
    parse_granularities,
    parse_ratios,
    sample_input,
)
from structprune.api_search import ScoreFn, mcr_scorer, search
from structprune.arch import FACTORY_ATTR, describe, describe_unregistered
from structprune.compact.compaction import compact as _compact
from structprune.errors import StructpruneError
from structprune.jsonio import read_json
from structprune.metrics import count_macs, count_params, state_bytes
from structprune.rebuild import load_weights, rebuild
from structprune.runfolder import ARCH_FILE, MODEL_FILE, load_run, load_state, save_run
from structprune.sparsity.masking import MaskApplier
from structprune.sparsity.masks import MASKS_FILE, LayerMask, NetworkMask
from structprune.sparsity.method import Method
from structprune.sparsity.selection import select


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
    check_model(model)
    sample = sample_input(model, example_input, base)
    check_runs_on(model, sample)
    grans = parse_granularities(granularity)
    ratios, cfg = edge_config(method, grans, parse_ratios(ratio, len(grans)), options)
    if base is not None:
        check_masks(base)
    masks = select(model, grans, ratios, cfg, groups=channel_groups_of(model, sample), base=base)
    masks.input_shape = tuple(sample.shape[1:])
    return masks


# ----------------------------------------------------------------------------------------------- masks
def apply_masks(model: nn.Module, masks: NetworkMask) -> nn.Module:
    """Zero `model`'s pruned weights in place (coupled batch norms and consumers included); returns the model."""
    check_model(model)
    check_masks(masks)
    needs_groups = any(lm.keep_out is not None for _, lm in masks)
    groups = channel_groups_of(model, sample_input(model, None, masks)) if needs_groups else None
    MaskApplier(model, groups).apply_(masks)
    return model


def compact(model: nn.Module, masks: NetworkMask, example_input: torch.Tensor | None = None) -> nn.Module:
    """A new, smaller network computing what `model` computes under `masks` (the model is not changed): pruned
    channels removed, kernel and intra-kernel masks turned into smaller dense convolutions. Checked against
    the masked network on a random input (one line of error if they differ)."""
    check_model(model)
    check_masks(masks)
    sample = sample_input(model, example_input, masks)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return _compact(model, masks, sample=sample.to(device))


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
    check_model(model)
    if masks is not None:
        check_masks(masks)
        try:
            masks.validate(model)
        except StructpruneError as exc:
            raise StructpruneError(f"the masks do not fit this network ({exc}); save masks with the network they were "
                                   "chosen on, not with its compact form") from None
    sample = sample_input(model, example_input, masks)
    check_runs_on(model, sample)
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
    return load_weights(model, load_state(path / MODEL_FILE),
                        f"{path / MODEL_FILE}: does not match the network model_factory builds")


def load_masks(run_dir: str | Path) -> NetworkMask:
    """The masks.json of a run folder (or a masks.json file)."""
    path = Path(run_dir)
    target = path / MASKS_FILE if path.is_dir() else path
    if not target.is_file():
        raise StructpruneError(f"{target}: no masks file")
    return NetworkMask.from_json(read_json(target))


__all__ = [
    "LayerMask",
    "Method",
    "NetworkMask",
    "ScoreFn",
    "apply_masks",
    "compact",
    "load",
    "load_masks",
    "mcr_scorer",
    "prune",
    "save",
    "search",
]
