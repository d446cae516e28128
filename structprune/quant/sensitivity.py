"""Per-layer word-length sweep: quantize one layer at a time and see what the error rate does.

`sweep` quantizes only layer L to b bits (all others float), for every layer and b, and records the
validation MCR. `choose_bits` then gives each layer the shortest word length whose increase alone stays
within a tolerance: layers that tolerate fewer bits get fewer.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn
from tqdm import tqdm

from structprune.data import Split
from structprune.quant.apply import quantize_model_
from structprune.quant.fixed_point import check_bits, optimal_format
from structprune.quant.targets import quantized_weights
from structprune.train import evaluate


@dataclass
class Sensitivity:
    base_mcr: float  # float network
    mcr: dict[str, dict[int, float]]  # layer -> bits -> MCR with only that layer quantized

    def to_json(self) -> dict:
        return {"base_mcr": self.base_mcr,
                "layers": {layer: {str(b): m for b, m in row.items()} for layer, row in self.mcr.items()}}


def sweep(net: nn.Module, split: Split, bits: Sequence[int] = tuple(range(2, 9)), progress: bool = True) -> Sensitivity:
    """MCR on `split` with each layer alone quantized at each word length in `bits`."""
    for b in bits:
        check_bits(b)
    layers: dict[str, list[str]] = {}
    for param, layer in quantized_weights(net).items():
        layers.setdefault(layer, []).append(param)
    params = dict(net.named_parameters())
    base = evaluate(net, split).mcr
    table: dict[str, dict[int, float]] = {}
    bar = tqdm(total=len(layers) * len(bits), desc="sensitivity", disable=not progress, leave=False)
    for layer, names in layers.items():
        table[layer] = {}
        for b in bits:
            trial = copy.deepcopy(net)
            quantize_model_(trial, {n: optimal_format(params[n], b) for n in names})
            table[layer][b] = evaluate(trial, split).mcr
            bar.update()
    bar.close()
    return Sensitivity(base, table)


def choose_bits(sens: Sensitivity, max_bits: int, tolerance: float) -> dict[str, int]:
    """Per layer, the fewest bits b ≤ max_bits such that quantizing that layer alone at b bits, and at
    every swept length between b and max_bits, stays within `tolerance` of the float MCR."""
    check_bits(max_bits)
    chosen: dict[str, int] = {}
    for layer, row in sens.mcr.items():
        chosen[layer] = max_bits
        for b in sorted((b for b in row if b <= max_bits), reverse=True):
            if row[b] - sens.base_mcr > tolerance:
                break
            chosen[layer] = b
    return chosen
