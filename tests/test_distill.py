"""Distillation during retraining: the loss formula, masked weights held at zero, the teacher recorded and
found back through the source runs, and unfit teachers refused in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from structprune import models
from structprune.cli import main
from structprune.data import load_dataset
from structprune.distill import Distillation, distillation_loss, trained_source
from structprune.errors import StructpruneError
from structprune.metrics import size_metrics
from structprune.retrain import retrain_masked
from structprune.runfolder import load_run, save_run
from structprune.sparsity.masking import MaskApplier
from structprune.sparsity.selection import select_masks
from structprune.stages.prune import load_masks
from structprune.train import TrainConfig

CFG = TrainConfig(epochs=1, lr=0.05, batch_size=128)


def _softmax(row: list[float], t: float) -> list[float]:
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def test_the_loss_is_the_weighted_sum_of_cross_entropy_and_the_softened_kl_by_hand():
    student = [[1.0, 2.0, 0.0], [0.5, -1.0, 2.5]]
    teacher = [[0.5, 0.0, 3.0], [2.0, 1.0, -1.0]]
    labels = [1, 2]
    a, t = 0.3, 2.0
    ce = sum(-math.log(_softmax(s, 1.0)[y]) for s, y in zip(student, labels, strict=True)) / 2
    kl = sum(sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(_softmax(tr, t), _softmax(s, t), strict=True))
             for s, tr in zip(student, teacher, strict=True)) / 2
    want = (1 - a) * ce + a * t * t * kl
    got = distillation_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels), a, t)
    assert float(got) == pytest.approx(want, rel=1e-6)
    only_ce = distillation_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels), 0.0, t)
    assert float(only_ce) == pytest.approx(ce, rel=1e-6)
    same = distillation_loss(torch.tensor(teacher), torch.tensor(teacher), torch.tensor(labels), 1.0, t)
    assert float(same) == pytest.approx(0.0, abs=1e-7)  # a student that copies its teacher loses nothing


@pytest.mark.parametrize("weight, temperature, words", [(1.5, 4.0, "weight must be in [0, 1]"),
                                                        (0.5, 0.0, "temperature must be positive")])
def test_bad_weights_are_refused_in_one_line(weight, temperature, words):
    with pytest.raises(StructpruneError, match=words.replace("[", r"\[").replace("]", r"\]")):
        Distillation(torch.nn.Linear(2, 2), weight, temperature)


def test_masked_retraining_with_a_teacher_holds_pruned_weights_at_zero_and_follows_the_teacher(tmp_path):
    data = load_dataset("digits")
    torch.manual_seed(0)
    teacher = models.create("tiny-paper", in_channels=1, input_size=8)
    torch.manual_seed(1)
    student = models.create("tiny-paper", in_channels=1, input_size=8)
    plain = models.create("tiny-paper", in_channels=1, input_size=8)
    plain.load_state_dict(student.state_dict())
    mask = select_masks(student, "channel,intra", [0.5, 0.5])
    factors = MaskApplier(student).factors(mask)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    retrain_masked(student, mask, data, CFG, distill=Distillation(teacher, 0.7, 3.0, name="t"),
                   checkpoint_dir=tmp_path / "ckpt")
    retrain_masked(plain, mask, data, CFG)
    params = dict(student.named_parameters())
    for name, factor in factors.items():
        assert bool((params[name].detach()[factor == 0] == 0).all()), name
    assert any(not torch.equal(a, b) for a, b in zip(student.state_dict().values(), plain.state_dict().values(),
                                                     strict=True))  # the teacher changed what was learnt
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())  # and learnt nothing
    # the checkpoint records the teacher and its weights: resuming with others is refused
    with pytest.raises(StructpruneError, match="other settings"):
        retrain_masked(student, mask, data, CFG, distill=Distillation(teacher, 0.2, 3.0, name="t"),
                       checkpoint_dir=tmp_path / "ckpt")


def _run(path: Path, config: dict, num_classes: int = 10, input_size: int = 8, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = models.create("tiny-paper", num_classes=num_classes, in_channels=1, input_size=input_size)
    return save_run(path, model, None, {**size_metrics(model)}, {"model": "tiny-paper", "verb": "train", **config})


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, Path]:
    """dense -> pruned (CLI) -> compact (CLI), on digits."""
    base = tmp_path_factory.mktemp("distill")
    dense = _run(base / "dense", {"dataset": "digits", "train": {"seed": 0}})
    assert main(["-q", "prune", str(dense), "--granularity", "channel,intra", "--ratio", "0.5,0.5", "--method", "l1",
                 "--intra-free", "--round-to", "1", "--out", str(base / "pruned")]) == 0
    assert main(["-q", "compact", str(base / "pruned"), "--out", str(base / "compact")]) == 0
    return {"dense": dense, "pruned": base / "pruned", "compact": base / "compact"}


def test_cli_retrain_with_the_source_teacher_keeps_masked_weights_zero_and_records_it(chain, capsys):
    out = chain["pruned"].parent / "kd"
    assert main(["-q", "retrain", str(chain["pruned"]), "--epochs", "1", "--teacher", "source", "--distill-weight",
                 "0.6", "--temperature", "3", "--out", str(out), "--no-progress"]) == 0
    assert f"distilled from {chain['dense']}" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["retrain"]["distill"] == {"teacher": str(chain["dense"]), "weight": 0.6, "temperature": 3.0,
                                            "teacher_arg": "source"}
    run = load_run(out)
    params = dict(run.model.named_parameters())
    factors = MaskApplier(run.model).factors(load_masks(run))
    assert factors and all(bool((params[n].detach()[f == 0] == 0).all()) for n, f in factors.items())
    assert not (out.parent / ".kd.structprune").exists()
    # a compact run of the distilled one still finds the trained run at the start of its chain
    assert trained_source(chain["compact"]) == chain["dense"]
    assert main(["-q", "compact", str(out), "--out", str(out.parent / "kd-compact")]) == 0
    assert trained_source(out.parent / "kd-compact") == chain["dense"]


def test_cli_retrain_without_a_teacher_records_none(chain):
    out = chain["pruned"].parent / "plain"
    assert main(["-q", "retrain", str(chain["compact"]), "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["retrain"]["distill"] is None


def test_source_links_are_followed_from_a_sibling_when_paths_were_relative(tmp_path):
    dense = _run(tmp_path / "dense", {"dataset": "digits"})
    pruned = _run(tmp_path / "pruned", {"dataset": "digits", "source_run": "elsewhere/dense"})
    quant = _run(tmp_path / "quant", {"dataset": "digits", "source": "somewhere/pruned"})
    assert trained_source(quant) == dense and trained_source(pruned) == dense
    gone = _run(tmp_path / "orphan", {"source_run": "nowhere/missing"})
    with pytest.raises(StructpruneError, match="is not found"):
        trained_source(gone)


@pytest.mark.parametrize("make, words", [
    (lambda p: _run(p, {"dataset": "digits"}, num_classes=5), "predicts 5 classes, the student 10"),
    (lambda p: _run(p, {}, input_size=28), "takes inputs of shape (1, 28, 28), the student (1, 8, 8)"),
    (lambda p: _run(p, {"dataset": "mnist"}), "was trained on mnist, the student on digits"),
    (lambda p: p, "no such run folder"),
])
def test_an_unfit_teacher_is_refused_in_one_line(chain, tmp_path, capsys, make, words):
    teacher = make(tmp_path / "teacher")
    out = tmp_path / "kd"
    rc = main(["-q", "retrain", str(chain["pruned"]), "--epochs", "1", "--teacher", str(teacher), "--out", str(out),
               "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and words in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("args, words", [
    (["--teacher", "source"], "records no run it was made from"),
    (["--temperature", "2"], "apply to --teacher only"),
    (["--teacher", "source", "--distill-weight", "2"], "weight must be in [0, 1]"),
])
def test_cli_bad_distillation_options_are_one_line(chain, tmp_path, capsys, args, words):
    rc = main(["-q", "retrain", str(chain["dense"]), "--epochs", "1", *args, "--out", str(tmp_path / "x"),
               "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and words in err[0], err
