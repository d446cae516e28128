"""The structure search behind `prune --target-macs / --target-speedup / --target-latency`.

A target is a budget on a cost model (target_cost.py): R× fewer MACs is a relative MAC budget of 1/R, a
speed-up S a relative latency budget of 1/S, a latency of MS milliseconds MS over the dense network's
predicted time. The particle filter (particle_filter.py, pf or epf) searches the space of target_space.py,
one ladder rung per channel group. A particle whose predicted cost meets the budget is scored by a MaskScorer:
in a run, its validation MCR (+ tie · cross-entropy) on the score images, the masked network run by one full
forward pass with its batch norms re-estimated under the masks (scoring_full.py); one over budget scores INFEASIBLE plus its
relative excess, without running: it loses to every feasible particle but the smaller excess still ranks
first. Every population is repaired to the budget (target_repair.py): each particle grows or shrinks until no
group can keep one more rung within budget, so the search compares structures that use the budget in full. The
first population is the most-kept uniform structure that meets the budget, the structure one global ranking of
the maps by importance gives (BudgetRepair.by_importance), with `forms` also the uniform structure with kernel
blocks 2 or 4 and with the 2×3 or 3×1 intra shape wherever they are offered, and copies of these with every
group moved up to `jitter` rungs either way (and a quarter of the form choices drawn at random).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np

from structprune.errors import StructpruneError
from structprune.search.particle_filter import ChoiceSpace, ParticleFilter, PFConfig
from structprune.search.target_cost import CostModel
from structprune.search.target_forms import parse_forms
from structprune.search.target_repair import BudgetRepair
from structprune.search.target_space import DEFAULT_MAP_IMPORTANCE, DEFAULT_MIN_KEEP, TargetSpace, check_importance
from structprune.sparsity.fast_forms import default_round_to
from structprune.sparsity.masks import NetworkMask
from structprune.sparsity.method import Method

log = logging.getLogger("structprune.search")

INFEASIBLE = 2.0  # score of a structure over budget, plus its relative excess (an MCR is at most 1)
TARGET_KINDS = {"macs": "--target-macs", "speedup": "--target-speedup", "latency": "--target-latency"}
COST_NAMES = {"macs": "MACs", "latency": "latency"}  # a cost model's kind, in words


@dataclass(frozen=True)
class Target:
    """What the user asked for: `kind` (macs, speedup, latency) and its value (a factor, or milliseconds)."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise StructpruneError(f"unknown target {self.kind!r}; choose {', '.join(TARGET_KINDS)}")
        if self.kind != "latency" and not self.value > 1.0:
            raise StructpruneError(f"{TARGET_KINDS[self.kind]} {self.value:g}: the factor must be above 1 "
                                   f"(2 asks for half the {'MACs' if self.kind == 'macs' else 'time'})")
        if self.kind == "latency" and not self.value > 0.0:
            raise StructpruneError(f"--target-latency {self.value:g}: the latency must be positive (milliseconds)")

    @classmethod
    def of(cls, macs: float | None = None, speedup: float | None = None, latency_ms: float | None = None) -> Target:
        """The one target given (conflicting or missing targets are refused)."""
        given = {k: v for k, v in (("macs", macs), ("speedup", speedup), ("latency", latency_ms)) if v is not None}
        if len(given) != 1:
            names = " and ".join(TARGET_KINDS[k] for k in given) if given else "none"
            raise StructpruneError(f"give exactly one target of {', '.join(TARGET_KINDS.values())} (got {names})")
        kind, value = next(iter(given.items()))
        return cls(kind, float(value))

    @property
    def flag(self) -> str:
        return f"{TARGET_KINDS[self.kind]} {self.value:g}"

    def relative_budget(self, dense_ms: float | None = None) -> float:
        """The budget as a fraction of the dense network's cost (`dense_ms`: its predicted latency)."""
        if self.kind != "latency":
            return 1.0 / self.value
        if dense_ms is None:
            raise ValueError("a latency target needs the dense network's latency")
        return self.value / dense_ms


