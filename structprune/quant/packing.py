"""The packed artifact: a compact, quantized network in one safetensors file.

Each quantized weight is stored as its integer codes packed at its word length: `bits`-bit two's
complement, least significant bit first, into a uint8 tensor named "<weight>.packed" of
⌈count·bits/8⌉ bytes. Every other tensor (biases, batch norm) is stored as is. The safetensors header
metadata holds the JSON spec under "structprune.packed":

    {"format": "structprune-packed/1", "arch": {...arch.json...},
     "weights": {"features.0.weight": {"bits": 4, "step": 0.0123, "shape": [20, 1, 5, 5]}, ...}}

Loading rebuilds the network from the arch and sets each weight to code·step in float32, exactly the
values the in-memory quantized network holds, so both give identical outputs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from structprune.arch import describe
from structprune.errors import StructpruneError
from structprune.jsonio import write_bytes_atomic
from structprune.quant.apply import QuantPlan
from structprune.quant.fixed_point import FixedPoint, check_bits
from structprune.rebuild import load_weights, rebuild

PACKED_FORMAT = "structprune-packed/1"
SPEC_KEY = "structprune.packed"
PACKED_SUFFIX = ".packed"


def packed_size(count: int, bits: int) -> int:
    """Bytes of `count` codes packed at `bits` bits."""
    return math.ceil(count * bits / 8)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed integer codes (any shape) -> uint8 [⌈n·bits/8⌉], `bits`-bit two's complement, LSB first."""
    check_bits(bits)
    flat = codes.detach().to(torch.int64).flatten().numpy()
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if flat.size and (flat.min() < lo or flat.max() > hi):
        raise StructpruneError(f"codes outside the {bits}-bit range [{lo}, {hi}]")
    unsigned = (flat & ((1 << bits) - 1)).astype(np.uint32)  # two's complement in `bits` bits
    bit_planes = (unsigned[:, None] >> np.arange(bits, dtype=np.uint32)) & 1  # [n, bits]
    packed = np.packbits(bit_planes.astype(np.uint8).reshape(-1), bitorder="little")
    return torch.from_numpy(packed.copy())


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of `pack_codes`: uint8 bytes -> int32 [count]."""
    check_bits(bits)
    if packed.numel() != packed_size(count, bits):
        raise StructpruneError(f"{packed.numel()} packed bytes cannot hold {count} codes of {bits} bits")
    raw = np.unpackbits(packed.numpy().astype(np.uint8), bitorder="little", count=count * bits)
    bit_planes = raw.reshape(count, bits).astype(np.int64)  # [n, bits]
    unsigned = (bit_planes << np.arange(bits, dtype=np.int64)).sum(axis=1)
    signed = np.where(unsigned >= 2 ** (bits - 1), unsigned - 2**bits, unsigned)
    return torch.from_numpy(signed.astype(np.int32))


def pack_state(model: torch.nn.Module, plan: QuantPlan) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the spec of the packed artifact of `model` (its planned weights re-quantized)."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tensors: dict[str, torch.Tensor] = {}
    weights: dict[str, Any] = {}
    for name, tensor in state.items():
        fmt = plan.get(name)
        if fmt is None:
            tensors[name] = tensor
            continue
        tensors[name + PACKED_SUFFIX] = pack_codes(fmt.quantize(tensor), fmt.bits)
        weights[name] = {"bits": fmt.bits, "step": fmt.step, "shape": list(tensor.shape)}
    missing = set(plan) - set(weights)
    if missing:
        raise StructpruneError(f"quantization plan names weights the network does not have: {sorted(missing)}")
    return tensors, {"format": PACKED_FORMAT, "arch": describe(model), "weights": weights}


def save_packed(path: str | Path, model: torch.nn.Module, plan: QuantPlan) -> int:
    """Write the packed artifact atomically; return its size in bytes."""
    tensors, spec = pack_state(model, plan)
    payload = save(tensors, metadata={SPEC_KEY: json.dumps(spec), "format": "structprune"})
    write_bytes_atomic(path, payload)
    return len(payload)


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not path.exists():
        raise StructpruneError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StructpruneError(f"{path}: corrupt or truncated packed file ({first})") from None
    if SPEC_KEY not in meta:
        raise StructpruneError(f"{path}: not a structprune packed file (no {SPEC_KEY!r} header)")
    try:
        spec = json.loads(meta[SPEC_KEY])
    except json.JSONDecodeError as exc:
        raise StructpruneError(f"{path}: packed header is not valid JSON ({exc})") from None
    if not isinstance(spec, dict) or spec.get("format") != PACKED_FORMAT:
        raise StructpruneError(f"{path}: unsupported packed format (expected {PACKED_FORMAT!r})")
    return tensors, spec


def load_packed(path: str | Path) -> tuple[torch.nn.Module, QuantPlan]:
    """Rebuild the network of a packed artifact with its weights dequantized; also return the plan."""
    path = Path(path)
    tensors, spec = _read(path)
    model = rebuild(spec.get("arch"), source=f"{path} header")
    state: dict[str, torch.Tensor] = {}
    plan: QuantPlan = {}
    try:
        entries = spec["weights"].items()
    except (KeyError, AttributeError):
        raise StructpruneError(f"{path}: packed header has no weight table") from None
    for name, entry in entries:
        try:
            bits, step, shape = int(entry["bits"]), float(entry["step"]), [int(s) for s in entry["shape"]]
        except (KeyError, TypeError, ValueError):
            raise StructpruneError(f"{path}: header entry for {name!r} needs bits, step and shape") from None
        check_bits(bits, where=f"{path}: {name}")
        fmt = FixedPoint(bits, step)
        packed = tensors.pop(name + PACKED_SUFFIX, None)
        if packed is None:
            raise StructpruneError(f"{path}: header lists {name!r} but the file has no {name + PACKED_SUFFIX!r}")
        count = math.prod(shape)
        if packed.dtype != torch.uint8 or packed.ndim != 1 or packed.numel() != packed_size(count, bits):
            raise StructpruneError(
                f"{path}: header and sizes disagree for {name!r}: {shape} at {bits} bits needs "
                f"{packed_size(count, bits)} bytes, the file holds {packed.numel()}"
            )
        state[name] = fmt.dequantize(unpack_codes(packed, bits, count)).view(shape)
        plan[name] = fmt
    stray = [k for k in tensors if k.endswith(PACKED_SUFFIX)]
    if stray:
        raise StructpruneError(f"{path}: header and sizes disagree: {stray[0]!r} is not in the header")
    state.update(tensors)
    load_weights(model, state, f"{path}: tensors do not match the network in its header")
    return model, plan
