"""Quantizing a whole network: one fixed-point format per weight tensor, applied in place.

A plan maps each quantized weight's state-dict name to its `FixedPoint` format. After
`quantize_model_`, every such weight holds exactly code·step in float32, so the network computes what
the fixed-point network computes (activations and biases in float32).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from structprune.errors import StructpruneError
from structprune.quant.fixed_point import FixedPoint, check_bits, optimal_format
from structprune.quant.targets import quantized_weights
from structprune.runfiles import QUANT_FILE

QuantPlan = dict[str, FixedPoint]


def bits_per_weight(model: nn.Module, bits: int | Mapping[str, int]) -> dict[str, int]:
    """Word length of each quantized weight: one for all, or per layer name (missing layers: error)."""
    targets = quantized_weights(model)
    if isinstance(bits, int):
        check_bits(bits)
        return dict.fromkeys(targets, bits)
    out: dict[str, int] = {}
    for param, layer in targets.items():
        if layer not in bits:
            raise StructpruneError(f"no word length given for layer {layer!r}")
        out[param] = check_bits(int(bits[layer]), where=layer)
    return out


def plan_formats(model: nn.Module, bits: int | Mapping[str, int]) -> QuantPlan:
    """The L2-optimal format of each quantized weight at its word length."""
    params = dict(model.named_parameters())
    return {name: optimal_format(params[name], b) for name, b in bits_per_weight(model, bits).items()}


@torch.no_grad()
def quantize_model_(model: nn.Module, plan: QuantPlan) -> dict[str, torch.Tensor]:
    """Replace each planned weight by its fixed-point value, in place; return the integer codes."""
    params = dict(model.named_parameters())
    codes: dict[str, torch.Tensor] = {}
    for name, fmt in plan.items():
        if name not in params:
            raise StructpruneError(f"quantization plan names {name!r}, which the network does not have")
        codes[name] = fmt.quantize(params[name])
        params[name].copy_(fmt.dequantize(codes[name]))
    return codes


def plan_to_json(plan: QuantPlan, layers: Mapping[str, str]) -> dict[str, Any]:
    """{"weights": {param: {"layer", "bits", "step"}}} for quant.json."""
    return {"weights": {n: {"layer": layers.get(n, ""), "bits": f.bits, "step": f.step} for n, f in plan.items()}}


def plan_from_json(data: Any, source: str = QUANT_FILE) -> QuantPlan:
    try:
        return {n: FixedPoint(int(d["bits"]), float(d["step"])) for n, d in data["weights"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StructpruneError(f"{source}: malformed quantization plan ({exc})") from None