@dataclass(frozen=True)
class TargetSearchConfig:
    """How the structure is searched: the particle filter's settings, the ladder, and scoring."""

    method: Method = Method.PF  # pf or epf
    particles: int = 16
    generations: int = 6
    temperature: float = 0.002
    round_to: int = field(default_factory=default_round_to)  # this CPU's channel block
    min_keep: float = DEFAULT_MIN_KEEP
    jitter: int = 1
    score_images: int = 1000
    bn_batches: int = 2  # batch-norm re-estimation per candidate: batches of 64 training images (0: off)
    tie: float = 1e-3
    seed: int = 0
    forms: tuple[str, ...] = ("channel",)  # also search "blocks" (kernel blocks) and "intra" (intra shapes)
    importance: str = DEFAULT_MAP_IMPORTANCE  # which maps of a group go: "l1" or "tp-l2" (map_importance)

    def __post_init__(self) -> None:
        object.__setattr__(self, "forms", parse_forms(self.forms))
        check_importance(self.importance)
        if self.method not in (Method.PF, Method.EPF):
            raise StructpruneError(f"the target search runs the particle filter (pf or epf), not {self.method}")
        PFConfig(particles=self.particles, generations=self.generations, temperature=self.temperature)
        if self.jitter < 0 or self.score_images < 1 or self.bn_batches < 0:
            raise StructpruneError("jitter and bn_batches must be >= 0, score_images >= 1")

    def pf_config(self, seed: int) -> PFConfig:
        return PFConfig(particles=self.particles, generations=self.generations, temperature=self.temperature,
                        evolutionary=self.method is Method.EPF, seed=seed)


def check_reachable(space: TargetSpace, cost: CostModel, budget: float, target: Target, cfg: TargetSearchConfig) -> None:
    """One line when even the ladder's floor (every group at its fewest maps) misses the budget."""
    floor = cost.predict(space.uniform(space.k - 1))
    if floor > budget + 1e-12:
        raise StructpruneError(
            f"{target.flag}: out of reach; keeping {cfg.min_keep:g} of every group's maps (rounded to multiples of "
            f"{cfg.round_to}) leaves {floor:.3f} of the {COST_NAMES[cost.kind]}, and the target needs {budget:.3f} "
            "(lower the target, or pass a smaller --min-keep or --round-to)")


def seed_structures(space: TargetSpace, cost: CostModel, budget: float, cfg: TargetSearchConfig,
                    repair: BudgetRepair) -> list[np.ndarray]:
    """The first population's seeds (module doc), distinct and repaired: the uniform structure first, the
    global-importance one second."""
    dense_forms = [c for c in range(space.k) if cost.predict(space.with_forms(c)) <= budget + 1e-12]
    start = dense_forms[0] if dense_forms else space.k - 1
    seeds = [space.with_forms(start)]
    if "blocks" in cfg.forms:
        seeds += [space.with_forms(start, groups=g) for g in (2, 4)]
    if "intra" in cfg.forms:
        seeds += [space.with_forms(start, shape=s) for s in ((2, 3), (3, 1))]
    seeds = list(repair(np.stack(seeds)))
    seeds.insert(1, repair.by_importance(space.with_forms(start)))
    unique = {row.tobytes(): row for row in seeds}  # a space without forms to offer: one or two seeds
    return list(unique.values())


def start_population(space: TargetSpace, cfg: TargetSearchConfig, seed: int, repair: BudgetRepair,
                     seeds: list[np.ndarray]) -> np.ndarray:
    """The seeds (seed_structures), then jittered copies of them, repaired to the budget."""
    rng = np.random.default_rng(seed + 7)
    rows = []
    g = space.channel_dims
    for i in range(cfg.particles):
        row = seeds[i % len(seeds)].copy()
        if i >= len(seeds):
            row[:g] = np.clip(row[:g] + rng.integers(-cfg.jitter, cfg.jitter + 1, size=g), 0, space.k - 1)
            redraw = rng.random(space.n - g) < 0.25
            row[g:] = np.where(redraw, rng.integers(0, space.k, size=space.n - g), row[g:])
            row = repair(row)
        rows.append(row)
    return np.stack(rows).astype(np.int16)


class MaskScorer(Protocol):
    """Scores of whole-network masks, lower is better (FullForwardScorer, or the API's score_fn adapter)."""

    def score_masks(self, masks: list[NetworkMask]) -> np.ndarray: ...


