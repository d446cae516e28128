"""Where candidate masks are scored: in this process (default) or on a Ray cluster (`--backend ray`).

A backend turns (LayerScorer, decode) into a score function particles [P, n] -> scores [P]. The Ray
backend ships the scorer (model and cached activations) to the object store once per rung and scores
contiguous slices of the particle batch as parallel tasks; results come back in order, so it returns
exactly what the in-process backend returns. It needs the optional extra: pip install 'structprune[ray]'.
Connects to a running cluster when RAY_ADDRESS is set, else starts a local one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from structprune.errors import StructpruneError
from structprune.search.scoring import LayerScorer

BACKENDS = ("inprocess", "ray")
Decode = Callable[[np.ndarray], torch.Tensor]


class InProcess:
    def __init__(self, scorer: LayerScorer, decode: Decode):
        self.scorer, self.decode = scorer, decode

    def __call__(self, particles: np.ndarray) -> np.ndarray:
        return self.scorer.score_masks(self.decode(particles))


def _score_slice(scorer: LayerScorer, decode: Decode, particles: np.ndarray) -> np.ndarray:
    torch.set_num_threads(1)  # one core per task; parallelism comes from the tasks
    return scorer.score_masks(decode(particles))


class RayBackend:
    """Scores slices of each particle batch as Ray tasks, one per worker."""

    def __init__(self, scorer: LayerScorer, decode: Decode, workers: int):
        try:
            import ray
        except ImportError:
            raise StructpruneError("--backend ray needs the package ray: pip install 'structprune[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            ray.init(num_cpus=None, include_dashboard=False, log_to_driver=False, configure_logging=False)
        self.workers = max(1, workers)
        self.task = ray.remote(num_cpus=1)(_score_slice)
        self.scorer_ref = ray.put(scorer)
        self.decode_ref = ray.put(decode)

    def __call__(self, particles: np.ndarray) -> np.ndarray:
        chunks = [c for c in np.array_split(particles, min(self.workers, len(particles))) if len(c)]
        futures = [self.task.remote(self.scorer_ref, self.decode_ref, c) for c in chunks]
        return np.concatenate(self.ray.get(futures))

    def close(self) -> None:
        del self.scorer_ref, self.decode_ref


def make_backend(name: str, scorer: LayerScorer, decode: Decode, workers: int = 2) -> Callable[[np.ndarray], np.ndarray]:
    if name == "inprocess":
        return InProcess(scorer, decode)
    if name == "ray":
        return RayBackend(scorer, decode, workers)
    raise StructpruneError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
