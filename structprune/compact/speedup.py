"""Predicted speed-up of a compact network over its dense original: cheap, deterministic, no timing.

Per layer that does multiply-accumulates, time ∝ MACs / efficiency. A dense layer, or one only narrowed by
channel pruning, has efficiency 1; each compact form has the factor of EFFICIENCY below (a kernel form and an
intra form in one layer multiply). So a layer's predicted speed-up is its MAC ratio × its efficiency, and the
network's is the dense MACs over the sum of MACs / efficiency. Layers without MACs (pooling, activations,
batch norm) are left out: they shrink with the maps kept.

The factors are measured efficiencies (speed-up / MAC ratio) rounded to a typical value, from the committed
records in benchmarks/results (2 threads, batch 64 and 1; ONNX Runtime where a network-level record exists,
eager PyTorch single layers otherwise). They predict roughly, for throughput; at batch 1 small layers lose
more to fixed per-call costs. `structprune compact --measure` times the networks instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from structprune.compact.compaction import IRREGULAR_BRANCHES
from structprune.compact.csr_conv import CsrConv2d
from structprune.compact.intra_conv import BlockConvs, IntraKernelConv2d
from structprune.compact.kernel_conv import KernelSparseConv2d

# Efficiency of each compact form: the factor of its MACs' speed against a dense layer's.
EFFICIENCY: dict[str, float] = {
    # Conv2d / Linear as they are, or narrower after channel pruning (by definition; measured 0.97-1.01:
    # profile-onnxruntime-per-layer-b64-s5.json features.12, per-layer-repro-mnist-quick-s3.json features.0)
    "dense": 1.0,
    # kernel blocks ordered block by block: one grouped convolution, no gather. 2 blocks: 0.91 / 0.80 (batch 64 / 1)
    # for channel-25+kernel-50b2 in network-blocks-onnxruntime-s4.json, 0.90-1.01 per layer in
    # profile-onnxruntime-per-layer-b64-s5.json
    "grouped conv, 2 groups": 0.9,
    # 3 or more blocks: kernel-75b4+intra-6of9 0.77 / 0.61, channel-25+kernel-75b4+intra-6of9 0.32 / 0.31
    # (network-blocks-onnxruntime-s4.json)
    "grouped conv, 3+ groups": 0.5,
    # structured kernel groups: a gather of each group's input maps, then one (grouped) convolution. Single layer,
    # 2 / 4 groups: 0.78 / 0.59 (layers-2threads-wall-quiet.json); network channel-25+kernel-25g2+intra-3of9:
    # 0.23 in ONNX Runtime (network-sweep-onnxruntime-s4.json), 0.33 eager (network-blocks-eager-s4.json)
    "gather + conv": 0.4,
    # kernel masks that compact into several convolutions, one per set of kept input maps: 8 groups 0.37 / 0.48
    # / 0.30 (layers-2threads-wall-quiet.json, layers-1thread-cpu.json, layers-batch1-1thread-cpu.json)
    "several convs": 0.35,
    # more than IRREGULAR_BRANCHES convolutions (free per-kernel masks): 0.03-0.07 (layers-1thread-cpu.json,
    # layers-2threads-wall-quiet.json, "kernel 50% unstructured")
    "many convs": 0.05,
    # one intra pattern shared by every input map whose taps form one rectangle: one smaller convolution.
    # Centre column 0.98, left column 0.80, bottom row 0.82 (layers-2threads-wall-quiet.json); with kernel
    # blocks and a 2×3 pattern 0.86 / 0.72 (network-blocks-onnxruntime-s4.json)
    "intra, one conv": 0.85,
    # a shared pattern of several blocks (diagonal, checkerboard): shifted copies, one conv per block shape.
    # 0.60 (0, 4, 8), 0.74 (3, 5, 7), 0.72 (4-8), 0.94 checkerboard (layers-2threads-wall-quiet.json)
    "intra, shared blocks": 0.65,
    # a pattern per input map: gathers per block shape, partial sums added. 0.41 / 0.51 (3 / 5 of 9 taps,
    # layers-2threads-wall-quiet.json), 0.45 / 0.58 (layers-1thread-cpu.json)
    "intra, per-map patterns": 0.45,
    # the same nonzeros as unstructured sparse (im2col + CSR): 0.03 (network-blocks-onnxruntime-s4.json [csr],
    # layers-1thread-cpu-csr-intra3.json)
    "csr": 0.03,
    # any kernel or intra form on a layer reading FEW_MAPS maps or fewer (the first layer on an image): its cost
    # is writing the output, not the few MACs per output, and stays. 0.38 / 0.34 at a MAC ratio of 4.8, 0.37 /
    # 0.14 at 12 (features.0 in layer-efficiency-steady-malloc-s3.json, 3 input maps). A cap, not a factor.
    "few input maps": 0.3,
}
FEW_MAPS = 3  # input maps (per group) at or below which "few input maps" caps a sparse layer's efficiency
SLOWER = 1.0  # a layer predicted below this speed-up over its dense original is reported as slower


@dataclass(frozen=True)
class LayerPrediction:
    """One layer: its compact form, MACs (dense original, compact) and predicted speed-up."""

    layer: str
    form: str
    dense_macs: int
    macs: int
    efficiency: float

    @property
    def mac_ratio(self) -> float:
        return self.dense_macs / self.macs

    @property
    def speedup(self) -> float:
        return self.mac_ratio * self.efficiency

    @property
    def slower(self) -> bool:
        return self.speedup < SLOWER

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "form": self.form, "dense_macs": self.dense_macs, "macs": self.macs,
                "mac_ratio": round(self.mac_ratio, 4), "efficiency": self.efficiency,
                "predicted_speedup": round(self.speedup, 4)}

    def warning(self) -> str:
        """One line: the layer, its predicted speed against dense, why, and what runs faster."""
        return (f"{self.layer}: predicted {self.speedup:.2f}x the speed of its dense original ({self.form}: "
                f"{self.mac_ratio:.2f}x fewer MACs at efficiency {self.efficiency:.2f}); {_advice(self.form)}")


def _advice(form: str) -> str:
    if "few input maps" in form:
        return "patterns and kernel masks gain little on a layer reading 3 or fewer maps: keep its kernels"
    if "many convs" in form or "several convs" in form:
        return "kernel blocks (--kernel-structure blocks) compact into one grouped convolution"
    if "per-map" in form:
        return "one shared pattern per layer (--intra-shared) compacts into one convolution"
    return "channel pruning or kernel blocks keep more of their MAC ratio"


@dataclass(frozen=True)
class SpeedPrediction:
    """The layers' predictions and the network's: dense MACs over the sum of compact MACs / efficiency."""

    layers: tuple[LayerPrediction, ...]

    @property
    def speedup(self) -> float:
        time = sum(p.macs / p.efficiency for p in self.layers)
        return sum(p.dense_macs for p in self.layers) / time if time > 0 else 1.0

    @property
    def slower(self) -> list[LayerPrediction]:
        return [p for p in self.layers if p.slower]

    def to_json(self) -> dict[str, Any]:
        """metrics.json fields: predicted_speedup, predicted_layers, predicted_slower_layers."""
        return {"predicted_speedup": round(self.speedup, 4), "predicted_layers": [p.to_json() for p in self.layers],
                "predicted_slower_layers": [p.layer for p in self.slower]}


def _intra_form(blocks: BlockConvs) -> str | None:
    """The intra form of a block engine (None: full kernels, no pattern)."""
    pieces = [piece for shape in blocks.plan for piece in shape]
    every_map = tuple(range(blocks.in_channels // blocks.groups))
    kh, kw = blocks.kernel_size
    if len(pieces) == 1 and pieces[0].maps == every_map:
        block = pieces[0].block
        return None if block.rows * block.cols == kh * kw else "intra, one conv"
    return "intra, shared blocks" if all(p.maps == every_map for p in pieces) else "intra, per-map patterns"


def _kernel_form(layer: KernelSparseConv2d) -> str | None:
    branches = len(layer.branches)
    if branches > IRREGULAR_BRANCHES:
        return "many convs"
    if branches > 1:
        return "several convs"
    if layer.moves_maps:
        return "gather + conv"
    groups = layer.branches[0].groups
    return None if groups == 1 else "grouped conv, 2 groups" if groups <= 2 else "grouped conv, 3+ groups"


def layer_form(module: nn.Module) -> tuple[str, float]:
    """The compact form of a layer (names joined by ' + ') and its efficiency."""
    if isinstance(module, CsrConv2d):
        return "csr", EFFICIENCY["csr"]
    if isinstance(module, KernelSparseConv2d):
        intra = sorted({f for b in module.branches if (f := _intra_form(b)) is not None},
                       key=lambda f: EFFICIENCY[f])
        forms = [f for f in (_kernel_form(module), *intra[:1]) if f is not None]
        maps = module.in_channels
    elif isinstance(module, IntraKernelConv2d):
        forms = [f for f in (_intra_form(module.blocks),) if f is not None]
        maps = module.in_channels // module.groups
    else:
        return "dense", EFFICIENCY["dense"]
    if not forms:
        return "dense", EFFICIENCY["dense"]
    efficiency = 1.0
    for form in forms:
        efficiency *= EFFICIENCY[form]
    if maps <= FEW_MAPS and efficiency > EFFICIENCY["few input maps"]:
        forms.append("few input maps")
        efficiency = EFFICIENCY["few input maps"]
    return " + ".join(forms), round(efficiency, 4)


def predict_speedup(dense: nn.Module, compact: nn.Module) -> SpeedPrediction:
    """Each MAC-doing layer of `compact` against the layer of the same name in `dense` (its dense original, e.g.
    the masked network it was compacted from): form, MACs and predicted speed-up (module doc)."""
    from structprune.layers import layer_table

    dense_macs = {row["name"]: row["macs"] for row in layer_table(dense)}
    layers = []
    for row in layer_table(compact):
        name, macs = row["name"], row["macs"]
        if macs <= 0 or dense_macs.get(name, 0) <= 0:
            continue
        form, efficiency = layer_form(compact.get_submodule(name))
        layers.append(LayerPrediction(name, form, dense_macs[name], macs, efficiency))
    return SpeedPrediction(tuple(layers))
