"""Pruning a network by mask search: step by step, up a ladder of ratios, within a tolerance, resumable.

The driver knows no scale: it runs a plan of (step kind, unit) pairs, where the kinds are the registered
strategies of structprune.search.steps (channel groups, kernels, kernel blocks, intra patterns, the global
channel search). Order: for each granularity in the order given (e.g. channel, then intra), each unit from
the input side to the output side (channel scale: the coupled channel groups, by root conv; kernel and intra
scale: the convolutions). Per step the rungs of its ladder are tried in increasing pruning ratio.

One rung:
  1. a candidate is chosen by `method` on the *score* subset of the validation split:
       pf / epf   particle filter / evolutionary PF (seeded with the L1 candidate unless `seed_with_l1=False`)
       l1         the rung's L1-magnitude candidate (selection's L1 scores)
       random     best of N random candidates, N = particles × generations (the PF's scoring budget)
       tp-l2      Torch-Pruning's GroupMagnitudeImportance (L2 over the whole coupled group); channel scale only
     Candidates are scored with cached activations where the network is a chain (scoring.py), else with the
     cached activations of its torch.fx graph that the candidate cannot change (scoring_fx.py), else by one
     full forward pass per candidate (scoring_full.py), which also scores a rung whose part to rerun on the
     traced graph holds most of the conv MACs (scoring_fx.full_forward_reason); search.json records per step
     which (`scoring`) and why (`scoring_reason`);
  2. its MCR is checked on the *check* subset, disjoint from the score subset (the best of many candidates
     looks better than it is on the images that chose it);
  3. with `--max`: accepted when check MCR − unpruned check MCR ≤ tolerance; if not, the model is retrained
     `step_epochs` with the candidate held and checked again; a rung that still fails is undone and ends
     the step. With a fixed `ratio` there is one rung per step, accepted, retrained `step_epochs`.
     The check is paired (paired.py): the unpruned network's errors on the check images are kept, and each
     check records the difference, its paired standard error and the images that flipped each way (`paired`).
     A tolerance the check set cannot resolve is warned about once (how many check images it would need).
After the last step the network is retrained `final_epochs` with every mask held.

`bn_batches` re-estimates the batch-norm statistics for every candidate on that many training batches, and
those of the whole network for the chosen candidate before its check (kept if the rung is accepted, restored
if it is undone). Resume: see state.py; the finished run replaces the work folder in one rename.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from structprune.data import Dataset, Split
from structprune.errors import StructpruneError
from structprune.jsonio import read_json, write_json_atomic
from structprune.layout import accepts_channels_last, as_is, fast_layout
from structprune.metrics import size_metrics
from structprune.output import Output, fingerprint_files
from structprune.retrain import retrain_masked
from structprune.runfiles import LATENCY_MODEL_FILE, SEARCH_FILE, STATE_DIR
from structprune.runfolder import Run, as_output, save_run
from structprune.search.backends import make_backend
from structprune.search.config import DEFAULT_LADDER, SearchConfig
from structprune.search.feasible import feasible_only, may_empty_a_layer
from structprune.search.latency import ConvLatency, measure_conv_latency
from structprune.search.network import SearchNet, conv_macs, conv_names
from structprune.search.paired import PairedCheck, paired_check, per_image_wrong, resolution_warning, wrong_at
from structprune.search.particle_filter import ParticleFilter, PFConfig
from structprune.search.progress import Progress
from structprune.search.scoring import ScoreSet, as_chain, reestimate_norms
from structprune.search.state import DriverState, StateFolder
from structprune.search.steps import Rung, make_steps
from structprune.search.steps.kernel import kernel_block_rung
from structprune.sparsity.channel_groups import layers_without_kernels
from structprune.sparsity.dead_units import dead_unit_summary, log_dead_units, never_active_on
from structprune.sparsity.masking import MaskApplier
from structprune.sparsity.masks import MASKS_FILE, NetworkMask
from structprune.sparsity.method import Method
from structprune.train import TrainConfig, evaluate

log = logging.getLogger(__name__)


class Search:
    """Runs one SearchConfig on a loaded run, writing progress into `out`."""

    def __init__(self, run: Run, data: Dataset, cfg: SearchConfig, out: Output | str | Path):
        self.run, self.model, self.data, self.cfg = run, run.model, data, cfg
        self.output = as_output(out, "prune", inputs=(run.path,))
        self.out = self.output.path
        self.state_dir = self.output.checkpoints / STATE_DIR
        if len(data.val) == 0:
            raise StructpruneError("the validation split is empty: nothing to score candidates on")
        n_score = min(cfg.score_images, len(data.val) // 2) if len(data.val) > 1 else 1
        n_check = min(cfg.check_images, len(data.val) - n_score)
        if n_check < 1:
            raise StructpruneError(f"the validation split has {len(data.val)} image(s): need disjoint score and check subsets")
        self.channels_last = accepts_channels_last(self.model, sample=data.val.x[:2])  # oneDNN's fast layout
        self.layout = fast_layout if self.channels_last else as_is
        self.score_set = ScoreSet(self.layout(data.val.x[:n_score]), data.val.y[:n_score])
        self.check_split = Split(data.val.x[n_score:n_score + n_check], data.val.y[n_score:n_score + n_check])
        convs = conv_names(self.model)
        if cfg.layers is not None:
            unknown = [name for name in cfg.layers if name not in convs]
            if unknown:
                raise StructpruneError(f"no convolution named {unknown[0]!r}; the network has {', '.join(convs)}")
            convs = [name for name in convs if name in cfg.layers]
        self.convs = convs
        self.applier = MaskApplier(self.model)
        self.net = SearchNet(self.model, self.applier)
        self.plan = [(step, unit) for step in make_steps(self.net, cfg) for unit in step.units(convs)]
        self.input_shape = tuple(run.arch["input_shape"])
        self.state = DriverState()
        self.folder = StateFolder(self.state_dir, {"config": asdict(cfg), "source": str(run.path)})
        self.identity = {**self.folder.fingerprint, "data": data.fingerprint(), "source_files": fingerprint_files(run.path)}
        self.progress = Progress()

    # -- persistence
    def _save_driver(self) -> None:
        self.folder.save(self.model, self.state)

    def _save_pf(self, pf: ParticleFilter) -> None:
        self.folder.save_pf(self.state, pf.state_dict())

    def _try_resume(self) -> bool:
        state = self.folder.load(self.model)
        if state is None:
            return False
        self.state = state
        log.info("resuming %s at step %d, rung %d", self.out, self.state.step, self.state.rung)
        return True

    def _write_search_json(self) -> None:
        """Progress a user can follow while the search runs, in the staging folder (the run folder gets it at the end)."""
        write_json_atomic(self.output.checkpoints / SEARCH_FILE, self.search_record())

    def search_record(self) -> dict[str, Any]:
        return {"format": "structprune-search/1", "config": asdict(self.cfg),
                "order": [[step.granularity.value, unit] for step, unit in self.plan],
                "base_check_mcr": self.state.base_check_mcr, "check_images": len(self.check_split),
                "steps": self.state.steps, "history": self.state.history}

    # -- pieces
    @property
    def mask(self) -> NetworkMask:
        return NetworkMask.from_json(self.state.mask)

    def kept_fractions(self, mask: NetworkMask) -> dict[str, float]:
        return {name: round(self.net.kept_weight_fraction(mask, name), 5) for name in conv_names(self.model)}

    def check(self, mask: NetworkMask) -> tuple[float, PairedCheck | None]:
        """The check MCR under `mask`, and its paired comparison with the unpruned network on the same images
        (None for a search resumed from a state saved before the unpruned errors were kept)."""
        with self.applier.applied(mask):
            wrong = per_image_wrong(self.model, self.check_split)
        base = self.state.base_check_wrong
        return int(wrong.sum()) / len(wrong), None if base is None else paired_check(wrong_at(base, len(wrong)), wrong)

    def warn_resolution(self) -> None:
        """One warning when the tolerance is finer than the check set resolves (a fixed ratio decides nothing)."""
        if self.cfg.ratio is not None or self.state.base_check_mcr is None:
            return
        line = resolution_warning(self.cfg.tolerance, self.state.base_check_mcr, len(self.check_split))
        if line is not None:
            log.warning(line)

    def recalibrate_norms(self, mask: NetworkMask) -> dict[str, torch.Tensor] | None:
        """With bn_batches > 0: re-estimate every batch norm's statistics under `mask` on that many training
        batches (no gradient, cumulative average), as the candidates were scored. Returns the statistics it
        replaced (restore them if the candidate is undone), or None when there is nothing to do."""
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if self.cfg.bn_batches < 1 or not norms:
            return None
        saved = {k: v.detach().clone() for k, v in self.model.state_dict().items() if "running_" in k
                 or "num_batches_tracked" in k}
        images = self.layout(self.data.train.x[: self.cfg.bn_batches * 64])
        with self.applier.applied(mask):
            reestimate_norms(norms, (lambda start=start: self.model(images[start:start + 64])
                                     for start in range(0, len(images), 64)))
        return saved

    def retrain(self, mask: NetworkMask, epochs: int, seed: int, images: int | None) -> None:
        if epochs < 1:
            return
        data = replace(self.data, train=self.data.train.sample(images, seed))
        cfg = TrainConfig(epochs=epochs, lr=self.cfg.lr, seed=seed)
        retrain_masked(self.model, mask, data, cfg, groups=self.applier.groups, channels_last=self.channels_last)
        self.model.eval()

    def latency_table(self) -> ConvLatency:
        if self.cfg.latency_table is not None:
            return ConvLatency.from_json(read_json(self.cfg.latency_table))
        path = self.state_dir / LATENCY_MODEL_FILE
        if not path.exists():
            table = measure_conv_latency(self.model, self.input_shape)
            self.state_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, table.to_json())
        return ConvLatency.from_json(read_json(path))

    def score_function(self, rung: Rung):
        """The rung's objective over particles, and how it scores (Rung.scorer: the chain's cached activations,
        the traced graph's, or a full forward pass per candidate)."""
        recal = self.layout(self.data.train.x[: self.cfg.bn_batches * 64]) if self.cfg.bn_batches > 0 else None
        scoring = rung.scorer(self.score_set, self.cfg.tie, recal)
        backend = make_backend(self.cfg.backend, scoring.scorer, scoring.decode, self.cfg.workers)
        return rung.objective(backend, self.latency_table, self.cfg.latency_weight), (scoring.how, scoring.why)

    def choose(self, rung: Rung, mask: NetworkMask, seed: int) -> tuple[np.ndarray, float, tuple[str, str]]:
        """The method's candidate for one rung, its score on the score subset, and how it was scored and why."""
        self.applier.apply_(mask)  # pruned weights are zero in the model the scorer sees
        score_fn, scoring = self.score_function(rung)
        score_fn = feasible_only(score_fn, rung, mask, self.model, self.net.groups)
        try:
            if self.cfg.method in (Method.L1, Method.TP_L2):
                best = rung.l1_particle() if self.cfg.method is Method.L1 else rung.tp_particle()
                return best, float(score_fn(best[None])[0]), scoring
            if self.cfg.method is Method.RANDOM_BEST:
                rng = np.random.default_rng(seed)
                candidates = rung.space.sample(rng, self.cfg.budget)
                scores = np.concatenate([score_fn(chunk) for chunk in np.array_split(candidates, self.cfg.generations)])
                return candidates[int(np.argmin(scores))], float(scores.min()), scoring
            return (*self._particle_filter(rung, mask, seed, score_fn), scoring)
        finally:
            close = getattr(score_fn, "close", None)
            if close is not None:
                close()

    def _particle_filter(self, rung: Rung, mask: NetworkMask, seed: int, score_fn) -> tuple[np.ndarray, float]:
        pf_cfg = PFConfig(particles=self.cfg.particles, generations=self.cfg.generations,
                          temperature=self.cfg.temperature, evolutionary=self.cfg.method is Method.EPF, seed=seed)
        saved = self.folder.load_pf(self.state)
        if saved is not None:
            pf = ParticleFilter.from_state(saved)
        else:
            init = rung.l1_particle()[None] if self.cfg.seed_with_l1 else None
            pf = ParticleFilter(rung.space, pf_cfg, init=init)
        label = f"{rung.layer} {rung.granularity.value} {rung.ratio:.3f}"
        mcr_of = getattr(score_fn, "mcr_of", None)
        mcr_of = {} if mcr_of is None else mcr_of
        self.progress.start_rung()

        def after(current: ParticleFilter) -> None:
            rec = current.history[-1]
            kept = self.kept_fractions(rung.to_mask(current.best, mask))
            self.state.history.append({"step": self.state.step, "layer": rung.layer, "granularity": rung.granularity.value,
                                       "ratio": rung.ratio, **rec, "kept_fraction": kept})
            self._save_pf(current)
            self._write_search_json()
            self.progress.generation(label, current.generation, pf_cfg.generations,
                                     mcr_of.get(current.best.tobytes()), current.best_score, self.rungs_left())

        pf.run(score_fn, on_generation=after)
        return pf.best, pf.best_score

    def rungs_left(self) -> int:
        """At most this many rungs after the current one (a ladder may stop early)."""
        per_step = 1 if self.cfg.ratio is not None or self.cfg.scope == "global" else len(self.cfg.ladder)
        here = max(0, per_step - self.state.rung - 1)
        return here + per_step * (len(self.plan) - self.state.step - 1)

    def ladder(self) -> list[Rung]:
        """The current step's rungs still to try."""
        step, unit = self.plan[self.state.step]
        ladder = step.rungs(self.mask, unit)
        return ladder if step.nested else ladder[self.state.rung:]  # non-nested rungs: their position is remembered

    # -- the loop
    def run_search(self) -> tuple[NetworkMask, dict[str, Any]]:
        """Search every step (resuming if the output folder holds a matching state), then retrain."""
        resumed = self._try_resume()
        if not resumed:  # with bn_batches, under the same re-estimation as the candidates: its own cost is no pruning's
            norms = self.recalibrate_norms(NetworkMask())
            wrong = per_image_wrong(self.model, self.check_split)
            self.state.base_check_mcr = int(wrong.sum()) / len(wrong)
            self.state.base_check_wrong = np.flatnonzero(wrong).tolist()
            if norms is not None:
                self.model.load_state_dict(norms, strict=False)
            self._save_driver()
        self.warn_resolution()
        while self.state.step < len(self.plan):
            ladder = self.ladder()
            if not ladder:
                self._next_step()
                continue
            self.run_rung(ladder[0])
        if not self.state.final_done:
            mask = self.mask
            self.retrain(mask, self.cfg.final_epochs, self.cfg.seed * 7919 + 1, self.cfg.final_images)
            self.applier.apply_(mask)
            self.state.final_done = True
            self._save_driver()
        return self.mask, self.search_record()

    def run_rung(self, rung: Rung) -> None:
        """Choose, check, maybe retrain, and accept or undo one rung."""
        base = self.state.base_check_mcr
        mask = self.mask
        seed = self.cfg.seed * 100003 + self.state.step * 101 + len(self.state.steps)
        particle, score, (scoring, why) = self.choose(rung, mask, seed)
        trial = rung.to_mask(particle, mask)
        norms_before = self.recalibrate_norms(trial)
        record = {"step": self.state.step, "layer": rung.layer, "granularity": rung.granularity.value,
                  "ratio": rung.ratio, "score": score, "retrained": False, "scoring": scoring, "scoring_reason": why}
        empty = layers_without_kernels(self.model, trial, self.net.groups) if may_empty_a_layer(rung, mask) else []
        if empty:  # the method's choice (pf/epf only choose one when every candidate they saw did): undone
            record["leaves_without_kernels"] = empty
            log.warning("%s %s ratio %.3f: the chosen candidate leaves %s without kernels; undone", rung.layer,
                        rung.granularity.value, rung.ratio, ", ".join(empty))
        check, paired = self._check_into(record, trial, "")
        fixed = self.cfg.ratio is not None
        ok = not empty and (fixed or self.accepts(check, base, paired))
        if not ok and not empty and self.cfg.step_epochs > 0:
            backup = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.retrain(trial, self.cfg.step_epochs, seed, self.cfg.step_images)
            check, paired = self._check_into(record, trial, "_after_retrain")
            record["retrained"] = True
            ok = self.accepts(check, base, paired)
            if not ok:
                self.model.load_state_dict(backup)
        elif ok and fixed and self.cfg.step_epochs > 0:
            self.retrain(trial, self.cfg.step_epochs, seed, self.cfg.step_images)
            record["retrained"] = True
            check, paired = self._check_into(record, trial, "_after_retrain")
        record["accepted"] = ok
        record["kept_fraction"] = self.kept_fractions(trial if ok else mask)
        self.state.steps.append(record)
        flips = "" if paired is None else (f", paired difference {paired.diff * 100:+.2f} ± {paired.se * 100:.2f} points"
                                           f" ({paired.to_wrong} images to wrong, {paired.to_right} to right)")
        log.info("%s %s ratio %.3f: score %.4f, check MCR %.4f (base %.4f)%s -> %s", rung.layer,
                 rung.granularity.value, rung.ratio, score, check, base, flips, "kept" if ok else "undone")
        if ok:
            self.applier.apply_(trial)
            self.state.mask = trial.to_json()
            self.state.rung += 1
            if fixed:
                self._next_step()
        else:
            if norms_before is not None:
                self.model.load_state_dict(norms_before, strict=False)
            self._next_step()
        self.folder.drop_pf()
        self._save_driver()
        self._write_search_json()

    def _check_into(self, record: dict[str, Any], trial: NetworkMask, suffix: str) -> tuple[float, PairedCheck | None]:
        """Check `trial`, recording check_mcr{suffix} and paired{suffix} in the step record."""
        check, paired = self.check(trial)
        record[f"check_mcr{suffix}"] = check
        record[f"paired{suffix}"] = None if paired is None else paired.to_json()
        return check, paired

    def accepts(self, check: float, base: float, paired: PairedCheck | None) -> bool:
        """Within the tolerance on the paired difference (the same number as check - base: both are means over
        the same images), or on the MCRs where a resumed old state has no paired errors."""
        return self.rise_within_tolerance(check - base if paired is None else paired.diff)

    def within_tolerance(self, check: float, base: float) -> bool:
        """MCRs are counts over the check images: a rise of exactly the tolerance is within it (no float rounding
        may turn 0.021 - 0.019 into more than 0.002)."""
        return self.rise_within_tolerance(check - base)

    def rise_within_tolerance(self, rise: float) -> bool:
        return rise <= self.cfg.tolerance + 1e-9

    def _next_step(self) -> None:
        self.state.step += 1
        self.state.rung = 0


