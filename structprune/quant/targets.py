"""Which tensors are quantized: the weights of every Conv2d, Linear and compact layer.

Names are state-dict names ("features.0.weight"). Biases, batch-norm parameters and buffers stay
float32 (storage accounting counts them at 32 bits).
"""

from __future__ import annotations

from torch import nn

from structprune.arch import _CUSTOM_TYPES


def _is_compact(module: nn.Module) -> bool:
    return type(module).__name__ in _CUSTOM_TYPES


def quantized_weights(model: nn.Module) -> dict[str, str]:
    """State-dict names of the weight tensors to quantize, in model order, each mapped to its layer.

    Conv2d and Linear contribute `weight`; a compact layer (a type registered in `structprune.arch`)
    contributes every parameter whose name contains "weight" (e.g. "convs.weights.0"), sub-layers included.
    """
    import structprune.compact  # noqa: F401  (registers compact layer types)

    names: dict[str, str] = {}
    inside: list[str] = []
    for mod_name, module in model.named_modules():
        if any(mod_name.startswith(p + ".") for p in inside):
            continue
        prefix = f"{mod_name}." if mod_name else ""
        if _is_compact(module):
            inside.append(mod_name)
            for p_name, _ in module.named_parameters():
                if "weight" in p_name:
                    names[prefix + p_name] = mod_name
        elif isinstance(module, nn.Conv2d | nn.Linear):
            names[prefix + "weight"] = mod_name
    return names

