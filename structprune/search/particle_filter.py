"""A particle filter over discrete masks (Anwar et al. 2017, §4), plus its evolutionary variant (EPF).

It knows nothing about networks. A particle is a vector of small integers in a *space*:
  BitSpace(n, keep)      bit vectors with exactly `keep` ones (groups kept) among `n`; the pruning ratio
                         is fixed, and every operator below preserves it.
  ChoiceSpace(n, k)      one of k choices per position (e.g. the intra-kernel pattern of each input map).
A score function maps a batch of particles [P, n] to scores [P]; lower is better (an MCR, optionally plus
a small cross-entropy tie-break, or plus λ·latency; see scoring.py and latency.py).

One generation (sequential importance resampling):
  1. score the particles (duplicates are scored once);
  2. importance weights  w_p ∝ exp(-(s_p - min s) / T)  with temperature T in score units: a particle one
     T worse than the best gets e^-1 of its weight. With MCR on N images, scores move in steps of 1/N;
     T = 0.002 (0.2 points) is sharp enough that the effective sample size stays well below P (at
     T = 0.01 a prior experiment found the weights nearly flat, i.e. random search);
  3. systematic resampling: P pointers spaced 1/P apart with one uniform offset;
  4. mutation: in BitSpace swap one kept and one pruned bit (`swaps` times), in ChoiceSpace redraw one
     position.
EPF adds, between 3 and 4, uniform crossover of consecutive resampled parents (for BitSpace repaired
back to exactly `keep` ones, by turning on/off randomly chosen bits where the parents disagree), and
elitism: the `elite` best particles of the generation pass to the next unchanged.

Everything random comes from one numpy Generator; the state (particles, scores, weights, RNG state,
generation, best, history) round-trips through JSON, so a search resumed from any saved generation ends
exactly as an uninterrupted one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from structprune.errors import StructpruneError

log = logging.getLogger(__name__)

ScoreFn = Callable[[np.ndarray], np.ndarray]  # particles [P, n] int16 -> scores [P] float (lower is better)
Repair = Callable[[np.ndarray], np.ndarray]  # particles [P, n] -> particles [P, n] of the same space
STATE_FORMAT = "structprune-pf/1"


def encode(row: np.ndarray) -> str | list[int]:
    """A particle as saved: a bit string, or a list of choice numbers."""
    values = row.tolist()
    return "".join(map(str, values)) if max(values, default=0) <= 1 else values


def decode(saved: str | list[int]) -> np.ndarray:
    return np.array([int(c) for c in saved], dtype=np.int16)


class BitSpace:
    """Bit vectors of length n with exactly `keep` ones."""

    def __init__(self, n: int, keep: int):
        if not 1 <= keep <= n:
            raise StructpruneError(f"cannot keep {keep} of {n} groups (must be 1..{n})")
        self.n, self.keep = n, keep

    def sample(self, rng: np.random.Generator, count: int) -> np.ndarray:
        out = np.zeros((count, self.n), dtype=np.int16)
        for row in out:
            row[rng.choice(self.n, self.keep, replace=False)] = 1
        return out

    def mutate(self, rng: np.random.Generator, x: np.ndarray, swaps: int) -> np.ndarray:
        x = x.copy()
        if self.keep == self.n:
            return x
        for _ in range(swaps):
            on, off = np.flatnonzero(x == 1), np.flatnonzero(x == 0)
            x[rng.choice(on)], x[rng.choice(off)] = 0, 1
        return x

    def crossover(self, rng: np.random.Generator, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        child = np.where(rng.random(self.n) < 0.5, a, b).astype(np.int16)
        return self.repair(rng, child)

    def repair(self, rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
        """Turn random bits on or off until exactly `keep` are on."""
        excess = int(x.sum()) - self.keep
        if excess > 0:
            x[rng.choice(np.flatnonzero(x == 1), excess, replace=False)] = 0
        elif excess < 0:
            x[rng.choice(np.flatnonzero(x == 0), -excess, replace=False)] = 1
        return x

    def contains(self, x: np.ndarray) -> bool:
        return x.shape == (self.n,) and set(np.unique(x).tolist()) <= {0, 1} and int(x.sum()) == self.keep

    def to_json(self) -> dict[str, Any]:
        return {"type": "bits", "n": self.n, "keep": self.keep}


class ChoiceSpace:
    """Vectors of length n with one of k choices (0..k-1) at each position."""

    def __init__(self, n: int, k: int):
        if n < 1 or not 1 <= k <= 30000:
            raise StructpruneError(f"choice space needs n >= 1 and 1 <= k <= 30000 (n={n}, k={k})")
        self.n, self.k = n, k

    def sample(self, rng: np.random.Generator, count: int) -> np.ndarray:
        return rng.integers(0, self.k, size=(count, self.n)).astype(np.int16)

    def mutate(self, rng: np.random.Generator, x: np.ndarray, swaps: int) -> np.ndarray:
        x = x.copy()
        for _ in range(swaps):
            x[rng.integers(self.n)] = rng.integers(self.k)
        return x

    def crossover(self, rng: np.random.Generator, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.where(rng.random(self.n) < 0.5, a, b).astype(np.int16)

    def contains(self, x: np.ndarray) -> bool:
        return x.shape == (self.n,) and bool(((x >= 0) & (x < self.k)).all())

    def to_json(self) -> dict[str, Any]:
        return {"type": "choices", "n": self.n, "k": self.k}


Space = BitSpace | ChoiceSpace


def space_from_json(data: dict[str, Any]) -> Space:
    if data.get("type") == "bits":
        return BitSpace(int(data["n"]), int(data["keep"]))
    if data.get("type") == "choices":
        return ChoiceSpace(int(data["n"]), int(data["k"]))
    raise StructpruneError(f"unknown particle space {data!r}")


@dataclass(frozen=True)
class PFConfig:
    """Settings of one search. `evolutionary` turns PF into EPF (crossover + elitism)."""

    particles: int = 24
    generations: int = 8
    temperature: float = 0.002  # score units (MCR fraction): weight e^-1 per T above the best
    swaps: int = 1  # mutations per particle per generation
    evolutionary: bool = False
    crossover_rate: float = 0.7  # EPF: chance that a child is a crossover of two parents
    elite: int = 2  # EPF: best particles copied unchanged into the next generation
    seed: int = 0

    def __post_init__(self) -> None:
        if self.particles < 2:
            raise StructpruneError(f"need at least 2 particles, got {self.particles}")
        if self.generations < 1:
            raise StructpruneError(f"need at least 1 generation, got {self.generations}")
        if not self.temperature > 0:
            raise StructpruneError(f"temperature must be positive, got {self.temperature}")
        if self.evolutionary and not 0 <= self.elite < self.particles:
            raise StructpruneError(f"elite must be in 0..{self.particles - 1}, got {self.elite}")


def importance_weights(scores: np.ndarray, temperature: float) -> np.ndarray:
    """w ∝ exp(-(s - min s) / T), normalised to sum 1."""
    w = np.exp(-(scores - scores.min()) / temperature)
    return w / w.sum()


def effective_sample_size(weights: np.ndarray) -> float:
    return float(1.0 / np.sum(weights**2))


def systematic_resample(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """Indices of P resampled particles: pointers (u + i) / P on the cumulative weights."""
    count = len(weights)
    pointers = (rng.random() + np.arange(count)) / count
    cumulative = np.cumsum(weights)
    cumulative[-1] = 1.0  # guard against rounding
    return np.searchsorted(cumulative, pointers, side="right").clip(max=count - 1)


def score_unique(score_fn: ScoreFn, particles: np.ndarray) -> np.ndarray:
    """Score each distinct particle once (resampling duplicates many)."""
    unique, inverse = np.unique(particles, axis=0, return_inverse=True)
    scores = np.asarray(score_fn(unique), dtype=np.float64)
    if scores.shape != (len(unique),):
        raise ValueError(f"score function returned shape {scores.shape} for {len(unique)} particles")
    return scores[inverse.reshape(-1)]


class ParticleFilter:
    """A resumable PF/EPF search over one particle space."""

    def __init__(self, space: Space, config: PFConfig, init: np.ndarray | None = None,
                 repair: Repair | None = None):
        """`init`: optional particles [k, n] (e.g. an L1 mask) placed first in the initial population. `repair`:
        maps each new population [P, n] onto particles of the space that the search prefers (e.g. ones using a
        budget in full); not saved with the state (set it again on a resumed filter)."""
        self.space, self.config, self.repair = space, config, repair
        self.rng = np.random.default_rng(config.seed)
        self.particles = space.sample(self.rng, config.particles)  # [P, n]
        if init is not None:
            init = np.asarray(init, dtype=np.int16).reshape(-1, space.n)[: config.particles]
            for row in init:
                if not space.contains(row):
                    raise StructpruneError("an initial particle does not belong to the search space")
            self.particles[: len(init)] = init
        self.scores: np.ndarray | None = None
        self.generation = 0
        self.best: np.ndarray | None = None
        self.best_score = float("inf")
        self.history: list[dict[str, float]] = []

    @property
    def done(self) -> bool:
        return self.generation >= self.config.generations

    def step(self, score_fn: ScoreFn) -> dict[str, float]:
        """Score the current particles, record the generation, and move to the next population."""
        cfg = self.config
        scores = score_unique(score_fn, self.particles)
        self.scores = scores
        order = np.argsort(scores, kind="stable")
        if scores[order[0]] < self.best_score:
            self.best, self.best_score = self.particles[order[0]].copy(), float(scores[order[0]])
        weights = importance_weights(scores, cfg.temperature)
        record = {
            "generation": self.generation,
            "best": float(scores[order[0]]),
            "mean": float(scores.mean()),
            "best_so_far": self.best_score,
            "ess": effective_sample_size(weights),
            "unique": len(np.unique(self.particles, axis=0)),
        }
        parents = self.particles[systematic_resample(self.rng, weights)]
        children = []
        start = 0
        if cfg.evolutionary:
            children = [self.particles[i].copy() for i in order[: cfg.elite]]
            start = cfg.elite
        for i in range(start, cfg.particles):
            child = parents[i]
            if cfg.evolutionary and self.rng.random() < cfg.crossover_rate:
                child = self.space.crossover(self.rng, parents[i], parents[(i + 1) % cfg.particles])
            children.append(self.space.mutate(self.rng, child, cfg.swaps))
        self.particles = np.stack(children).astype(np.int16)
        if self.repair is not None:
            self.particles = np.asarray(self.repair(self.particles), dtype=np.int16)
        self.generation += 1
        self.history.append(record)
        log.debug("generation %d: best %.5f mean %.5f ess %.1f", record["generation"], record["best"],
                  record["mean"], record["ess"])
        return record

    def run(self, score_fn: ScoreFn, on_generation: Callable[[ParticleFilter], None] | None = None) -> np.ndarray:
        """Run the remaining generations; `on_generation` sees the filter after each one (e.g. to save it)."""
        while not self.done:
            self.step(score_fn)
            if on_generation is not None:
                on_generation(self)
        assert self.best is not None
        return self.best

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the search exactly, as JSON-ready values."""
        return {
            "format": STATE_FORMAT,
            "space": self.space.to_json(),
            "config": asdict(self.config),
            "particles": [encode(row) for row in self.particles],
            "scores": None if self.scores is None else self.scores.tolist(),
            "generation": self.generation,
            "best": None if self.best is None else encode(self.best),
            "best_score": self.best_score if self.best is not None else None,
            "history": self.history,
            "rng": self.rng.bit_generator.state,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ParticleFilter:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise StructpruneError(f"not a particle-filter state (format {STATE_FORMAT!r} expected)")
        try:
            pf = cls.__new__(cls)
            pf.space = space_from_json(state["space"])
            pf.repair = None
            pf.config = PFConfig(**state["config"])
            pf.rng = np.random.default_rng()
            pf.rng.bit_generator.state = state["rng"]
            pf.particles = np.stack([decode(row) for row in state["particles"]])
            pf.scores = None if state["scores"] is None else np.array(state["scores"], dtype=np.float64)
            pf.generation = int(state["generation"])
            pf.best = None if state["best"] is None else decode(state["best"])
            pf.best_score = float("inf") if state["best_score"] is None else float(state["best_score"])
            pf.history = list(state["history"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StructpruneError(f"corrupt particle-filter state ({exc})") from None
        return pf
