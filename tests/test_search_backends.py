"""Scoring backends: Ray tasks on a local Ray instance return exactly the in-process scores."""

import numpy as np
import pytest
import torch

from structprune.errors import StructpruneError
from structprune.models import create
from structprune.search.backends import InProcess, make_backend
from structprune.search.scoring import LayerScorer, ScoreSet, channel_masks_from_bits
from structprune.sparsity.granularity import Granularity


def tiny_scorer():
    torch.manual_seed(0)
    model = create("tiny-paper", in_channels=1, input_size=8).eval()
    g = torch.Generator().manual_seed(0)
    data = ScoreSet(torch.randn(40, 1, 8, 8, generator=g), torch.randint(0, 10, (40,), generator=g))
    alive = torch.ones(8, dtype=torch.bool)
    return LayerScorer(model, "features.2", Granularity.CHANNEL, data), lambda p: channel_masks_from_bits(p, alive)


def test_unknown_backend_is_one_line():
    scorer, decode = tiny_scorer()
    with pytest.raises(StructpruneError, match="unknown backend"):
        make_backend("mpi", scorer, decode)


def test_ray_backend_matches_in_process():
    ray = pytest.importorskip("ray")
    scorer, decode = tiny_scorer()
    particles = (np.random.default_rng(0).random((7, 8)) < 0.5).astype(np.int16)
    expected = InProcess(scorer, decode)(particles)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        backend = make_backend("ray", scorer, decode, workers=3)
        got = backend(particles)
        backend.close()
    finally:
        ray.shutdown()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
