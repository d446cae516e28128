"""The target stage: prune a run to R× fewer MACs, an S× speed-up or a latency, by a structure search.

  target_run(src, out, target, cfg)   src run -> out run: masks chosen to meet `target`, batch norms
                                      re-estimated, masks.json and target.json (the chosen structure per
                                      group, the budget, predicted and measured cost of every try)

The search (structprune.search.target_search) meets the budget on its cost model. A MAC target is exact. A
speed or latency target is predicted by a per-layer latency model, so it is verified: the chosen masks are
compacted, dense and compact networks timed with structprune.bench (same runtime, batch and threads), and if
the measured speed-up falls below `accept` × the one asked for, the budget is tightened by the shortfall and
the search runs again (at most `retries` more tries). Each finished try is saved in the staging area, so a
killed run resumes where it stopped (search state: after every generation).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from structprune.arch import example_input
from structprune.bench import Candidate, bench, runtime_candidate
from structprune.compact.compaction import compact
from structprune.errors import StructpruneError
from structprune.jsonio import read_json, write_json_atomic
from structprune.metrics import evaluation_metrics, size_metrics
from structprune.output import Output, fingerprint_files
from structprune.runcheck import load_checked_run
from structprune.runfiles import LATENCY_MODEL_FILE, MASKS_FILE, STATE_DIR, TARGET_FILE, TARGET_STATE_FILE
from structprune.runfolder import as_output, save_run
from structprune.search.finalists import FinalistConfig, check_split, pick_finalist
from structprune.search.scoring import ScoreSet
from structprune.search.scoring_full import FullForwardScorer
from structprune.search.target_cost import CostModel, LatencyCost, LatencyModelLike, MacCost, measured_latency_cost
from structprune.search.target_search import Target, TargetSearchConfig, check_reachable, search_structure
from structprune.search.target_space import TargetSpace, map_importance
from structprune.sparsity.masking import MaskApplier
from structprune.sparsity.selection import channel_groups_of
from structprune.stages.prune import DEFAULT_BN_BATCHES, load_masks, mask_summary, reestimate_batch_norms, run_dataset

log = logging.getLogger(__name__)

TARGET_FORMAT = "structprune-target/1"
TARGET_RUNTIMES = ("onnxruntime", "eager")
# (dense network, compact network, input shape, runtime, batch, threads) -> (dense ms, compact ms)
Measure = Callable[[nn.Module, nn.Module, tuple[int, ...], str, int, int], tuple[float, float]]


@dataclass(frozen=True)
class TargetConfig:
    """A target run: the search's settings, where latency is predicted and measured, and the verification."""

    search: TargetSearchConfig = field(default_factory=TargetSearchConfig)
    runtime: str = "onnxruntime"  # onnxruntime or eager
    batch: int = 1
    threads: int = 1
    retries: int = 2  # further tries after a measured shortfall
    accept: float = 0.95  # a measured speed-up of this fraction of the target is accepted
    verify: bool = True  # speed and latency targets: time the compact network
    bn_batches: int = DEFAULT_BN_BATCHES  # batch-norm re-estimation of the result (batches of 64 training images)
    rounds: int = 7  # bench rounds of the verification
    finalists: FinalistConfig = field(default_factory=FinalistConfig)  # count 0: the search's best structure

    def __post_init__(self) -> None:
        if self.runtime not in TARGET_RUNTIMES:
            raise StructpruneError(f"unknown runtime {self.runtime!r}; choose {' or '.join(TARGET_RUNTIMES)}")
        if self.batch < 1 or self.threads < 1 or self.retries < 0 or self.rounds < 1 or self.bn_batches < 0:
            raise StructpruneError("batch, threads and rounds must be >= 1, retries and bn_batches >= 0")
        if not 0.0 < self.accept <= 1.0:
            raise StructpruneError(f"accept {self.accept} must be in (0, 1]")


