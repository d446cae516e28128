"""`structprune reproduce mnist|cifar10 [--quick]`: the whole method as a list of resumable stages.

    train -> sensitivity -> ladder (L1 / random, each scale, one shot) -> search (particle filter, channel
    then kernel then intra) -> retrain -> quantize -> compact -> export (ONNX) -> bench -> report

Each stage is one call of structprune.stages writing one folder under OUT (or one file), and reproduce.json
records a digest of each stage's inputs (the recipe, the data, the weights of the runs it reads). A stage whose
output is complete and whose inputs are unchanged is skipped, so an interrupted reproduction resumes at the stage
it stopped in (training and the search also resume inside the stage, from their checkpoints); a stage whose
inputs changed (another --from-run, a retrained upstream stage) runs again. Settings: structprune.recipes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from structprune import stages
from structprune.data import Dataset, load_dataset
from structprune.errors import StructpruneError
from structprune.jsonio import read_json, write_json_atomic
from structprune.output import Output, claim_folder
from structprune.recipes import RECIPES, Recipe, recipe_for
from structprune.runcheck import load_checked_run
from structprune.runfiles import BENCH_FILE, CONFIG_FILE, EXPORT_FILE, METRICS_FILE, REPORT_HTML, REPORT_MD, STATUS_FILE
from structprune.runfolder import run_fingerprint
from structprune.sensitivity import run_sensitivity, sweep_complete
from structprune.sparsity.granularity import Granularity
from structprune.sparsity.method import Method
from structprune.sparsity.selection import SelectionConfig

log = logging.getLogger(__name__)
TRAIN, SEARCH, RETRAIN, QUANT, COMPACT, EXPORT = "train", "search", "retrain", "quantize", "compact", "export"


@dataclass
class Context:
    out: Path
    recipe: Recipe
    data_dir: str | None
    progress: bool = True
    trained: Path | None = None  # a dense run adopted as the train stage (--from-run)

    @cached_property
    def data(self) -> Dataset:
        """The dataset, loaded once (validation carved out of the training set with the training seed)."""
        return load_dataset(self.recipe.dataset, self.data_dir, val_size=self.recipe.val_size, seed=self.recipe.train.seed)

    def path(self, name: str) -> Path:
        return self.out / name

    def output(self, name: str, verb: str) -> Output:
        """A stage's folder inside OUT: reproduce owns it, so a stage that runs again replaces it."""
        return claim_folder(self.path(name), verb, overwrite=True)


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Context], Any]
    reads: tuple[str, ...] = ()  # the stage folders whose weights it reads
    complete: Callable[[Context], bool] | None = None  # its output is complete (default: NAME/metrics.json exists)

    def done(self, ctx: Context) -> bool:
        return self.complete(ctx) if self.complete is not None else ctx.path(f"{self.name}/{METRICS_FILE}").is_file()


def _has(name: str) -> Callable[[Context], bool]:
    return lambda ctx: ctx.path(name).is_file()


def stage_digest(ctx: Context, stage: Stage) -> str:
    """A digest of everything the stage's result depends on."""
    inputs: dict[str, Any] = {"stage": stage.name, "recipe": asdict(ctx.recipe), "data_dir": ctx.data_dir,
                              "reads": {name: run_fingerprint(ctx.path(name)) for name in stage.reads}}
    if stage.name == TRAIN:
        inputs["from_run"] = run_fingerprint(ctx.trained) if ctx.trained is not None else None
        inputs["data"] = ctx.data.fingerprint()
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


# ------------------------------------------------------------------------------------------------ stages
def train_stage(ctx: Context) -> None:
    """The recipe's dense run, or a copy of the --from-run one (reproduce.json names it)."""
    cfg, out = ctx.recipe.train_config(ctx.data_dir), ctx.output(TRAIN, "train")
    if ctx.trained is not None:
        stages.adopt_run(ctx.trained, out, cfg)
    else:
        stages.train_run(out, cfg, ctx.data, progress=ctx.progress, extra_config={"stage": TRAIN})


def ladder_stage(name: str, method: Method, scale: Granularity, ratio: float) -> Stage:
    """One-shot masks (no retraining) at one scale, method and ratio: a point of the MCR-against-ratio curves."""

    def run(ctx: Context) -> None:
        stages.select_run(ctx.path(TRAIN), ctx.output(name, "prune"), [scale], [ratio], SelectionConfig(method=method),
                          {"stage": "ladder", "granularity": scale.value, "method": method.value}, data_dir=ctx.data_dir)

    return Stage(name, run, (TRAIN,))


def search_stage(ctx: Context) -> None:
    cfg = ctx.recipe.search_config()
    stages.search_run(load_checked_run(ctx.path(TRAIN)), ctx.data, cfg, ctx.output(SEARCH, "prune"),
                      extra_config={"stage": SEARCH, "granularity": ",".join(cfg.granularities), "method": cfg.method})


def retrain_stage(ctx: Context) -> None:
    stages.retrain_run(ctx.path(SEARCH), ctx.output(RETRAIN, "retrain"), ctx.recipe.retrain_config(),
                       ctx.recipe.retrain_data(ctx.data), progress=ctx.progress, extra_config={"stage": RETRAIN})


def quantize_stage(ctx: Context) -> None:
    stages.quantize_run(ctx.path(RETRAIN), ctx.output(QUANT, "quantize"), ctx.recipe.quantize_config(ctx.data_dir),
                        progress=ctx.progress)


