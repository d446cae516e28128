"""Retraining with quantized forward passes and full-precision shadow weights (straight-through).

`QuantAwareNet` wraps a network: its forward runs the wrapped network with each planned weight
replaced by w + (q(w) − w).detach(), so the loss sees fixed-point weights while the gradient flows to
the float "shadow" weight w unchanged (the straight-through estimator). Steps are re-chosen from the
shadow weights once per epoch. Weights that are exactly zero at the start (pruned) are held at zero.
Activations can optionally be quantized too (signed fixed point after every ReLU, steps calibrated on
one batch); that is a simulation only: the packed artifact and ONNX export keep float activations.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from structprune.data import Dataset
from structprune.quant.apply import QuantPlan, plan_formats, quantize_model_
from structprune.quant.fixed_point import FixedPoint, optimal_format
from structprune.train import TrainConfig, train

log = logging.getLogger(__name__)


def fake_quant(w: torch.Tensor, fmt: FixedPoint) -> torch.Tensor:
    """Fixed-point value of `w` in the forward pass, identity in the backward pass."""
    return w + (fmt.round_trip(w) - w).detach()


class QuantAwareNet(nn.Module):
    """Runs `net` with fake-quantized weights (and optionally activations); `net` holds the shadow weights."""

    def __init__(self, net: nn.Module, plan: QuantPlan, act_bits: int | None = None):
        super().__init__()
        self.net = net
        self.plan = dict(plan)
        self.act_bits = act_bits
        self.act_formats: dict[str, FixedPoint] = {}
        self.stale = True  # steps are re-chosen at the next forward (after a resume, too)
        self._hooks = [m.register_forward_hook(self._act_hook(n)) for n, m in net.named_modules()
                       if act_bits is not None and isinstance(m, nn.ReLU)]

    def _act_hook(self, name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            if name not in self.act_formats:  # first call calibrates the step
                self.act_formats[name] = optimal_format(output, self.act_bits)
            return fake_quant(output, self.act_formats[name])

        return hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stale:
            self.refresh_steps()
        params = dict(self.net.named_parameters())
        swapped = {name: fake_quant(params[name], fmt) for name, fmt in self.plan.items()}
        return functional_call(self.net, swapped, (x,))

    def refresh_steps(self) -> None:
        """Re-choose each weight's step for the current shadow weights (word lengths unchanged)."""
        params = dict(self.net.named_parameters())
        self.plan = {n: optimal_format(params[n], f.bits) for n, f in self.plan.items()}
        self.stale = False

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


def retrain_quantized(
    net: nn.Module,
    data: Dataset,
    bits: int | Mapping[str, int],
    cfg: TrainConfig,
    act_bits: int | None = None,
    **train_options: Any,
) -> tuple[QuantPlan, list[dict[str, float]]]:
    """Quantization-aware retraining of `net` in place; on return its weights are fixed-point values.

    Returns the final plan (formats chosen for the final shadow weights) and the epoch history.
    `train_options` go to `structprune.train.train` (checkpoint_dir makes the retraining resumable).
    """
    plan = plan_formats(net, bits)
    params = dict(net.named_parameters())
    keep = {n: params[n].detach() != 0 for n in plan}  # bool, same shape as each weight
    wrapper = QuantAwareNet(net, plan, act_bits=act_bits)
    if act_bits is not None:
        with torch.no_grad():
            wrapper(data.train.x[: cfg.batch_size])
    steps_per_epoch = max(1, math.ceil(len(data.train) / cfg.batch_size))
    done = 0

    @torch.no_grad()
    def after_step() -> None:
        nonlocal done
        for n, mask in keep.items():
            params[n].mul_(mask)
        done += 1
        if done % steps_per_epoch == 0:
            wrapper.stale = True

    history = train(wrapper, data, cfg, after_step=after_step, **train_options) if cfg.epochs > 0 else []
    wrapper.remove_hooks()
    wrapper.refresh_steps()
    final = wrapper.plan
    quantize_model_(net, final)
    log.info("quantization-aware retraining done (%d epochs)", cfg.epochs)
    return final, history
