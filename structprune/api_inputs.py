"""The Python API's arguments checked and parsed once, at the edge: the network, its example input, masks,
granularities, ratios and selection options (each bad value is one StructpruneError line)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from structprune.arch import FACTORY_ATTR
from structprune.errors import StructpruneError
from structprune.sparsity.channel_groups import ChannelGroups, find_channel_groups
from structprune.sparsity.fast_forms import EdgeOptions, resolve
from structprune.sparsity.granularity import Granularity, IntraPattern, KernelForm, KernelStructure
from structprune.sparsity.masks import NetworkMask
from structprune.sparsity.method import ONE_SHOT_METHODS, Method
from structprune.sparsity.selection import SelectionConfig

SELECTION_OPTIONS = ("scope", "seed", "kernel", "round_to", "intra_shared", "intra_patterns", "linear_ratio")
PRUNE_OPTIONS = (*SELECTION_OPTIONS, "intra_free")


def check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise StructpruneError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    return model


def check_masks(masks: Any) -> NetworkMask:
    if not isinstance(masks, NetworkMask):
        raise StructpruneError(f"masks must be a NetworkMask (from structprune.prune or structprune.search), "
                               f"not {type(masks).__name__}")
    return masks


def sample_input(model: nn.Module, example_input: Any, masks: NetworkMask | None = None) -> torch.Tensor:
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


def check_runs_on(model: nn.Module, sample: torch.Tensor) -> None:
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


def parse_granularities(granularity: str | Iterable[str]) -> list[Granularity]:
    if isinstance(granularity, str):
        return Granularity.parse_list(granularity)
    try:
        return Granularity.parse_list(",".join(str(g) for g in granularity))
    except TypeError:
        raise StructpruneError(f"granularity must be a string such as 'channel,intra', not {granularity!r}") from None


def parse_ratios(ratio: float | Iterable[float], count: int) -> list[float]:
    values = [ratio] if isinstance(ratio, int | float) else list(ratio)
    if not values or not all(isinstance(r, int | float) and not isinstance(r, bool) for r in values):
        raise StructpruneError(f"ratio must be a number in [0, 1) or one per granularity, not {ratio!r}")
    if len(values) not in (1, count):
        raise StructpruneError(f"{len(values)} ratios given for {count} granularities")
    for r in values:
        if not 0.0 <= r < 1.0:
            raise StructpruneError(f"pruning ratio {r} must be in [0, 1)")
    return [float(r) for r in values] * (count if len(values) == 1 else 1)


def selection_config(method: Method | str, options: dict[str, Any]) -> SelectionConfig:
    unknown = sorted(set(options) - set(SELECTION_OPTIONS))
    if unknown:
        raise StructpruneError(f"unknown option(s) {', '.join(unknown)}; options: {', '.join(SELECTION_OPTIONS)}")
    if isinstance(options.get("kernel"), str):
        options = {**options, "kernel": KernelForm.parse(options["kernel"])}
    if options.get("intra_patterns") is not None:
        options = {**options, "intra_patterns": parse_patterns(options["intra_patterns"])}
    return SelectionConfig(method=Method.parse(method, ONE_SHOT_METHODS, "selection method"), **options)


def edge_config(method: Method | str, grans: list[Granularity], ratios: list[float],
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
                       intra_patterns=None if patterns is None else parse_patterns(patterns),
                       intra_free=bool(options.get("intra_free", False)))
    fields = {k: options[k] for k in ("scope", "seed", "linear_ratio") if k in options}
    return resolve(grans, ratios, Method.parse(method, ONE_SHOT_METHODS, "selection method"), edge, **fields)


def parse_patterns(value: Any) -> tuple[IntraPattern, ...]:
    """IntraPatterns, or (start, stride) pairs, as a tuple of IntraPattern."""
    try:
        return tuple(p if isinstance(p, IntraPattern) else IntraPattern(int(p[0]), int(p[1])) for p in value)
    except (TypeError, ValueError, IndexError):
        raise StructpruneError(f"intra_patterns must list IntraPatterns or (start, stride) pairs, not {value!r}") from None


def channel_groups_of(model: nn.Module, sample: torch.Tensor) -> ChannelGroups:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return find_channel_groups(model, sample.to(device))
