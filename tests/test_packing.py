"""The packed artifact: bit-exact packing at every word length, exact reload, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from compact_zoo import compacted
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from structprune.arch import example_input
from structprune.errors import StructpruneError
from structprune.models import create
from structprune.quant.apply import plan_formats, quantize_model_
from structprune.quant.packing import SPEC_KEY, load_packed, pack_codes, packed_size, save_packed, unpack_codes


@pytest.mark.parametrize("bits", range(2, 17))
def test_round_trip_is_bit_exact_at_every_word_length(bits):
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    gen = torch.Generator().manual_seed(bits)
    codes = torch.cat([torch.tensor([lo, hi, 0, -1, 1]), torch.randint(lo, hi + 1, (997,), generator=gen)]).int()
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_size(codes.numel(), bits)
    assert torch.equal(unpack_codes(packed, bits, codes.numel()), codes)


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(2, 16), data=st.data())
def test_round_trip_of_any_codes(bits, data):
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    values = data.draw(st.lists(st.integers(lo, hi), min_size=0, max_size=50))
    codes = torch.tensor(values, dtype=torch.int32)
    assert torch.equal(unpack_codes(pack_codes(codes, bits), bits, len(values)), codes)


def test_packing_is_dense_lsb_first():
    # 3-bit codes 1, -1 (0b111), 2 (0b010), each LSB first: 1,0,0 | 1,1,1 | 0,1,0 -> stream 10011101|0
    assert pack_codes(torch.tensor([1, -1, 2]), 3).tolist() == [0b10111001, 0b0]


def test_codes_out_of_range_are_refused():
    with pytest.raises(StructpruneError):
        pack_codes(torch.tensor([4]), 3)


def _quantized(model: torch.nn.Module, bits) -> tuple[torch.nn.Module, dict]:
    plan = plan_formats(model, bits)
    quantize_model_(model, plan)
    return model, plan


@pytest.mark.parametrize("bits", [2, 5, 8, 16])
def test_reloaded_artifact_gives_the_same_outputs(tmp_path: Path, bits: int):
    torch.manual_seed(0)
    model, plan = _quantized(compacted("tiny-paper"), bits)
    path = tmp_path / "net.packed.safetensors"
    size = save_packed(path, model, plan)
    assert size == path.stat().st_size
    loaded, loaded_plan = load_packed(path)
    assert loaded_plan == plan
    x = example_input(model, 5)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)


def test_mixed_word_lengths_and_a_residual_network(tmp_path: Path):
    model = compacted("tiny-resnet")
    from structprune.quant.targets import quantized_weights

    layers = sorted(set(quantized_weights(model).values()))
    model, plan = _quantized(model, {layer: 2 + i % 15 for i, layer in enumerate(layers)})
    save_packed(tmp_path / "r.safetensors", model, plan)
    loaded, _ = load_packed(tmp_path / "r.safetensors")
    x = example_input(model, 3)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_packed_weights_take_their_word_length(tmp_path: Path):
    model, plan = _quantized(create("plain", spec="32C3-MP2-64FC-10FC", in_channels=1, input_size=16), 3)
    size = save_packed(tmp_path / "m.safetensors", model, plan)
    weights = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))
    biases = sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias"))
    payload = sum(packed_size(p.numel(), 3) for n, p in model.named_parameters() if n.endswith("weight")) + 4 * biases
    assert payload <= size <= payload + 20_000  # header: JSON spec and tensor table
    assert size < (weights * 32 + biases * 32) / 8 / 9  # about 10× below float32


def _write(path: Path, tensors: dict, spec: dict) -> None:
    save_file(tensors, str(path), metadata={SPEC_KEY: json.dumps(spec), "format": "structprune"})


def _spec_of(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()[SPEC_KEY])


def _saved(tmp_path: Path) -> Path:
    model, plan = _quantized(create("tiny-paper"), 4)
    path = tmp_path / "ok.safetensors"
    save_packed(path, model, plan)
    return path


def _one_line_error(path: Path) -> str:
    with pytest.raises(StructpruneError) as info:
        load_packed(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_header_and_sizes_that_disagree_are_one_line(tmp_path: Path):
    good = _saved(tmp_path)
    spec, tensors = _spec_of(good), load_file(str(good))
    spec["weights"]["features.0.weight"]["bits"] = 5  # header says 5 bits; the bytes hold 4-bit codes
    bad = tmp_path / "bits.safetensors"
    _write(bad, tensors, spec)
    assert "header and sizes disagree" in _one_line_error(bad)

    spec = _spec_of(good)
    spec["weights"]["features.0.weight"]["shape"] = [8, 1, 3, 4]
    _write(bad, tensors, spec)
    assert "header and sizes disagree" in _one_line_error(bad)

    spec = _spec_of(good)
    spec["weights"]["features.0.weight"]["bits"] = 17
    _write(bad, tensors, spec)
    assert "2–16" in _one_line_error(bad)

    spec = _spec_of(good)
    del spec["weights"]["classifier.3.weight"]
    _write(bad, tensors, spec)
    assert "header and sizes disagree" in _one_line_error(bad)


def test_truncated_and_foreign_files_are_one_line(tmp_path: Path):
    good = _saved(tmp_path)
    data = good.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 1):
        truncated = tmp_path / f"cut{cut}.safetensors"
        truncated.write_bytes(data[:cut])
        assert "truncated" in _one_line_error(truncated) or "corrupt" in _one_line_error(truncated)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    assert "not a structprune packed file" in _one_line_error(plain)
    assert "not found" in _one_line_error(tmp_path / "missing.safetensors")
