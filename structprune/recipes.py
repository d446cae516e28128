"""Reproduction recipes: every setting of `structprune reproduce DATASET [--quick]`, the ones behind
docs/results.md. `--quick` shrinks epochs and search budgets so that `reproduce mnist --quick` finishes within
minutes on two cores; `digits` (embedded data) checks the pipeline in seconds."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from structprune import stages
from structprune.data import Dataset
from structprune.errors import StructpruneError
from structprune.sensitivity import SensitivityConfig
from structprune.sparsity.granularity import Granularity, KernelForm
from structprune.sparsity.method import ONE_SHOT_METHODS, Method, require_method
from structprune.train import TrainConfig


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
    ladder_methods: tuple[Method, ...] = (Method.L1, Method.RANDOM)
    scales: tuple[Granularity, ...] = (Granularity.CHANNEL, Granularity.KERNEL, Granularity.INTRA)
    search: dict[str, Any] = field(default_factory=dict)  # structprune.search.driver.SearchConfig fields
    retrain_epochs: int = 3
    retrain_lr: float = 0.01
    retrain_images: int | None = None  # training images used by the final retraining (None: all)
    bits: int = 6
    quant_epochs: int = 1
    bench_batches: tuple[int, ...] = (1, 64)
    bench_threads: int = 2
    bench_rounds: int = 7

    def __post_init__(self) -> None:
        for method in self.ladder_methods:
            require_method(method, ONE_SHOT_METHODS, "ladder method")
        if not self.scales or not all(isinstance(g, Granularity) for g in self.scales):
            raise StructpruneError(f"recipe scales must be a tuple of Granularity, not {self.scales!r}")

    # the typed config of each stage of the reproduction
    def train_config(self, data_dir: str | None) -> stages.TrainRunConfig:
        return stages.TrainRunConfig(model=self.model, dataset=self.dataset, train=self.train,
                                     model_kwargs=self.model_kwargs, data_dir=data_dir, val_size=self.val_size,
                                     channels_last="off")

    def sensitivity_config(self) -> SensitivityConfig:
        return SensitivityConfig(images=self.sensitivity_images)

    def search_config(self) -> stages.SearchConfig:
        return stages.SearchConfig(granularities=self.scales, **self.search)

    def retrain_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.retrain_epochs, lr=self.retrain_lr, batch_size=self.train.batch_size,
                           seed=self.train.seed)

    def retrain_data(self, data: Dataset) -> Dataset:
        """The final retraining's data: the first `retrain_images` training images, or all."""
        return data if self.retrain_images is None else replace(data, train=data.train.subset(self.retrain_images))

    def quantize_config(self, data_dir: str | None) -> stages.QuantizeConfig:
        return stages.QuantizeConfig(bits=self.bits, epochs=self.quant_epochs, data_dir=data_dir)

    def bench_config(self) -> stages.BenchConfig:
        """Dense against compact, with the compact network's references (structprune.bench.REFERENCES): the same
        network masked but run with dense tensors, and the same nonzeros run as unstructured sparse (CSR)."""
        return stages.BenchConfig(batches=self.bench_batches, threads=self.bench_threads, rounds=self.bench_rounds,
                                  references=("masked-dense", "unstructured"))


# kernel masks in two output-map groups sharing their kept inputs and one intra pattern per layer: the forms that
# compact into few fast convolutions (docs/benchmarks.md); free per-kernel masks compact into many slow ones
_MNIST_SEARCH = {"method": Method.PF, "tolerance": 0.002, "particles": 16, "generations": 6, "score_images": 2000,
                 "check_images": 2000, "step_epochs": 1, "final_epochs": 1, "kernel": KernelForm("structured", 2),
                 "intra_shared": True}
# batch-norm statistics re-estimated for every candidate and for the accepted one: without it, one-shot pruning
# of a batch-norm network looks far worse than it is and the search accepts nothing
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
        ladder_ratios=(0.25, 0.5), ladder_methods=(Method.L1,),
        search={**_CIFAR_SEARCH, "tolerance": 0.02, "particles": 6, "generations": 2, "score_images": 500,
                "check_images": 1000, "ladder": (0.25, 0.5), "step_epochs": 0, "final_epochs": 0},
        retrain_epochs=1, bits=5, quant_epochs=0, bench_rounds=3),
    # the embedded 8×8 digits: a pipeline check in seconds, not a result
    ("digits", True): Recipe(
        "digits", "tiny-paper", TrainConfig(epochs=3, lr=0.05, batch_size=32), val_size=200, sensitivity_images=200,
        ladder_ratios=(0.25, 0.5, 0.75), ladder_methods=(Method.L1, Method.RANDOM),
        search={"method": Method.PF, "ratio": 0.5, "particles": 4, "generations": 2, "score_images": 100,
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
