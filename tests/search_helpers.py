"""A small trained run shared by the search tests."""

from __future__ import annotations

from pathlib import Path

import torch

from structprune.data import load_dataset
from structprune.models import create
from structprune.runfolder import save_run
from structprune.train import TrainConfig, train


def tiny_digits_run(root: Path, epochs: int = 1) -> Path:
    """A `tiny-paper` run folder trained `epochs` on the embedded digits (seed 0): the search tests' input."""
    torch.manual_seed(0)
    model = create("tiny-paper", in_channels=1, input_size=8)
    train(model, load_dataset("digits"), TrainConfig(epochs=epochs, lr=0.05))
    path = root / "tiny"
    save_run(path, model, None, {}, {"dataset": "digits"})
    return path
