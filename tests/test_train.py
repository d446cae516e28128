"""Training: the loss falls on real data, schedules, checkpoints, and exact resume after interruption."""

from __future__ import annotations

import pytest
import torch

from structprune.checkpoint import CHECKPOINT_FILE, CHECKPOINT_JSON
from structprune.data import Dataset, Split, load_dataset
from structprune.errors import StructpruneError
from structprune.jsonio import read_json
from structprune.models import create
from structprune.train import TrainConfig, evaluate, lr_at, resolve_device, train


@pytest.fixture(scope="module")
def digits() -> Dataset:
    d = load_dataset("digits")
    return Dataset("digits", d.train.subset(256), d.val.subset(100), d.test.subset(100), 10, 1, 8)


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return create("tiny-paper", num_classes=10, in_channels=1, input_size=8)


def test_training_lowers_the_loss_on_real_digits(digits):
    model = _model()
    before = evaluate(model, digits.val)
    history = train(model, digits, TrainConfig(epochs=4, lr=0.05, batch_size=32))
    after = evaluate(model, digits.val)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert after.loss < before.loss * 0.6 and after.mcr < before.mcr
    assert after.mcr == history[-1]["val_mcr"]


def test_evaluate_counts_misclassifications_exactly():
    class Constant(torch.nn.Module):
        def forward(self, x):  # always predicts class 2
            return torch.nn.functional.one_hot(torch.full((len(x),), 2), 10).float()

    split = Split(torch.zeros(8, 1, 2, 2), torch.tensor([2, 2, 0, 1, 2, 3, 2, 2]))
    assert evaluate(Constant(), split).mcr == pytest.approx(3 / 8)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_resumed_run_ends_with_the_same_weights(tmp_path, digits, optimizer):
    cfg = TrainConfig(epochs=3, lr=0.01 if optimizer == "adam" else 0.05, batch_size=64, optimizer=optimizer)
    data = Dataset("digits", digits.train, digits.val, digits.test, 10, 1, 8, augment=True)  # augmentation on too
    straight = _model()
    history = train(straight, data, cfg)

    interrupted = _model()
    ckpt = tmp_path / "ckpt"
    stop_after = {"epochs": 0}

    def stop(record):
        stop_after["epochs"] += 1
        if stop_after["epochs"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(interrupted, data, cfg, checkpoint_dir=ckpt, on_epoch=stop)
    assert read_json(ckpt / CHECKPOINT_JSON)["epoch"] == 2
    resumed = _model(seed=123)  # a fresh process: different initial weights, restored from the checkpoint
    resumed_history = train(resumed, data, cfg, checkpoint_dir=ckpt)
    assert resumed_history == history
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_checkpoint_of_other_settings_is_refused(tmp_path, digits):
    ckpt = tmp_path / "ckpt"
    train(_model(), digits, TrainConfig(epochs=1, batch_size=128), checkpoint_dir=ckpt)
    assert (ckpt / CHECKPOINT_FILE).exists()
    with pytest.raises(StructpruneError, match="other settings"):
        train(_model(), digits, TrainConfig(epochs=2, batch_size=128), checkpoint_dir=ckpt)


def test_checkpoint_without_newer_fields_resumes_with_their_defaults(tmp_path, digits):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    ckpt = tmp_path / "ckpt"
    cfg = TrainConfig(epochs=2, batch_size=128)
    def stop(record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_model(), digits, cfg, checkpoint_dir=ckpt, on_epoch=stop)
    path = ckpt / CHECKPOINT_FILE
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    record = json.loads(meta["structprune_checkpoint"])
    del record["config"]["lr_gamma"]  # as written by a version before that field existed
    save_file(tensors, str(path), metadata={"structprune_checkpoint": json.dumps(record)})
    history = train(_model(), digits, cfg, checkpoint_dir=ckpt)
    assert [h["epoch"] for h in history] == [1, 2]


def test_corrupt_checkpoint_is_a_user_error(tmp_path, digits):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / CHECKPOINT_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(StructpruneError, match="corrupt checkpoint"):
        train(_model(), digits, TrainConfig(epochs=1), checkpoint_dir=ckpt)


def test_after_step_runs_after_every_optimizer_step(digits):
    model = _model()
    first = model.features[0].weight

    def zero_first_map():
        with torch.no_grad():
            first[0].zero_()

    train(model, digits, TrainConfig(epochs=1, batch_size=64), after_step=zero_first_map)
    assert torch.count_nonzero(first[0]) == 0 and torch.count_nonzero(first[1]) > 0


def test_channels_last_training_matches_contiguous(digits):
    a, b = _model(), _model()
    cfg = TrainConfig(epochs=1, batch_size=64)
    train(a, digits, cfg)
    train(b, digits, cfg, channels_last=True)
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)
    assert b.features[0].weight.is_contiguous()


def test_schedules():
    cos = TrainConfig(epochs=2, lr=0.1)
    assert lr_at(cos, 0, 10) == pytest.approx(0.1)
    assert lr_at(cos, 10, 10) == pytest.approx(0.05)
    assert lr_at(cos, 19, 10) < 0.002
    step = TrainConfig(epochs=4, lr=0.1, schedule="step")
    assert [lr_at(step, s, 10) for s in (0, 19, 20, 29, 30, 39)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert lr_at(TrainConfig(lr=0.1, schedule="constant"), 99, 10) == 0.1
    warm = TrainConfig(epochs=3, lr=0.1, warmup_epochs=1)
    assert [lr_at(warm, s, 10) for s in (0, 4, 9)] == pytest.approx([0.01, 0.05, 0.1])
    assert lr_at(warm, 10, 10) == pytest.approx(0.1) and lr_at(warm, 20, 10) == pytest.approx(0.05)


@pytest.mark.parametrize("kwargs", [{"schedule": "linear"}, {"optimizer": "rmsprop"}, {"lr": 0.0}, {"batch_size": 0},
                                    {"warmup_epochs": 5}])
def test_bad_settings_are_user_errors(kwargs):
    with pytest.raises(StructpruneError):
        TrainConfig(**kwargs)


def test_devices():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(StructpruneError, match="no CUDA"):
            resolve_device("cuda")
