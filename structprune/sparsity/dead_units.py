"""Dead units: feature maps and hidden units that never fire on the validation data.

A convolution's output map (or a linear layer's hidden unit) is dead when the ReLU it feeds, through at most a
batch norm, outputs zero for every image and every position. Removing such a map changes nothing downstream,
so a pruning result that removes mostly dead maps says little about the pruning method; `dead_unit_summary`
records how many of the removed maps were dead. Layers that feed no ReLU directly (the last convolution of a
residual branch, a classifier) are not judged. The network is traced with torch.fx; a network fx cannot trace
is not counted (one log line says so).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from structprune.layout import FastLayout
from structprune.sparsity.masks import NetworkMask

log = logging.getLogger(__name__)

_RELU_MODULES = (nn.ReLU, nn.ReLU6)
_RELU_FUNCTIONS: set[Any] = {F.relu, F.relu6, torch.relu, torch.relu_}
_RELU_METHODS = {"relu", "relu_"}
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_LAYERS = (nn.Conv2d, nn.Linear)


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), _RELU_MODULES)
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in _RELU_METHODS


def _watched(graph: fx.Graph, modules: dict[str, nn.Module]) -> dict[str, str]:
    """ReLU node name -> the conv/linear layer whose output it reads (directly or through one batch norm)."""
    watched: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)), _LAYERS):
            continue
        current = node
        while len(current.users) == 1:
            (user,) = current.users
            if user.op == "call_module" and isinstance(modules.get(str(user.target)), _NORMS):
                current = user
                continue
            if _is_relu(user, modules):
                watched[user.name] = str(node.target)
            break
    return watched


class _Recorder(fx.Interpreter):
    """Runs the traced network and ORs, per watched ReLU, which units were positive anywhere."""

    def __init__(self, module: fx.GraphModule, watched: dict[str, str]) -> None:
        super().__init__(module)
        self.watched = watched
        self.active: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        layer = self.watched.get(n.name)
        if layer is not None and isinstance(out, torch.Tensor) and out.dim() >= 2:
            fired = out.amax(dim=(0, *range(2, out.dim()))) > 0  # one reduction, no bool copy of the output
            self.active[layer] = self.active[layer] | fired if layer in self.active else fired
        return out


@torch.no_grad()
def never_active(model: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """Per judged layer, a bool tensor over its output units: True where the unit never fired on `batches`.
    None when torch.fx cannot trace the network."""
    try:
        traced = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types on untraceable code
        log.info("dead units not counted: torch.fx cannot trace %s (%s)", type(model).__name__,
                 str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return None
    modules = dict(traced.named_modules())
    watched = _watched(traced.graph, modules)
    was_training = model.training
    traced.eval()
    recorder = _Recorder(traced, watched)
    layout = FastLayout()
    for images in batches:
        layout(recorder.run, images)
    model.train(was_training)
    return {layer: ~fired for layer, fired in recorder.active.items()}


DEAD_UNIT_IMAGES = 5000  # validation images on which a unit must never fire to count as dead


def never_active_on(model: nn.Module, images: torch.Tensor, limit: int = DEAD_UNIT_IMAGES,
                    batch: int = 500) -> dict[str, torch.Tensor] | None:
    """`never_active` on the first `limit` of `images`, in batches."""
    images = images[:limit]
    return never_active(model, (images[i : i + batch] for i in range(0, len(images), batch)))


def log_dead_units(summary: dict[str, Any]) -> None:
    if summary.get("counted"):
        log.info("dead units (never active on the validation images): %d of the %d removed maps, %d of the %d "
                 "removed hidden units", summary["removed_dead_maps"], summary["removed_maps"],
                 summary["removed_dead_hidden"], summary["removed_hidden"])


def dead_unit_summary(model: nn.Module, dead: dict[str, torch.Tensor] | None, mask: NetworkMask) -> dict[str, Any]:
    """How many units were never active before pruning, how many the mask removes, and how many of those were
    dead: in total (conv maps and hidden units apart) and per layer. Only judged layers are counted."""
    if dead is None:
        return {"counted": False}
    modules = dict(model.named_modules())
    per_layer: dict[str, dict[str, int]] = {}
    totals = {"conv": [0, 0, 0], "linear": [0, 0, 0]}
    for name, never in dead.items():
        layer = mask.layers.get(name)
        removed = (~layer.keep_out) if layer is not None and layer.keep_out is not None else torch.zeros_like(never)
        row = [int(never.sum()), int(removed.sum()), int((removed & never).sum())]
        per_layer[name] = {"units": int(never.numel()), "dead": row[0], "removed": row[1], "removed_dead": row[2]}
        kind = totals["linear" if isinstance(modules.get(name), nn.Linear) else "conv"]
        for i, v in enumerate(row):
            kind[i] += v
    return {"counted": True,
            "dead_maps": totals["conv"][0], "removed_maps": totals["conv"][1], "removed_dead_maps": totals["conv"][2],
            "dead_hidden": totals["linear"][0], "removed_hidden": totals["linear"][1],
            "removed_dead_hidden": totals["linear"][2], "layers": per_layer}
