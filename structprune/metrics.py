"""Size and cost of a network: parameters, MACs (PyTorch's FLOP counter) and stored bytes."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from structprune.arch import input_shape_of
from structprune.data import Dataset
from structprune.train import evaluate


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


def evaluation_metrics(model: nn.Module, data: Dataset | None) -> dict[str, Any]:
    """The metrics.json record of a network's accuracy: val/test MCR and loss (empty without a dataset)."""
    if data is None:
        return {}
    val, test = evaluate(model, data.val), evaluate(model, data.test)
    return {"val_mcr": val.mcr, "test_mcr": test.mcr, "val_loss": val.loss, "test_loss": test.loss,
            "test_images": len(data.test)}


def run_metrics(model: nn.Module, data: Dataset | None, **extra: Any) -> dict[str, Any]:
    """A run's metrics.json: accuracy, size, then whatever the stage adds (history, source metrics, ...)."""
    return {**evaluation_metrics(model, data), **size_metrics(model), **extra}
