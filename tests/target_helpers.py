"""Target-search test helpers: a synthetic latency model (a per-layer table, no timing) and tiny run folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from structprune.models import create
from structprune.runfolder import save_run
from structprune.search.target_cost import ConvForm
from structprune.search.target_search import TargetSearchConfig

FAST = TargetSearchConfig(particles=6, generations=2, round_to=2, score_images=100, bn_batches=1)


def tiny_target_runs(root: Path) -> dict[str, Path]:
    """Untrained tiny networks on digits (a MAC or latency budget does not need trained weights)."""
    out = {}
    for name in ("tiny-paper", "tiny-resnet"):
        torch.manual_seed(0)
        out[name] = save_run(root / name, create(name, in_channels=1, input_size=8), None, {}, {"dataset": "digits"})
    return out


class SyntheticLatency:
    """Per conv: `per_pair` ms per kept (input map per group) x output map, plus `fixed` ms (forms as
    structprune.latency_model.LayerForm: a depthwise conv reads one map per output map)."""

    def __init__(self, model: nn.Module, fixed: float = 0.05, per_pair: float = 1e-3):
        self.convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
        self.fixed, self.per_pair = fixed, per_pair

    def network_ms(self, forms: dict[str, Any]) -> float:
        total = 0.0
        for name, conv in self.convs.items():
            dense = ConvForm(conv.in_channels, conv.out_channels, 1 if conv.groups == conv.in_channels else conv.groups)
            f = forms.get(name) or dense
            per_group_in = 1 if conv.groups == conv.in_channels > 1 else f.kept_in // f.groups
            total += self.fixed + self.per_pair * per_group_in * f.kept_out
        return total

    def dense_ms(self) -> float:
        return self.network_ms({})
