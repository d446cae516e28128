"""`structprune reproduce mnist|cifar10 [--quick]`: the whole method as a list of resumable stages.

    train -> sensitivity -> ladder (L1 / random, each scale, one shot) -> search (particle filter, channel
    then kernel then intra) -> retrain -> quantize -> compact -> export (ONNX) -> bench -> report

Each stage writes one folder under OUT (a run folder, saved atomically) or one file, and reproduce.json
records a digest of each stage's inputs (the recipe, the data, the weights of the runs it reads). A stage
whose output is complete and whose inputs are unchanged is skipped, so an interrupted reproduction resumes at
the stage it stopped in (training and the search also resume inside the stage, from their checkpoints); a
stage whose inputs changed (another --from-run, a retrained upstream stage) runs again. Stages call the library functions of
each step.

The settings of each recipe are the ones behind docs/results.md; `--quick` shrinks epochs and search
budgets so that `reproduce mnist --quick` finishes within minutes on two cores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from structprune.errors import StructpruneError
from structprune.jsonio import read_json, write_json_atomic
from structprune.output import Output, claim_folder, fingerprint_files
from structprune.runcheck import load_checked_run
from structprune.runfolder import METRICS_FILE, Run, as_output, load_run, save_run
from structprune.train import TrainConfig

log = logging.getLogger(__name__)

STATUS_FILE = "reproduce.json"
BENCH_FILE = "bench.json"


@dataclass(frozen=True)
class Recipe:
    """Every setting of a reproduction."""

    dataset: str
    model: str
    train: TrainConfig
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {"bn": True}
    val_size: int = 5000
    sensitivity_images: int = 2000
    ladder_ratios: tuple[float, ...] = (0.25, 0.5, 0.75)
    ladder_methods: tuple[str, ...] = ("l1", "random")
    scales: tuple[str, ...] = ("channel", "kernel", "intra")
    search: dict[str, Any] = field(default_factory=dict)  # structprune.search.driver.SearchConfig fields
    retrain_epochs: int = 3
    retrain_lr: float = 0.01
    retrain_images: int | None = None  # training images used by the final retraining (None: all)
    bits: int = 6
    quant_epochs: int = 1
    bench_batches: tuple[int, ...] = (1, 64)
    bench_threads: int = 2
    bench_rounds: int = 7


# kernel masks in two output-map groups sharing their kept inputs and one intra pattern per layer: the forms that
# compact into few fast convolutions (docs/benchmarks.md); free per-kernel masks compact into many slow ones
_MNIST_SEARCH = {"method": "pf", "tolerance": 0.002, "particles": 16, "generations": 6, "score_images": 2000,
                 "check_images": 2000, "step_epochs": 1, "final_epochs": 1, "kernel_groups": 2, "intra_shared": True}
# batch-norm statistics re-estimated for every candidate and for the accepted one: without it, one-shot pruning
# of a batch-norm network looks far worse than it is and the search accepts nothing (session 2's first run)
_CIFAR_SEARCH = {**_MNIST_SEARCH, "tolerance": 0.005, "bn_batches": 4}

RECIPES: dict[tuple[str, bool], Recipe] = {
    ("mnist", False): Recipe("mnist", "paper-mnist", TrainConfig(epochs=10, lr=0.02, batch_size=64),
                             search=_MNIST_SEARCH, retrain_epochs=3),
    ("mnist", True): Recipe(
        "mnist", "paper-mnist", TrainConfig(epochs=2, lr=0.02, batch_size=64), sensitivity_images=1000,
        search={**_MNIST_SEARCH, "particles": 8, "generations": 3, "score_images": 1000, "check_images": 1000,
                "ladder": (0.5, 0.75, 0.875), "step_epochs": 1, "step_images": 10000, "final_epochs": 0},
        retrain_epochs=1, retrain_images=20000, quant_epochs=0, bench_rounds=5),
    # docs/results.md's dense CIFAR-10 run: lr 0.05 without warm-up collapsed there, 0.02 with a short warm-up did not
    ("cifar10", False): Recipe(
        "cifar10", "paper-cifar10", TrainConfig(epochs=10, lr=0.02, batch_size=64, warmup_epochs=0.5),
        model_kwargs={"bn": True}, search=_CIFAR_SEARCH, retrain_epochs=5, bits=5),
    ("cifar10", True): Recipe(
        "cifar10", "paper-cifar10", TrainConfig(epochs=3, lr=0.02, batch_size=64, warmup_epochs=0.5), {"bn": True},
        sensitivity_images=1000,
        ladder_ratios=(0.25, 0.5), ladder_methods=("l1",),
        search={**_CIFAR_SEARCH, "tolerance": 0.02, "particles": 6, "generations": 2, "score_images": 500,
                "check_images": 1000, "ladder": (0.25, 0.5), "step_epochs": 0, "final_epochs": 0},
        retrain_epochs=1, bits=5, quant_epochs=0, bench_rounds=3),
    # the embedded 8×8 digits: a pipeline check in seconds, not a result
    ("digits", True): Recipe(
        "digits", "tiny-paper", TrainConfig(epochs=3, lr=0.05, batch_size=32), val_size=200, sensitivity_images=200,
        ladder_ratios=(0.25, 0.5, 0.75), ladder_methods=("l1", "random"),
        search={"method": "pf", "ratio": 0.5, "particles": 4, "generations": 2, "score_images": 100,
                "check_images": 100, "ladder": (0.5,), "step_epochs": 0, "final_epochs": 0},
        retrain_epochs=1, bits=8, quant_epochs=0, bench_batches=(1, 16), bench_rounds=2),
}
RECIPES[("digits", False)] = RECIPES[("digits", True)]


def recipe_for(dataset: str, quick: bool) -> Recipe:
    try:
        return RECIPES[(dataset, quick)]
    except KeyError:
        names = sorted({d for d, _ in RECIPES})
        raise StructpruneError(f"no reproduction recipe for {dataset!r}; choose from {', '.join(names)}") from None


@dataclass
class Context:
    out: Path
    recipe: Recipe
    data_dir: str | None
    progress: bool = True
    trained: Path | None = None  # a dense run adopted as the train stage (--from-run)
    _data: Any = None

    @property
    def data(self):
        """The dataset, loaded once (validation carved out of the training set with the training seed)."""
        if self._data is None:
            from structprune.data import load_dataset

            self._data = load_dataset(self.recipe.dataset, self.data_dir, val_size=self.recipe.val_size,
                                      seed=self.recipe.train.seed)
        return self._data

    def path(self, name: str) -> Path:
        return self.out / name


@dataclass(frozen=True)
class Stage:
    name: str
    done: Callable[[Context], bool]  # its output is complete
    run: Callable[[Context], None]
    reads: tuple[str, ...] = ()  # the stage folders whose weights it reads


def _is_run(path: Path) -> bool:
    return (path / METRICS_FILE).is_file()


def _stage_output(ctx: Context, name: str, verb: str) -> Output:
    """A stage's folder inside OUT: reproduce owns it, so a stage that runs again replaces it."""
    return claim_folder(ctx.path(name), verb, overwrite=True)


