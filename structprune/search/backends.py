"""Where candidate masks are scored: in this process (default) or on a Ray cluster (`--backend ray`).

A backend turns (scorer, decode) into a score function particles [P, n] -> scores [P] (MCR + tie · CE), and
remembers the MCR of every particle it scored (`mcr_of`, for progress logs). A scorer is any object with
`mcr_and_ce(masks)` and `tie`: scoring.LayerScorer, scoring.ChainChannelScorer, scoring_full.FullForwardScorer
(whose decode gives a NetworkMask per particle). The Ray
backend ships the scorer (model and cached activations) to the object store once per rung and scores
contiguous slices of the particle batch as parallel tasks; results come back in order, so it returns
exactly what the in-process backend returns. It needs the optional extra: pip install 'structprune[ray]'.
Connects to a running cluster when RAY_ADDRESS is set, else starts a local one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch

from structprune.errors import StructpruneError

BACKENDS = ("inprocess", "ray")
Decode = Callable[[np.ndarray], Any]


class Scorer(Protocol):
    tie: float

    def mcr_and_ce(self, masks: Any) -> tuple[np.ndarray, np.ndarray]: ...


class _Remembering:
    """Keeps the MCR of each particle scored, keyed by its bytes."""

    def __init__(self) -> None:
        self.mcr_of: dict[bytes, float] = {}

    def _scores(self, particles: np.ndarray, mcr: np.ndarray, ce: np.ndarray, tie: float) -> np.ndarray:
        for row, value in zip(particles, mcr, strict=True):
            self.mcr_of[np.ascontiguousarray(row).tobytes()] = float(value)
        return mcr + tie * ce


class InProcess(_Remembering):
    def __init__(self, scorer: Scorer, decode: Decode):
        super().__init__()
        self.scorer, self.decode = scorer, decode

    def __call__(self, particles: np.ndarray) -> np.ndarray:
        mcr, ce = self.scorer.mcr_and_ce(self.decode(particles))
        return self._scores(particles, mcr, ce, self.scorer.tie)


def _score_slice(scorer: Scorer, decode: Decode, particles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    torch.set_num_threads(1)  # one core per task; parallelism comes from the tasks
    return scorer.mcr_and_ce(decode(particles))


class RayBackend(_Remembering):
    """Scores slices of each particle batch as Ray tasks, one per worker."""

    def __init__(self, scorer: Scorer, decode: Decode, workers: int):
        super().__init__()
        try:
            import ray
        except ImportError:
            raise StructpruneError("--backend ray needs the package ray: pip install 'structprune[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            ray.init(num_cpus=None, include_dashboard=False, log_to_driver=False, configure_logging=False)
        self.workers = max(1, workers)
        self.task = ray.remote(num_cpus=1)(_score_slice)
        self.tie = scorer.tie
        self.scorer_ref = ray.put(scorer)
        self.decode_ref = ray.put(decode)

    def __call__(self, particles: np.ndarray) -> np.ndarray:
        chunks = [c for c in np.array_split(particles, min(self.workers, len(particles))) if len(c)]
        futures = [self.task.remote(self.scorer_ref, self.decode_ref, c) for c in chunks]
        parts = self.ray.get(futures)
        mcr, ce = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        return self._scores(particles, mcr, ce, self.tie)

    def close(self) -> None:
        del self.scorer_ref, self.decode_ref


def make_backend(name: str, scorer: Scorer, decode: Decode, workers: int = 2) -> InProcess | RayBackend:
    if name == "inprocess":
        return InProcess(scorer, decode)
    if name == "ray":
        return RayBackend(scorer, decode, workers)
    raise StructpruneError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