def stages_for(recipe: Recipe) -> list[Stage]:
    ladder = [ladder_stage(f"ladder-{m}-{s}-{round(100 * q):02d}", m, s, q)
              for m in recipe.ladder_methods for s in recipe.scales for q in recipe.ladder_ratios]
    return [
        Stage(TRAIN, train_stage),
        Stage("sensitivity", lambda ctx: run_sensitivity(ctx.path(TRAIN), ctx.recipe.sensitivity_config(), ctx.data_dir),
              (TRAIN,), lambda ctx: sweep_complete(ctx.path(TRAIN))),
        *ladder,
        Stage(SEARCH, search_stage, (TRAIN,)),
        Stage(RETRAIN, retrain_stage, (SEARCH,)),
        Stage(QUANT, lambda ctx: quantize_stage(ctx), (RETRAIN,)),  # looked up when run (tests interrupt it)
        Stage(COMPACT, lambda ctx: stages.compact_run(ctx.path(QUANT), ctx.output(COMPACT, "compact"),
                                                      data_dir=ctx.data_dir, config={"stage": COMPACT}), (QUANT,)),
        Stage(EXPORT, lambda ctx: stages.export_run(ctx.path(COMPACT), ctx.output(EXPORT, "export")), (COMPACT,),
              _has(f"{EXPORT}/{EXPORT_FILE}")),
        Stage("bench", lambda ctx: stages.bench_runs([ctx.path(TRAIN), ctx.path(COMPACT)], ctx.recipe.bench_config(),
                                                     reference_runs=(1,), out_json=ctx.path(BENCH_FILE),
                                                     progress=ctx.progress), (TRAIN, COMPACT), _has(BENCH_FILE)),
        Stage("report", lambda ctx: stages.report_runs([ctx.out], [ctx.path(REPORT_MD), ctx.path(REPORT_HTML)],
                                                       f"structprune reproduce {ctx.recipe.dataset}"),
              (), lambda ctx: False),  # always redrawn from what is there
    ]


# ------------------------------------------------------------------------------------------------ driver
def _read_status(ctx: Context) -> dict[str, Any]:
    return read_json(ctx.path(STATUS_FILE)) if ctx.path(STATUS_FILE).is_file() else {}


def _status(ctx: Context, seconds: dict[str, float], skipped: list[str], digests: dict[str, str]) -> None:
    previous = _read_status(ctx)
    write_json_atomic(ctx.path(STATUS_FILE), {
        "verb": "reproduce", "dataset": ctx.recipe.dataset, "recipe": asdict(ctx.recipe),
        "seconds": {**previous.get("seconds", {}), **{k: round(v, 1) for k, v in seconds.items()}},
        "skipped_this_time": skipped, "inputs": {**previous.get("inputs", {}), **digests},
        **({"train_from": str(ctx.trained)} if ctx.trained is not None else {}),
    })


def reproduce(dataset: str, out: str | Path | Output, quick: bool = False, data_dir: str | None = None,
              progress: bool = True, recipe: Recipe | None = None,
              on_stage: Callable[[str, str], None] | None = None, trained: str | Path | None = None) -> dict[str, float]:
    """Run (or resume) a reproduction into `out` (a new folder, or an earlier reproduction to resume); returns the
    seconds each stage run this time took. `trained`: a dense run folder to start from instead of training.
    `on_stage(name, "skip" | "run")` is told about every stage as it comes."""
    recipe, on_stage = recipe or recipe_for(dataset, quick), on_stage or (lambda name, what: None)
    output = out if isinstance(out, Output) else claim_folder(out, "reproduce", resume=True,
                                                              inputs=() if trained is None else (trained,))
    ctx = Context(out=output.path, recipe=recipe, data_dir=data_dir, progress=progress,
                  trained=Path(trained) if trained is not None else None)
    ctx.data  # noqa: B018  (a missing dataset fails here, before anything is written)
    if ctx.trained is not None:
        stages.check_adoptable(ctx.trained, recipe.train_config(data_dir))
    status = _read_status(ctx)
    if status and status.get("dataset") != recipe.dataset:
        raise StructpruneError(f"{output.path}: holds a reproduction of {status.get('dataset')!r}, not {recipe.dataset!r}")
    if ctx.trained is None and "train_from" in status:
        ctx.trained = Path(status["train_from"])  # resumed without --from-run: the adopted run stays the source
    output.path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(ctx.path(CONFIG_FILE), {"verb": "reproduce", "dataset": recipe.dataset, "quick": quick})
    seconds: dict[str, float] = {}
    skipped: list[str] = []
    digests: dict[str, str] = {}
    for stage in stages_for(recipe):
        if stage.name == TRAIN and ctx.trained is not None and not ctx.trained.is_dir():
            if not stage.done(ctx):
                raise StructpruneError(f"{ctx.trained}: the run this reproduction started from is gone")
            skipped.append(stage.name)  # the adopted run is gone, its copy is not: keep the copy
            continue
        digest = stage_digest(ctx, stage)
        if stage.done(ctx) and status.get("inputs", {}).get(stage.name) == digest:
            skipped.append(stage.name)
            on_stage(stage.name, "skip")
            continue
        on_stage(stage.name, "run")
        log.info("reproduce: stage %s", stage.name)
        started = time.perf_counter()
        stage.run(ctx)
        seconds[stage.name] = time.perf_counter() - started
        digests[stage.name] = digest
        _status(ctx, seconds, skipped, digests)
    _status(ctx, seconds, skipped, digests)
    return seconds


__all__ = ["RECIPES", "Recipe", "recipe_for", "reproduce", "stages_for"]