def bench_speed(dense: nn.Module, small: nn.Module, input_shape: tuple[int, ...], runtime: str, batch: int,
                threads: int, rounds: int = 7) -> tuple[float, float]:
    """Median milliseconds of the dense and the compact network, timed together by structprune.bench."""
    rows = [runtime_candidate(Candidate(name, m, input_shape, {}), runtime, threads)
            for name, m in (("dense", dense), ("compact", small))]
    records = bench(rows, [batch], threads=threads, rounds=rounds, progress=False)
    ms = {r["run"]: r["median_ms"] for r in records}
    return ms["dense"], ms["compact"]




class TargetRun:
    """One target run's pieces: the network, its structure space, cost model, budget and scoring."""

    def __init__(self, src: str | Path, target: Target, cfg: TargetConfig, data_dir: str | Path | None,
                 latency_model: LatencyModelLike | None):
        self.run = load_checked_run(src)
        if load_masks(self.run) is not None:
            raise StructpruneError(f"{src} already carries masks; a target is met from an unpruned run")
        self.model = self.run.model.eval()
        self.target, self.cfg = target, cfg
        self.input_shape = tuple(self.run.arch["input_shape"])
        self.groups = channel_groups_of(self.model)
        importance = map_importance(cfg.search.importance, self.model, self.groups, example_input(self.model))
        self.space = TargetSpace(self.model, self.groups, cfg.search.round_to, cfg.search.min_keep,
                                 forms=cfg.search.forms, importance=importance)
        self._cost: CostModel | None = None  # a latency model to measure: in the staging area (`measure_cost`)
        known = getattr(latency_model, "layers", None)
        missing = [n for n, m in self.model.named_modules() if isinstance(m, nn.Conv2d) and known is not None
                   and n not in known]
        if missing:
            raise StructpruneError(f"the latency model given is another network's: it lacks {', '.join(missing[:3])}")
        if target.kind == "macs" or latency_model is not None:
            self.set_cost(MacCost(self.space, self.input_shape) if latency_model is None
                          else LatencyCost(self.space, latency_model))
        self.data = run_dataset(self.run, data_dir)
        if self.data is None or len(self.data.val) == 0:
            raise StructpruneError(f"{src}: its config.json records no dataset (with validation images) to score on")
        self.applier = MaskApplier(self.model, self.groups)
        n = min(cfg.search.score_images, len(self.data.val))
        recal = self.data.train.x[: cfg.search.bn_batches * 64] if cfg.search.bn_batches > 0 else None
        self.scorer = FullForwardScorer(self.model, self.applier, ScoreSet(self.data.val.x[:n], self.data.val.y[:n]),
                                        tie=cfg.search.tie, recalibrate=recal)
        self.check = check_split(self.data, n, cfg.finalists.check_images) if cfg.finalists.count > 0 else None

    def pick(self, finalists: list[np.ndarray]) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """The finalist that trains best (structprune.search.finalists), and a record of each."""
        assert self.check is not None
        return pick_finalist(self.model, self.groups, self.space, finalists, self.data, self.check, self.cfg.finalists)

    @property
    def has_cost(self) -> bool:
        return self._cost is not None

    @property
    def cost(self) -> CostModel:
        if self._cost is None:
            raise RuntimeError("the latency model is measured in the staging area first (measure_cost)")
        return self._cost

    def set_cost(self, cost: CostModel) -> None:
        """The cost model, the budget on it, and a check that the ladder's floor reaches it."""
        self._cost = cost
        self.budget = self.target.relative_budget(cost.dense if isinstance(cost, LatencyCost) else None)
        check_reachable(self.space, cost, self.budget, self.target, self.cfg.search)

    def measure_cost(self, state_dir: Path) -> None:
        """A latency model measured on this machine (kept in `state_dir`, so a resumed run predicts alike)."""
        cfg = self.cfg
        self.set_cost(measured_latency_cost(self.space, self.input_shape, cfg.runtime, cfg.batch, cfg.threads,
                                            cfg.search.round_to, cache=state_dir / LATENCY_MODEL_FILE))

    @property
    def verifies(self) -> bool:
        return self.cfg.verify and self.target.kind != "macs"

    def required_speedup(self, dense_ms: float) -> float:
        return self.target.value if self.target.kind == "speedup" else dense_ms / self.target.value

    def try_record(self, index: int, budget: float, best: np.ndarray, history: list[dict[str, Any]]) -> dict[str, Any]:
        predicted = self.cost.predict(best)
        factor = "predicted_mac_reduction" if self.target.kind == "macs" else "predicted_speedup"
        return {"try": index + 1, "budget": budget, "choices": best.tolist(), "structure": self.space.describe(best),
                "forms": self.space.describe_forms(best), "predicted_cost": predicted,
                "budget_used": predicted / budget, f"predicted_{self.cost.unit}": predicted * self.cost.dense,
                factor: 1.0 / predicted, "history": history}

    def verify(self, record: dict[str, Any], measure: Measure) -> bool:
        """Time dense vs compact (recorded in `record`); whether the measured speed-up is accepted."""
        mask = self.space.mask(np.array(record["choices"], dtype=np.int16))
        small = compact(self.model, mask, groups=self.groups)
        dense_ms, compact_ms = measure(self.model, small, self.input_shape, self.cfg.runtime, self.cfg.batch,
                                       self.cfg.threads)
        required = self.required_speedup(dense_ms)
        record.update(measured_dense_ms=dense_ms, measured_compact_ms=compact_ms,
                      measured_speedup=dense_ms / compact_ms, required_speedup=required)
        record["accepted"] = record["measured_speedup"] >= self.cfg.accept * required
        return record["accepted"]


