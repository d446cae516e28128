"""A synthetic latency model for the target-search tests: a per-layer table, no timing."""

from __future__ import annotations

from typing import Any

from torch import nn

from structprune.search.target_cost import ConvForm


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
