"""Storage accounting, checked against sizes counted by hand on tiny-paper.

tiny-paper: conv 1→8, conv 8→8, pool, conv 8→16, pool, FC 64→32, FC 32→10, all 3×3 convs with bias:
4,168 weights and 74 biases (4,242 parameters).
"""

from __future__ import annotations

import math

import pytest
import torch

from structprune.compact.compaction import compact
from structprune.models import create
from structprune.quant.storage import dense_original_bits, index_width, storage_report
from structprune.quant.targets import quantized_weights
from structprune.sparsity.granularity import IntraPattern
from structprune.sparsity.masks import NetworkMask

WEIGHTS, BIASES = 4168, 74


def _mask(model) -> NetworkMask:
    mask = NetworkMask()
    mask.layer("features.0", model.features[0]).keep_out = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1], dtype=torch.bool)
    mask.layer("features.2", model.features[2]).intra = [IntraPattern(0, 2)] * 4 + [IntraPattern(1, 3)] * 4
    return mask


def test_float_unpruned_network_is_its_dense_size():
    model = create("tiny-paper")
    report = storage_report(model)
    assert report.dense_bits == dense_original_bits(model) == 32 * (WEIGHTS + BIASES)
    assert report.total_bits == report.dense_bits and report.compression == 1.0


@pytest.mark.parametrize("bits", [2, 4, 16])
def test_quantized_weights_count_at_their_word_length_and_biases_at_32(bits):
    model = create("tiny-paper")
    report = storage_report(model, dict.fromkeys(quantized_weights(model), bits))
    assert report.total_bits == WEIGHTS * bits + BIASES * 32
    assert report.total_bytes == math.ceil(report.total_bits / 8)
    assert report.compression == pytest.approx(32 * (WEIGHTS + BIASES) / (WEIGHTS * bits + BIASES * 32))


def test_compact_network_with_channel_and_intra_masks():
    model = create("tiny-paper").eval()
    mask = _mask(model)
    net = compact(model, mask)
    report = storage_report(net, dict.fromkeys(quantized_weights(net), 4), mask)
    rows = {r.layer: r for r in report.layers}
    # features.0 keeps 6 of 8 maps: 54 weights; an 8-bit map beats 6 indices of 3 bits
    assert (rows["features.0"].stored_weights, rows["features.0"].channel_index_bits) == (54, 8)
    # features.2 reads the 6 kept maps: maps 0,2,3 keep taps 0,2,4,6,8 (5), maps 5,6,7 taps 1,4,7 (3)
    assert rows["features.2"].stored_weights == 8 * (3 * 5 + 3 * 3)
    assert rows["features.2"].intra_index_bits == 6 * (4 + 4)  # (start, stride) per map, 4 bits each for 9 taps
    assert rows["features.2"].float_bits == 8 * 32
    assert rows["features.5"].stored_weights == 16 * 8 * 9
    weights = 54 + 192 + 1152 + 2048 + 320
    biases = 6 + 8 + 16 + 32 + 10
    assert report.total_bits == weights * 4 + biases * 32 + 8 + 48
    assert report.dense_bits == 32 * (WEIGHTS + BIASES)


def test_masked_dense_network_counts_the_masks_kept_weights():
    model = create("tiny-paper").eval()
    mask = _mask(model)
    report = storage_report(model, None, mask)
    rows = {r.layer: r for r in report.layers}
    assert rows["features.0"].stored_weights == 6 * 9
    assert rows["features.2"].stored_weights == 8 * (4 * 5 + 4 * 3)  # input maps 1 and 4 still counted
    assert rows["features.2"].intra_index_bits == 8 * 8
    assert rows["features.2"].weight_bits == 32 * rows["features.2"].stored_weights


def test_index_widths():
    assert [index_width(n) for n in (1, 2, 3, 8, 9, 25, 512)] == [1, 1, 2, 3, 4, 5, 9]


def test_report_json_totals_agree():
    model = create("tiny-paper")
    data = storage_report(model, dict.fromkeys(quantized_weights(model), 3)).to_json()
    assert data["total_bits"] == sum(r["total_bits"] for r in data["layers"]) + data["other_float_bits"]
    assert data["total_bytes"] == math.ceil(data["total_bits"] / 8)


def test_kernel_sparse_layer_stores_kept_kernels_and_a_kernel_bitmap():
    model = create("tiny-paper").eval()
    mask = NetworkMask()
    keep = torch.rand(16, 8, generator=torch.Generator().manual_seed(0)) < 0.4  # bool [O, I]
    mask.layer("features.5", model.features[5]).keep_kernel = keep
    net = compact(model, mask)
    assert type(net.features[5]).__name__ == "KernelSparseConv2d"
    row = {r.layer: r for r in storage_report(net, None, mask).layers}["features.5"]
    assert row.stored_weights == int(keep.sum()) * 9
    assert row.kernel_index_bits == 16 * 8 and row.channel_index_bits == row.intra_index_bits == 0
    # the compact layer describes itself: no masks.json needed for its kernel bitmap
    assert {r.layer: r for r in storage_report(net).layers}["features.5"].kernel_index_bits == 16 * 8