def _choose(tries: list[dict[str, Any]]) -> dict[str, Any]:
    """The first accepted try; else the fastest measured; else (nothing measured) the last."""
    accepted = [t for t in tries if t.get("accepted")]
    if accepted:
        return accepted[0]
    measured = [t for t in tries if "measured_speedup" in t]
    return max(measured, key=lambda t: t["measured_speedup"]) if measured else tries[-1]


def _search_tries(job: TargetRun, state: dict[str, Any], save: Callable[[], None], measure: Measure) -> None:
    """Run (or resume) the tries: search, verify, tighten; every finished try is recorded in `state`."""
    cfg = job.cfg
    total = 1 + (cfg.retries if job.verifies else 0)
    while not state["done"]:
        index = len(state["tries"])
        label = f"target search, try {index + 1}/{total}" if total > 1 else "target search"

        def keep(pf: Any) -> None:
            state["pf"] = pf.state_dict()
            save()

        found = search_structure(job.space, job.cost, state["budget"], job.scorer, cfg.search,
                                 seed=cfg.search.seed + 1009 * index, label=label, saved=state["pf"],
                                 on_generation=keep, finalists=cfg.finalists.count)
        best, picked = found.best, None
        if cfg.finalists.count > 0:
            best, picked = job.pick(found.finalists)
        record = job.try_record(index, state["budget"], best, found.filter.history)
        if picked is not None:
            record["finalists"] = picked
        ok = not job.verifies or job.verify(record, measure)
        state["tries"].append(record)
        state["pf"] = None
        state["done"] = ok or len(state["tries"]) >= total
        if job.verifies:
            log.info("%s: predicted speed-up %.2fx, measured %.2fx (dense %.3f ms, compact %.3f ms); needed %.2fx -> %s",
                     label, record["predicted_speedup"], record["measured_speedup"], record["measured_dense_ms"],
                     record["measured_compact_ms"], record["required_speedup"], "accepted" if ok else "short")
        if not state["done"]:
            tighter = state["budget"] * record["measured_speedup"] / record["required_speedup"]
            try:
                check_reachable(job.space, job.cost, tighter, job.target, cfg.search)
            except StructpruneError:
                log.warning("the budget cannot tighten further (%.3f is below the ladder's floor); stopping", tighter)
                state["done"] = True
            else:
                log.info("tightening the budget from %.3f to %.3f of the predicted %s", state["budget"], tighter,
                         job.cost.kind)
                state["budget"] = tighter
        save()