RUN_CONTENT = ("model.safetensors", "arch.json", "masks.json", "model.packed.safetensors", "model.onnx")


def run_fingerprint(path: Path) -> str:
    """What a later stage depends on: the weights and structure of a run (not its reports or metrics)."""
    return fingerprint_files(*(path / name for name in RUN_CONTENT if (path / name).is_file()))


def stage_digest(ctx: Context, stage: Stage) -> str:
    """A digest of everything the stage's result depends on."""
    inputs: dict[str, Any] = {"stage": stage.name, "recipe": asdict(ctx.recipe), "data_dir": ctx.data_dir,
                              "reads": {name: run_fingerprint(ctx.path(name)) for name in stage.reads}}
    if stage.name == TRAIN:
        inputs["from_run"] = run_fingerprint(ctx.trained) if ctx.trained is not None else None
        inputs["data"] = ctx.data.fingerprint()
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


# ------------------------------------------------------------------------------------------------ stages
TRAIN, SEARCH, RETRAIN, QUANT, COMPACT, EXPORT = "train", "search", "retrain", "quantize", "compact", "export"


def train_stage(ctx: Context) -> None:
    from structprune import __version__
    from structprune.metrics import size_metrics
    from structprune.models import create
    from structprune.pruning import evaluation_metrics
    from structprune.train import train

    r, data = ctx.recipe, ctx.data
    torch.manual_seed(r.train.seed)
    model = create(r.model, num_classes=data.num_classes, in_channels=data.in_channels, input_size=data.input_size,
                   **r.model_kwargs)
    output = _stage_output(ctx, TRAIN, "train")
    with output.staged({"recipe": asdict(r), "data": data.fingerprint()}):
        history = train(model, data, r.train, checkpoint_dir=output.checkpoints, progress=ctx.progress)
    metrics = {**evaluation_metrics(model, data), **size_metrics(model), "history": history}
    config = {"verb": "train", "stage": TRAIN, "model": r.model, "model_kwargs": r.model_kwargs, "dataset": r.dataset,
              "data_dir": ctx.data_dir, "val_size": len(data.val), "train": asdict(r.train), "structprune": __version__,
              "torch": torch.__version__}
    save_run(output, model, None, metrics, config)


