"""Knowledge distillation for retraining: a teacher network's softened predictions guide the student.

    loss = (1 − A)·CE(student, labels) + A·T²·KL(softmax(teacher/T) ‖ softmax(student/T))

(Hinton et al. 2015; the T² keeps the soft term's gradients on the scale of the hard one's as T changes).
The teacher runs in eval mode under torch.no_grad on each training batch. Any run folder whose network takes
the student's inputs and predicts the same classes can teach; `trained_source` finds the trained run a
pruned run came from by following the source links each stage records in config.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from structprune.arch import input_shape_of
from structprune.errors import StructpruneError
from structprune.runfiles import CONFIG_FILE
from structprune.runfolder import Run, load_run, source_chain

DEFAULT_WEIGHT = 0.5  # A: half hard labels, half the teacher
DEFAULT_TEMPERATURE = 4.0  # T
SOURCE = "source"  # --teacher source: the trained run the student came from


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      weight: float = DEFAULT_WEIGHT, temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """(1 − weight)·CE(student, targets) + weight·T²·KL(teacher ‖ student) at temperature T, both terms means
    over the batch."""
    hard = F.cross_entropy(student_logits, targets)
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True)
    return (1 - weight) * hard + weight * t * t * soft


def check_weights(weight: float, temperature: float) -> None:
    """Raise StructpruneError (one line) unless 0 ≤ weight ≤ 1 and temperature > 0."""
    if not 0.0 <= weight <= 1.0:
        raise StructpruneError(f"distillation weight must be in [0, 1] (got {weight:g})")
    if not temperature > 0:
        raise StructpruneError(f"distillation temperature must be positive (got {temperature:g})")


@dataclass
class Distillation:
    """A teacher network and the loss weights; `name` says where the teacher came from (a run folder)."""

    teacher: nn.Module
    weight: float = DEFAULT_WEIGHT
    temperature: float = DEFAULT_TEMPERATURE
    name: str = ""

    def __post_init__(self) -> None:
        check_weights(self.weight, self.temperature)
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint records, so that a resumed run keeps the same teacher and weights."""
        return {"teacher": self.name, "weight": self.weight, "temperature": self.temperature}

    def loss(self, student_logits: torch.Tensor, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        return distillation_loss(student_logits, teacher_logits, targets, self.weight, self.temperature)


def _shape(model: nn.Module) -> tuple[int, ...] | None:
    try:
        return input_shape_of(model)
    except Exception:  # a network the registry does not describe: the forward below decides
        return None


@torch.no_grad()
def check_teacher(teacher: nn.Module, student: nn.Module, x: torch.Tensor, name: str = "the teacher") -> None:
    """Raise StructpruneError (one line) unless `teacher` takes the student's inputs and predicts as many
    classes: compared on the example batch `x`."""
    t_shape, s_shape = _shape(teacher), _shape(student)
    if t_shape is not None and s_shape is not None and t_shape != s_shape:
        raise StructpruneError(f"{name} takes inputs of shape {t_shape}, the student {s_shape}: it cannot teach it")
    was_training = student.training
    student.eval()
    try:
        want = student(x)
    finally:
        student.train(was_training)
    try:
        got = teacher.eval()(x)
    except Exception as exc:  # a network fails in many ways on inputs of another shape
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StructpruneError(f"{name} cannot run on the student's inputs {tuple(x.shape[1:])} ({first})") from None
    if got.shape != want.shape:
        raise StructpruneError(f"{name} predicts {got.shape[-1] if got.dim() > 1 else '?'} classes, the student "
                               f"{want.shape[-1]}: it cannot teach it")


def trained_source(run_dir: str | Path, config: dict[str, Any] | None = None) -> Path:
    """The first run of the chain `run_dir` was made from (prune, search, retrain, compact, quantize each
    record their input run): the trained network at its start."""
    chain = [folder for folder, _ in source_chain(run_dir, config)]
    if len(chain) == 1:
        raise StructpruneError(f"{run_dir}: {CONFIG_FILE} records no run it was made from; name the teacher's run folder")
    return chain[-1]


def teacher_for(spec: str | Path, student: Run, x: torch.Tensor, weight: float = DEFAULT_WEIGHT,
                temperature: float = DEFAULT_TEMPERATURE) -> Distillation:
    """The Distillation for `student` from the run folder `spec`, or, for "source", from the trained run the
    student came from (trained_source). Refused in one line when the teacher was trained on another dataset
    or does not fit the student's inputs and classes on the example batch `x`."""
    check_weights(weight, temperature)
    path = trained_source(student.path, student.config) if str(spec) == SOURCE else Path(spec)
    teacher = load_run(path)
    ours, theirs = student.config.get("dataset"), teacher.config.get("dataset")
    if ours and theirs and ours != theirs:
        raise StructpruneError(f"teacher {path} was trained on {theirs}, the student on {ours}: it cannot teach it")
    check_teacher(teacher.model, student.model, x, name=f"teacher {path}")
    return Distillation(teacher.model, weight, temperature, name=str(path))