class Objective:
    """Scores particles: the scorer's score within budget, INFEASIBLE + relative excess over it. A structure
    scored in an earlier generation is not scored again (the scorer is deterministic)."""

    def __init__(self, space: TargetSpace, cost: CostModel, budget: float, scorer: MaskScorer):
        self.space, self.cost, self.budget, self.scorer = space, cost, budget, scorer
        self.seen: dict[bytes, tuple[float, np.ndarray]] = {}  # every structure scored: its score, the structure

    def ranked(self, count: int, also: ParticleFilter | None = None) -> list[np.ndarray]:
        """The `count` best distinct structures scored within budget, best first; with `also`, its population's
        scored structures count too (a resumed filter's, scored before the restart)."""
        scored = dict(self.seen)
        if also is not None and also.scores is not None:
            for particle, score in zip(also.particles, also.scores, strict=True):
                if score < INFEASIBLE:
                    scored.setdefault(particle.tobytes(), (float(score), particle))
        order = sorted(scored.values(), key=lambda item: item[0])
        return [particle.copy() for _, particle in order[:count]]

    def __call__(self, particles: np.ndarray) -> np.ndarray:
        costs = np.array([self.cost.predict(p) for p in particles])
        scores = INFEASIBLE + (costs / self.budget - 1.0)
        new = [i for i, c in enumerate(costs) if c <= self.budget + 1e-12 and particles[i].tobytes() not in self.seen]
        if new:
            fresh = self.scorer.score_masks([self.space.mask(particles[i]) for i in new])
            self.seen.update({particles[i].tobytes(): (float(v), particles[i].copy())
                              for i, v in zip(new, fresh, strict=True)})
        for i, particle in enumerate(particles):
            if particle.tobytes() in self.seen:
                scores[i] = self.seen[particle.tobytes()][0]
        return scores


class StructureSearch(NamedTuple):
    """A target search's outcome: the best structure, the filter that found it, and the `finalists` best distinct
    structures it scored within budget (best first; with the uniform and global-importance start structures
    added when they are not among them and `finalists` > 0)."""

    best: np.ndarray
    filter: ParticleFilter
    finalists: list[np.ndarray]


def search_structure(space: TargetSpace, cost: CostModel, budget: float, scorer: MaskScorer,
                     cfg: TargetSearchConfig, seed: int, label: str, saved: dict[str, Any] | None = None,
                     on_generation: Callable[[ParticleFilter], None] | None = None,
                     finalists: int = 0) -> StructureSearch:
    """The best structure within `budget` (a saved filter state resumes), the filter that found it, and its
    `finalists` (StructureSearch; a resumed search draws them from what it scored after the restart and the
    restored population)."""
    repair = BudgetRepair(space, cost, budget)
    seeds = seed_structures(space, cost, budget, cfg, repair)
    if saved is not None:
        pf = ParticleFilter.from_state(saved)
        pf.repair = repair
    else:
        pf = ParticleFilter(ChoiceSpace(space.n, space.k), cfg.pf_config(seed),
                            init=start_population(space, cfg, seed, repair, seeds), repair=repair)
    objective = Objective(space, cost, budget, scorer)

    def after(current: ParticleFilter) -> None:
        rec = current.history[-1]
        feasible = int((current.scores is not None) and (current.scores < INFEASIBLE).sum())
        best_cost = cost.predict(current.best)
        rec.update(best_cost=best_cost, budget=budget, budget_used=best_cost / budget, feasible=feasible)
        log.info("%s: generation %d/%d, best score %.4f at %.3f of the %s (budget %.3f: %.1f%% used), %d of %d "
                 "particles within budget", label, current.generation, current.config.generations,
                 current.best_score, best_cost, COST_NAMES[cost.kind], budget, 100 * best_cost / budget, feasible,
                 current.config.particles)
        if on_generation is not None:
            on_generation(current)

    best = pf.run(objective, on_generation=after)
    feasible = cost.predict(best) <= budget + 1e-12
    if feasible and finalists < 1:
        return StructureSearch(best, pf, [])
    starts = seeds[:2]  # the uniform and global-importance ones
    if not feasible:  # no particle ever met the budget: the most-kept uniform one does
        best = starts[0]
    if finalists < 1:
        return StructureSearch(best, pf, [])
    chosen = objective.ranked(finalists, also=pf)
    if not any(np.array_equal(best, c) for c in chosen):
        chosen.insert(0, best.copy())
    for start in starts:
        if cost.predict(start) <= budget + 1e-12 and not any(np.array_equal(start, c) for c in chosen):
            chosen.append(start)
    return StructureSearch(best, pf, chosen)