def sensitivity_done(ctx: Context) -> bool:
    path = ctx.path(TRAIN) / "sensitivity.json"
    return path.is_file() and bool(read_json(path).get("complete"))


def sensitivity_stage(ctx: Context) -> None:
    from structprune.sensitivity import SensitivityConfig, sweep

    run = load_run(ctx.path(TRAIN))
    cfg = SensitivityConfig(images=ctx.recipe.sensitivity_images)
    sweep(run.model, ctx.data, cfg, out_file=run.path / "sensitivity.json")


def ladder_name(method: str, scale: str, ratio: float) -> str:
    return f"ladder-{method}-{scale}-{round(100 * ratio):02d}"


def ladder_stages(recipe: Recipe) -> list[Stage]:
    """One-shot masks (no retraining) at each scale, method and ratio: the MCR-against-ratio curves."""
    stages = []
    for method in recipe.ladder_methods:
        for scale in recipe.scales:
            for ratio in recipe.ladder_ratios:
                name = ladder_name(method, scale, ratio)
                stages.append(Stage(name, lambda ctx, n=name: _is_run(ctx.path(n)),
                                    lambda ctx, n=name, m=method, s=scale, q=ratio: _ladder(ctx, n, m, s, q), (TRAIN,)))
    return stages


def _ladder(ctx: Context, name: str, method: str, scale: str, ratio: float) -> None:
    from structprune.pruning import prune_run, select_masks

    def choose(model, groups, data, base=None):
        return select_masks(model, [scale], ratio, method=method, scope="layer", seed=0, groups=groups, base=base)

    config = {"stage": "ladder", "granularity": scale, "method": method,
              "prune": {"granularity": [scale], "method": method, "ratio": [ratio], "scope": "layer", "seed": 0}}
    prune_run(ctx.path(TRAIN), _stage_output(ctx, name, "prune"), choose, config, data_dir=ctx.data_dir)


def search_stage(ctx: Context) -> None:
    from structprune.search.driver import SearchConfig, search_run

    cfg = SearchConfig(granularities=tuple(ctx.recipe.scales), **ctx.recipe.search)
    run = load_run(ctx.path(TRAIN))
    search_run(run, ctx.data, cfg, _stage_output(ctx, SEARCH, "prune"),
               extra_config={"stage": SEARCH, "granularity": ",".join(cfg.granularities), "method": cfg.method})


