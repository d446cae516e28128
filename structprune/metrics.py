"""Size and cost of a network: parameters, MACs (PyTorch's FLOP counter) and stored bytes."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from structprune.arch import input_shape_of


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> int:
    """Multiply–accumulates of a one-image forward pass (FLOPs counted by PyTorch, halved)."""
    shape = tuple(input_shape) if input_shape is not None else input_shape_of(model)
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *shape, device=device))
    model.train(was_training)
    return int(counter.get_total_flops() // 2)


def state_bytes(model: nn.Module) -> int:
    """Bytes of the tensors in the saved state dict (what model.safetensors stores, headers aside)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def size_metrics(model: nn.Module) -> dict[str, int]:
    return {"params": count_params(model), "macs": count_macs(model), "weight_bytes": state_bytes(model)}
