"""A small trained run and a user-registered residual network shared by the search tests."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from structprune.data import load_dataset
from structprune.models import create, register
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


class UserResNet(nn.Module):
    """A user's residual network: stem, two identity blocks, a 1×1-shortcut downsampling block."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 6):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1))
                                    for _ in range(2))
        self.down = nn.Sequential(nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(2 * w, 2 * w, 3, padding=1))
        self.short = nn.Conv2d(w, 2 * w, 1, stride=2)
        self.head = nn.Linear(2 * w, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = torch.relu(x + block(x))
        x = torch.relu(self.down(x) + self.short(x))
        return self.head(x.mean((2, 3)))


@register("test-search-user-resnet")
def user_resnet(num_classes: int = 10, in_channels: int = 3, input_size: int = 16, width: int = 6) -> UserResNet:
    return UserResNet(num_classes, in_channels, width)