def retrain_run(src: Path, out: Output | Path, cfg: TrainConfig, data: Any, progress: bool = False,
                extra_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Retrain the masked run in `src` with its masks held (structprune.retrain) and save it to `out`."""
    from structprune.metrics import size_metrics
    from structprune.pruning import channel_groups_of, evaluation_metrics, load_masks, mask_summary
    from structprune.retrain import retrain_masked

    output = as_output(out, "retrain", inputs=(src,))
    run = load_run(src)
    mask = load_masks(run)
    if mask is None:
        raise StructpruneError(f"{run.path}: no masks.json to hold during retraining")
    groups = channel_groups_of(run.model)
    with output.staged({"source": run_fingerprint(Path(src)), "data": data.fingerprint(), "retrain": asdict(cfg)}):
        history = retrain_masked(run.model, mask, data, cfg, groups=groups, checkpoint_dir=output.checkpoints,
                                 progress=progress)
    metrics = {**size_metrics(run.model), **mask_summary(run.model, mask, groups), **evaluation_metrics(run.model, data),
               "before_retrain": {k: run.metrics[k] for k in ("val_mcr", "test_mcr") if k in run.metrics},
               "history": history}
    config = {**run.config, "stage": RETRAIN, "source_run": str(run.path), **(extra_config or {}),
              "retrain": {**asdict(cfg), "masked": True, "train_images": len(data.train)}}
    save_run(output, run.model, run.arch, metrics, config, extra_json={"masks.json": mask.to_json()})
    return metrics


def retrain_stage(ctx: Context) -> None:
    r = ctx.recipe
    cfg = TrainConfig(epochs=r.retrain_epochs, lr=r.retrain_lr, batch_size=r.train.batch_size, seed=r.train.seed)
    data = ctx.data if r.retrain_images is None else replace(ctx.data, train=ctx.data.train.subset(r.retrain_images))
    retrain_run(ctx.path(SEARCH), _stage_output(ctx, RETRAIN, "retrain"), cfg, data, progress=ctx.progress)


def quantize_stage(ctx: Context) -> None:
    from structprune.quant.run import QuantizeConfig, describe_bits, quantize_run

    r = ctx.recipe
    cfg = QuantizeConfig(bits=r.bits, epochs=r.quant_epochs, data_dir=ctx.data_dir)
    path, m = quantize_run(ctx.path(RETRAIN), _stage_output(ctx, QUANT, "quantize"), cfg, progress=ctx.progress)
    log.info("%s: %s, test MCR %.4f -> %.4f, weight_bytes %d", path, describe_bits(cfg.bits), m["float_test_mcr"],
             m["test_mcr"], m["weight_bytes"])


def compact_stage(ctx: Context) -> None:
    from structprune.pruning import compact_run

    compact_run(ctx.path(QUANT), _stage_output(ctx, COMPACT, "compact"), data_dir=ctx.data_dir, config={"stage": COMPACT})


def export_done(ctx: Context) -> bool:
    return (ctx.path(EXPORT) / "export.json").is_file()


def export_stage(ctx: Context) -> None:
    export_folder(load_run(ctx.path(COMPACT)), _stage_output(ctx, EXPORT, "export"))


def export_folder(run: Any, output: Output) -> dict[str, Any]:
    """An export folder: model.onnx (checked with ONNX Runtime), export.json, config.json."""
    from structprune.export_onnx import export_onnx

    with output.publish() as tmp:
        check = export_onnx(run.model, tmp / "model.onnx")
        record = {"source_run": str(run.path), "onnx": "model.onnx", "onnx_bytes": (tmp / "model.onnx").stat().st_size,
                  **asdict(check)}
        write_json_atomic(tmp / "export.json", record)
        write_json_atomic(tmp / "config.json", {"verb": "export", "source_run": str(run.path)})
    return record


def bench_stage(ctx: Context) -> None:
    """Dense against compact, with the compact network's references (structprune.bench.REFERENCES): the same
    network masked but run with dense tensors, and the same nonzeros run as unstructured sparse (CSR)."""
    from structprune.arch import input_shape_of
    from structprune.bench import REFERENCES, Candidate, bench, reference_candidates

    r = ctx.recipe
    candidates = []
    for path in (ctx.path(TRAIN), ctx.path(COMPACT)):
        run = load_run(path)
        info = {k: run.metrics.get(k) for k in ("macs", "params", "test_mcr")}
        candidates.append(Candidate(str(path), run.model, input_shape_of(run.model), info))
    candidates += reference_candidates(load_run(ctx.path(COMPACT)), str(ctx.path(COMPACT)), list(REFERENCES))
    records = bench(candidates, list(r.bench_batches), threads=r.bench_threads, rounds=r.bench_rounds,
                    progress=ctx.progress)
    write_json_atomic(ctx.path(BENCH_FILE), records)


def report_stage(ctx: Context) -> None:
    from structprune.report import collect, write_report

    records = collect([ctx.out])  # picks up OUT/bench.json too
    title = f"structprune reproduce {ctx.recipe.dataset}"
    write_report(records, ctx.path("report.md"), title)
    write_report(records, ctx.path("report.html"), title)


def stages_for(recipe: Recipe) -> list[Stage]:
    return [
        Stage(TRAIN, lambda ctx: _is_run(ctx.path(TRAIN)), train_stage),
        Stage("sensitivity", sensitivity_done, sensitivity_stage, (TRAIN,)),
        *ladder_stages(recipe),
        Stage(SEARCH, lambda ctx: _is_run(ctx.path(SEARCH)), search_stage, (TRAIN,)),
        Stage(RETRAIN, lambda ctx: _is_run(ctx.path(RETRAIN)), retrain_stage, (SEARCH,)),
        Stage(QUANT, lambda ctx: _is_run(ctx.path(QUANT)), quantize_stage, (RETRAIN,)),
        Stage(COMPACT, lambda ctx: _is_run(ctx.path(COMPACT)), compact_stage, (QUANT,)),
        Stage(EXPORT, export_done, export_stage, (COMPACT,)),
        Stage("bench", lambda ctx: ctx.path(BENCH_FILE).is_file(), bench_stage, (TRAIN, COMPACT)),
        Stage("report", lambda ctx: False, report_stage),  # always redrawn from what is there
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


def check_trained_run(ctx: Context, source: Path) -> Run:
    """A dense run that can serve as the `train` stage: the recipe's model trained on the recipe's dataset with
    the recipe's validation split, without masks (checked before anything is written)."""
    run = load_checked_run(source)
    model, dataset = run.config.get("model"), run.config.get("dataset")
    if model != ctx.recipe.model or dataset != ctx.recipe.dataset:
        raise StructpruneError(f"{source}: holds {model!r} trained on {dataset!r}; this reproduction needs "
                               f"{ctx.recipe.model!r} on {ctx.recipe.dataset!r}")
    if (run.path / "masks.json").is_file():
        raise StructpruneError(f"{source}: is a pruned run (masks.json); start from the dense one")
    val_size = run.config.get("val_size")
    if val_size is not None and val_size != ctx.recipe.val_size:
        raise StructpruneError(f"{source}: trained with {val_size} validation images held out, the recipe holds out "
                               f"{ctx.recipe.val_size}: the search would score images the network was trained on")
    return run


def adopt_trained_run(ctx: Context) -> None:
    """Use a dense run (checked by check_trained_run) as the `train` stage: copied into OUT/train atomically; the
    source is named in reproduce.json."""
    import shutil

    assert ctx.trained is not None
    source = ctx.trained
    run = check_trained_run(ctx, source)
    with _stage_output(ctx, TRAIN, "train").publish() as tmp:
        for item in run.path.iterdir():
            if item.is_file() and item.name != "sensitivity.json":
                shutil.copy2(item, tmp / item.name)
        config = {**run.config, "verb": "train", "adopted_from": str(source)}
        write_json_atomic(tmp / "config.json", config)


def reproduce(dataset: str, out: str | Path | Output, quick: bool = False, data_dir: str | None = None,
              progress: bool = True, recipe: Recipe | None = None,
              on_stage: Callable[[str, str], None] | None = None, trained: str | Path | None = None) -> dict[str, float]:
    """Run (or resume) a reproduction into `out` (a new folder, or an earlier reproduction to resume); returns the
    seconds each stage run this time took.

    `trained`: a dense run folder to start from instead of training. `on_stage(name, "skip" | "run")` is told about
    every stage as it comes."""
    recipe = recipe or recipe_for(dataset, quick)
    output = out if isinstance(out, Output) else claim_folder(out, "reproduce", resume=True,
                                                              inputs=() if trained is None else (trained,))
    if trained is not None and not (Path(trained) / "model.safetensors").is_file():
        raise StructpruneError(f"{trained}: not a run folder with a trained model")
    ctx = Context(out=output.path, recipe=recipe, data_dir=data_dir, progress=progress,
                  trained=Path(trained) if trained is not None else None)
    ctx.data  # noqa: B018  (a missing dataset fails here, before anything is written)
    if ctx.trained is not None:
        check_trained_run(ctx, ctx.trained)  # before anything is written
    output.path.mkdir(parents=True, exist_ok=True)
    status = _read_status(ctx)
    if status and status.get("dataset") != recipe.dataset:
        raise StructpruneError(f"{output.path}: holds a reproduction of {status.get('dataset')!r}, not {recipe.dataset!r}")
    if ctx.trained is None and "train_from" in status:
        ctx.trained = Path(status["train_from"])  # resumed without --from-run: the adopted run stays the source
    recorded: dict[str, str] = status.get("inputs", {})
    write_json_atomic(ctx.path("config.json"), {"verb": "reproduce", "dataset": recipe.dataset, "quick": quick})
    seconds: dict[str, float] = {}
    skipped: list[str] = []
    digests: dict[str, str] = {}
    for stage in stages_for(recipe):
        adopted = stage.name == TRAIN and ctx.trained is not None
        if adopted and not ctx.trained.is_dir():  # type: ignore[union-attr]
            if stage.done(ctx):  # the adopted run is gone, its copy is not: keep the copy
                skipped.append(stage.name)
                continue
            raise StructpruneError(f"{ctx.trained}: the run this reproduction started from is gone")
        digest = stage_digest(ctx, stage)
        if stage.done(ctx) and recorded.get(stage.name) == digest:
            skipped.append(stage.name)
            if on_stage is not None:
                on_stage(stage.name, "skip")
            continue
        if on_stage is not None:
            on_stage(stage.name, "run")
        log.info("reproduce: stage %s", stage.name)
        started = time.perf_counter()
        (adopt_trained_run if adopted else stage.run)(ctx)
        seconds[stage.name] = time.perf_counter() - started
        digests[stage.name] = digest
        _status(ctx, seconds, skipped, digests)
    _status(ctx, seconds, skipped, digests)
    return seconds


__all__ = ["RECIPES", "Recipe", "recipe_for", "reproduce", "stages_for"]