def search_run(run: Run, data: Dataset, cfg: SearchConfig, out: Output | str | Path,
               extra_config: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """Search, retrain, and save the pruned run (masks.json, search.json, metrics with conv MACs) in `out`."""
    dead = never_active_on(run.model, data.val.x)  # before the search changes the weights
    search = Search(run, data, cfg, out)
    started = time.perf_counter()
    with search.output.staged(search.identity):
        mask, record = search.run_search()
    seconds = time.perf_counter() - started  # this invocation only (a resumed search counts its last part)
    model = search.model
    masked, dense = conv_macs(model, mask, search.input_shape, search.net)
    val, test = evaluate(model, data.val), evaluate(model, data.test)
    metrics = {"val_mcr": val.mcr, "test_mcr": test.mcr, "val_loss": val.loss, "test_loss": test.loss,
               **size_metrics(model), "test_images": len(data.test), "conv_macs": masked, "conv_macs_dense": dense,
               "conv_macs_removed": 1 - masked / dense if dense else 0.0,
               "kept_fraction": search.kept_fractions(mask), "search_seconds": round(seconds, 1),
               "source_metrics": {k: run.metrics[k] for k in ("val_mcr", "test_mcr", "macs") if k in run.metrics}}
    metrics["dead_units"] = dead_unit_summary(run.model, dead, mask)
    log_dead_units(metrics["dead_units"])
    extra = {MASKS_FILE: mask.to_json(), SEARCH_FILE: record}
    if cfg.latency_weight > 0:
        table = search.latency_table()
        extra[LATENCY_MODEL_FILE] = table.to_json()
        first_in = model.get_submodule(search.convs[0]).in_channels
        outs = [int(search.net.alive_outputs(mask, n).sum()) for n in search.convs]
        dense_outs = [model.get_submodule(n).out_channels for n in search.convs]
        metrics["predicted_conv_ms"] = table.network_ms(dict(zip(search.convs, zip([first_in, *outs[:-1]], outs, strict=True),
                                                                 strict=True)))
        metrics["predicted_conv_ms_dense"] = table.network_ms(dict(zip(
            search.convs, zip([first_in, *dense_outs[:-1]], dense_outs, strict=True), strict=True)))
    config = {**run.config, **(extra_config or {}), "search": asdict(cfg), "source_run": str(run.path)}
    if not math.isfinite(metrics["test_mcr"]):
        raise StructpruneError("the pruned network produced non-finite outputs")
    return save_run(search.output, model, run.arch, metrics, config, extra_json=extra), metrics


__all__ = ["DEFAULT_LADDER", "Search", "SearchConfig", "as_chain", "conv_macs", "kernel_block_rung",
           "search_run"]
