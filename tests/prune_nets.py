"""Small networks of each family for the pruning tests (the zoo's tiny-* variants are used where present).

Each is a few hundred to a few thousand parameters and runs on 8×8 to 12×12 inputs in well under a
millisecond, so property tests can afford hundreds of cases.
"""

from __future__ import annotations

import torch
from torch import nn

from structprune import models


class TinyResNet(nn.Module):
    """Stem, one identity block, one downsampling block with a 1×1-conv shortcut; BN everywhere."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 6):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.b1 = nn.Sequential(nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                                nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w))
        self.b2 = nn.Sequential(nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
                                nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w))
        self.short = nn.Sequential(nn.Conv2d(w, 2 * w, 1, stride=2, bias=False), nn.BatchNorm2d(2 * w))
        self.head = nn.Linear(2 * w, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.b1(x))
        x = torch.relu(self.short(x) + self.b2(x))
        return self.head(x.mean((2, 3)))  # global average pool -> [N, 2w]


class TinyDenseNet(nn.Module):
    """Stem, a dense block of two BN-ReLU-conv layers with concatenation, a transition, flatten -> FC."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, growth: int = 4, size: int = 8):
        super().__init__()
        c0 = 2 * growth
        self.stem = nn.Conv2d(in_channels, c0, 3, padding=1)
        self.l1 = nn.Sequential(nn.BatchNorm2d(c0), nn.ReLU(), nn.Conv2d(c0, growth, 3, padding=1))
        self.l2 = nn.Sequential(nn.BatchNorm2d(c0 + growth), nn.ReLU(), nn.Conv2d(c0 + growth, growth, 3, padding=1))
        c = c0 + 2 * growth
        self.trans = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1), nn.AvgPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear((c // 2) * (size // 2) ** 2, num_classes))

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.l1(x)], 1)
        x = torch.cat([x, self.l2(x)], 1)
        return self.head(self.trans(x))


class InvertedResidual(nn.Module):
    def __init__(self, c: int, expand: int):
        super().__init__()
        h = c * expand
        self.body = nn.Sequential(
            nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
            nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
            nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c),
        )

    def forward(self, x):
        return x + self.body(x)


class TinyMobileNet(nn.Module):
    """MobileNetV2-style: stem, an inverted residual block (depthwise 3×3), a stride-2 depthwise stage, head."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU6())
        self.block = InvertedResidual(width, 3)
        self.down = nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1, groups=width, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU6(), nn.Conv2d(width, 2 * width, 1), nn.ReLU6())
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.down(self.block(self.stem(x)))
        return self.head(x.mean((2, 3)))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch norm non-trivial statistics and affine terms, so masking mistakes show."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.3)
    return model


def family_models() -> dict[str, tuple[nn.Module, tuple[int, int, int]]]:
    """One small model per family, eval mode, with its input shape (C, H, W)."""
    torch.manual_seed(0)
    nets: dict[str, tuple[nn.Module, tuple[int, int, int]]] = {
        "plain": (models.create("tiny-paper", in_channels=1, input_size=8), (1, 8, 8)),
        "plain-bn": (models.create("plain", spec="6C3-6C3-MP2-8C3-12FC-10FC", in_channels=3, input_size=8, bn=True), (3, 8, 8)),
        "resnet": (TinyResNet(), (3, 8, 8)),
        "densenet": (TinyDenseNet(), (3, 8, 8)),
        "mobilenet": (TinyMobileNet(), (3, 8, 8)),
    }
    # The zoo's tiny variants, as they land (registered names from engineer A's model zoo).
    for name in ("tiny-vgg", "tiny-resnet", "tiny-mobilenet", "tiny-densenet"):
        if name in models.available():
            model = models.create(name)
            shape = tuple(model.structprune_factory["input_shape"])
            nets[name] = (model, shape)
    for model, _ in nets.values():
        randomize_bn(model)
        model.eval()
    return nets