def target_run(src: str | Path, out: Output | str | Path, target: Target, cfg: TargetConfig | None = None, *,
               data_dir: str | Path | None = None, latency_model: LatencyModelLike | None = None,
               measure: Measure | None = None, extra_config: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """Masks meeting `target` for the run in `src`, saved as a pruned run folder `out` (see the module doc).
    `latency_model`: predicts speed and latency (default: measured here); `measure`: times dense vs compact
    (default: structprune.bench)."""
    cfg = cfg or TargetConfig()
    output = as_output(out, "prune", inputs=(src,))
    job = TargetRun(src, target, cfg, data_dir, latency_model)
    measure = measure or (lambda d, c, s, r, b, t: bench_speed(d, c, s, r, b, t, cfg.rounds))
    identity = {"target": asdict(target), "config": asdict(cfg), "source_files": fingerprint_files(src),
                "data": job.data.fingerprint()}
    with output.staged(json_ready(identity)):
        if not job.has_cost:
            job.measure_cost(output.checkpoints / STATE_DIR)
        path = output.checkpoints / STATE_DIR / TARGET_STATE_FILE
        fresh = {"budget": job.budget, "tries": [], "pf": None, "done": False}
        state = read_json(path) if path.exists() else fresh
        if path.exists():
            log.info("resuming the target search at try %d", len(state["tries"]) + 1)

        def save() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, state)

        _search_tries(job, state, save, measure)
        chosen = _choose(state["tries"])
        return _save(job, output, src, chosen, state, extra_config)


def json_ready(value: Any) -> Any:
    """Enums as their values (asdict keeps them)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    return getattr(value, "value", value)


def _save(job: TargetRun, output: Output, src: str | Path, chosen: dict[str, Any], state: dict[str, Any],
          extra_config: dict[str, Any] | None) -> tuple[Path, dict[str, Any]]:
    model, cfg = job.model, job.cfg
    mask = job.space.mask(np.array(chosen["choices"], dtype=np.int16))
    mask.validate(model)
    job.applier.apply_(mask)
    reestimated = reestimate_batch_norms(model, job.data, cfg.bn_batches)
    metrics = {**size_metrics(model), **mask_summary(model, mask, job.groups), **evaluation_metrics(model, job.data)}
    metrics["source_metrics"] = {k: job.run.metrics[k] for k in ("val_mcr", "test_mcr", "params", "macs")
                                 if k in job.run.metrics}
    if reestimated:
        metrics["bn_reestimated_images"] = reestimated
    summary = {k: chosen[k] for k in chosen if k not in ("history", "choices", "structure", "forms", "finalists")}
    metrics["target"] = {"kind": job.target.kind, "value": job.target.value, "tries": len(state["tries"]),
                         "mac_reduction": metrics["macs"] / max(1, metrics["compact_macs"]), **summary}
    record = {"format": TARGET_FORMAT, "target": asdict(job.target), "cost_model": job.cost.kind,
              f"dense_{job.cost.unit}": job.cost.dense,
              "budget": state["tries"][0]["budget"], "chosen_try": chosen["try"], "structure": chosen["structure"],
              "forms": chosen.get("forms", {}),
              "ladders": job.space.ladders, "tries": state["tries"]}
    config = {**job.run.config, **(extra_config or {}), "source_run": str(Path(src)),
              "prune": {"target": asdict(job.target), **json_ready(asdict(cfg))}}
    extra = {MASKS_FILE: mask.to_json(), TARGET_FILE: record}
    latency = getattr(job.cost, "model", None)
    if hasattr(latency, "to_json"):  # a measured latency model: what the predictions came from
        extra[LATENCY_MODEL_FILE] = latency.to_json()
    return save_run(output, model, job.run.arch, metrics, config, extra_json=extra), metrics
