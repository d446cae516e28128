"""The particle filter on toy scores with a planted best mask: finds it, is deterministic, resumes exactly."""

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from structprune.errors import StructpruneError
from structprune.search.particle_filter import (
    BitSpace,
    ChoiceSpace,
    ParticleFilter,
    PFConfig,
    importance_weights,
    systematic_resample,
)

N, KEEP = 32, 8
PLANTED = np.zeros(N, dtype=np.int8)
PLANTED[[1, 4, 7, 12, 18, 22, 27, 30]] = 1


def planted_score(particles: np.ndarray) -> np.ndarray:
    """Fraction of the planted kept bits that a particle misses: 0 only for the planted mask."""
    return ((PLANTED == 1) & (particles == 0)).sum(axis=1) / KEEP


def run_search(evolutionary: bool, seed: int = 0, generations: int = 40) -> ParticleFilter:
    cfg = PFConfig(particles=32, generations=generations, temperature=0.05, evolutionary=evolutionary, seed=seed)
    pf = ParticleFilter(BitSpace(N, KEEP), cfg)
    pf.run(planted_score)
    return pf


@pytest.mark.parametrize("evolutionary", [False, True])
def test_finds_the_planted_mask(evolutionary):
    pf = run_search(evolutionary)
    assert pf.best_score == 0.0
    np.testing.assert_array_equal(pf.best, PLANTED)
    # the search improved on its random start
    assert pf.history[0]["best"] > 0.0


@pytest.mark.parametrize("evolutionary", [False, True])
def test_same_seed_same_result_other_seed_other_path(evolutionary):
    a, b = run_search(evolutionary, seed=3, generations=6), run_search(evolutionary, seed=3, generations=6)
    assert a.history == b.history
    np.testing.assert_array_equal(a.particles, b.particles)
    c = run_search(evolutionary, seed=4, generations=6)
    assert not np.array_equal(a.particles, c.particles)


@pytest.mark.parametrize("evolutionary", [False, True])
def test_resumed_search_ends_exactly_as_uninterrupted(evolutionary):
    full = run_search(evolutionary, seed=5, generations=12)
    cfg = PFConfig(particles=32, generations=12, temperature=0.05, evolutionary=evolutionary, seed=5)
    part = ParticleFilter(BitSpace(N, KEEP), cfg)
    for _ in range(5):
        part.step(planted_score)
    saved = json.loads(json.dumps(part.state_dict()))  # through JSON text, as on disk
    resumed = ParticleFilter.from_state(saved)
    resumed.run(planted_score)
    assert resumed.history == full.history
    np.testing.assert_array_equal(resumed.particles, full.particles)
    np.testing.assert_array_equal(resumed.best, full.best)


def test_elitism_never_loses_the_best():
    cfg = PFConfig(particles=16, generations=15, temperature=0.5, evolutionary=True, elite=1, seed=1)
    pf = ParticleFilter(BitSpace(N, KEEP), cfg)
    pf.run(planted_score)
    bests = [h["best"] for h in pf.history]
    assert all(later <= earlier for earlier, later in itertools.pairwise(bests))


def test_choice_space_finds_planted_choices():
    target = np.array([0, 3, 1, 2, 2, 0, 1, 3], dtype=np.int8)

    def score(p):
        return (p != target).mean(axis=1)

    pf = ParticleFilter(ChoiceSpace(8, 4), PFConfig(particles=24, generations=40, temperature=0.05, seed=0))
    pf.run(score)
    np.testing.assert_array_equal(pf.best, target)


def test_initial_particle_is_used_and_checked():
    pf = ParticleFilter(BitSpace(N, KEEP), PFConfig(particles=8, generations=1), init=PLANTED[None])
    np.testing.assert_array_equal(pf.particles[0], PLANTED)
    pf.run(planted_score)
    assert pf.best_score == 0.0
    bad = PLANTED.copy()
    bad[0] = 1  # 9 bits on: wrong ratio
    with pytest.raises(StructpruneError):
        ParticleFilter(BitSpace(N, KEEP), PFConfig(particles=8), init=bad[None])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 40), data=st.data())
def test_operators_keep_the_ratio(n, data):
    keep = data.draw(st.integers(1, n))
    seed = data.draw(st.integers(0, 2**16))
    space, rng = BitSpace(n, keep), np.random.default_rng(seed)
    a, b = space.sample(rng, 2)
    assert space.contains(a) and space.contains(b)
    assert space.contains(space.mutate(rng, a, swaps=3))
    assert space.contains(space.crossover(rng, a, b))


@settings(max_examples=40, deadline=None)
@given(scores=st.lists(st.floats(0, 1), min_size=2, max_size=50), seed=st.integers(0, 1000))
def test_systematic_resampling_matches_weights(scores, seed):
    w = importance_weights(np.array(scores), temperature=0.01)
    assert np.isclose(w.sum(), 1.0) and w[int(np.argmin(scores))] == w.max()
    idx = systematic_resample(np.random.default_rng(seed), w)
    counts = np.bincount(idx, minlength=len(w))
    # systematic resampling keeps each particle floor(P·w) or ceil(P·w) times
    assert np.all(np.abs(counts - len(w) * w) < 1.0 + 1e-9)


def test_bad_settings_are_one_line_errors():
    with pytest.raises(StructpruneError):
        PFConfig(particles=1)
    with pytest.raises(StructpruneError):
        PFConfig(temperature=0.0)
    with pytest.raises(StructpruneError):
        BitSpace(4, 0)
    with pytest.raises(StructpruneError):
        ParticleFilter.from_state({"format": "nope"})
