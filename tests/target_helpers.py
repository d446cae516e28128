"""A synthetic latency model for the target-search tests: a per-layer table, no timing."""

from __future__ import annotations

from typing import Any

from torch import nn

from structprune.search.target_cost import ConvForm


class SyntheticLatency:
    """Per conv: `per_pair` ms per kept (input map per group) x output map, plus `fixed` ms."""

    def __init__(self, model: nn.Module, fixed: float = 0.05, per_pair: float = 1e-3):
        self.convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
        self.fixed, self.per_pair = fixed, per_pair

    def network_ms(self, forms: dict[str, Any]) -> float:
        total = 0.0
        for name, conv in self.convs.items():
            f = forms.get(name) or ConvForm(conv.in_channels, conv.out_channels, conv.groups)
            total += self.fixed + self.per_pair * (f.kept_in // max(1, f.groups)) * f.kept_out
        return total

    def dense_ms(self) -> float:
        return self.network_ms({})
