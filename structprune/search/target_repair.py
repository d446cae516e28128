"""Budget repair: every structure the target search scores is as large as the budget allows.

A particle (target_space.py) is repaired in two steps, both deterministic:
  shift  every channel choice moves by the same amount d (clipped to the ladder), d the smallest (most maps kept)
         whose predicted cost meets the budget: an over-budget particle shrinks until it fits, one under budget
         grows, and the particle keeps its shape (which groups keep relatively more)
  fill   then, while some group can go one rung up and still meet the budget, the group whose next rung adds
         the most importance per unit of cost goes up (its added maps' importance, the space's L1 or other, over
         its mean map's; a rung that costs nothing goes first; ties: the first group)
After it, no group can go one rung up within budget. The form choices (kernel blocks, intra shapes) are kept
as they are, what they save spent on channels; only when every group keeps all its maps and budget is left do
forms step back towards the dense form (one option at a time, the step using the most budget that still fits
first). A particle whose floor (every channel choice at the ladder's end, its forms kept) still misses the
budget stays over it and scores as infeasible.

`by_importance` builds the structure a global importance ranking gives (Torch-Pruning's global pruning): from
the ladder's floor, the fill above with the added importance alone, cost aside.
"""

from __future__ import annotations

import numpy as np

from structprune.search.target_cost import CostModel
from structprune.search.target_space import TargetSpace

EPS = 1e-12


class BudgetRepair:
    """repair(particles [P, n] or [n]) -> the repaired particles (module doc)."""

    def __init__(self, space: TargetSpace, cost: CostModel, budget: float):
        self.space, self.cost, self.budget = space, cost, budget
        self.gain: dict[str, np.ndarray] = {}  # per root: importance of its maps in keep order, over its mean
        for root in space.roots:
            score = space.importance[root].double().numpy()
            mean = float(score.mean()) or 1.0
            self.gain[root] = score[space.order[root].numpy()] / mean
        self._done: dict[bytes, np.ndarray] = {}

    def __call__(self, particles: np.ndarray) -> np.ndarray:
        particles = np.asarray(particles, dtype=np.int16)
        if particles.ndim == 1:
            return self.one(particles)
        return np.stack([self.one(p) for p in particles]).astype(np.int16)

    def fits(self, particle: np.ndarray) -> bool:
        return self.cost.predict(particle) <= self.budget + EPS

    def one(self, particle: np.ndarray) -> np.ndarray:
        key = particle.tobytes()
        if key not in self._done:
            self._done[key] = self._fill(self._shift(particle))
        return self._done[key].copy()

    def _shift(self, particle: np.ndarray) -> np.ndarray:
        g, k = self.space.channel_dims, self.space.k
        for d in range(-(k - 1), k):
            moved = particle.copy()
            moved[:g] = np.clip(particle[:g].astype(np.int32) + d, 0, k - 1)
            if self.fits(moved) or d == k - 1:
                return moved
        return particle.copy()  # k == 1: nothing to move

    def _raised(self, particle: np.ndarray, i: int) -> np.ndarray | None:
        """The particle with group i one rung up (the largest choice below its own on the next rung), or None."""
        root = self.space.roots[i]
        rung = self.space.rung(root, particle[i])
        if rung == 0:
            return None
        choice = int(particle[i])
        while choice > 0 and self.space.rung(root, choice - 1) == rung:
            choice -= 1
        raised = particle.copy()
        raised[i] = choice - 1
        while raised[i] > 0 and self.space.rung(root, raised[i] - 1) == rung - 1:
            raised[i] -= 1
        return raised

    def by_importance(self, particle: np.ndarray) -> np.ndarray:
        """`particle`'s forms with every channel group grown from the ladder's floor one rung at a time, the
        rung adding the most importance (over its group's mean map) first, whatever it costs, while one fits:
        the allocation of one importance ranking over all maps."""
        floor = np.asarray(particle, dtype=np.int16).copy()
        floor[: self.space.channel_dims] = self.space.k - 1
        return self._fill(floor, per_cost=False)

    def _value(self, particle: np.ndarray, raised: np.ndarray, i: int, per_cost: bool = True) -> float:
        root = self.space.roots[i]
        before = self.space.ladders[root][self.space.rung(root, particle[i])]
        after = self.space.ladders[root][self.space.rung(root, raised[i])]
        added = float(self.gain[root][before:after].sum())
        extra = self.cost.predict(raised) - self.cost.predict(particle)
        if extra <= EPS:
            return float("inf")
        return added / extra if per_cost else added

    def _fill(self, particle: np.ndarray, per_cost: bool = True) -> np.ndarray:
        if not self.fits(particle):
            return particle
        while True:
            best: tuple[float, np.ndarray] | None = None
            for i in range(self.space.channel_dims):
                raised = self._raised(particle, i)
                if raised is None or not self.fits(raised):
                    continue
                value = self._value(particle, raised, i, per_cost)
                if best is None or value > best[0]:
                    best = (value, raised)
            if best is None:
                relaxed = self._relax_form(particle)
                if relaxed is None:
                    return particle
                particle = relaxed
            else:
                particle = best[1]

    def _relax_form(self, particle: np.ndarray) -> np.ndarray | None:
        """With every group at its top rung: the particle with one form one option nearer the dense form, the
        one using the most budget that still fits (None: none fits, or a group could still go up)."""
        space = self.space
        if any(space.rung(r, c) > 0 for r, c in zip(space.roots, particle[: space.channel_dims].tolist(), strict=True)):
            return None
        best: tuple[float, np.ndarray] | None = None
        for j, options in enumerate(space.form_options()):
            i = space.channel_dims + j
            option = space.option(int(particle[i]), options)
            if option == 0:
                continue
            relaxed = particle.copy()
            relaxed[i] = space.form_choice(option - 1, options)
            if self.fits(relaxed) and (best is None or self.cost.predict(relaxed) > best[0]):
                best = (self.cost.predict(relaxed), relaxed)
        return None if best is None else best[1]
