"""VGG for small images (CIFAR-style): 3×3 conv–BN–ReLU stacks, 2×2 max pooling, one linear classifier.

`vgg11`: 64-M-128-M-2x256-M-2x512-M-2x512-M (9.2 M params, 153 M MACs at 32×32);
`vgg16`: 2x64-M-2x128-M-3x256-M-3x512-M-3x512-M (14.7 M params, 313 M MACs at 32×32);
`tiny-vgg`: 8-M-16-M-32-M for tests (8×8 or 16×16 inputs).
"""

from __future__ import annotations

from torch import nn

from structprune.errors import StructpruneError
from structprune.models.registry import register

CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "tiny-vgg": [8, "M", 16, "M", 32, "M"],
}


class VGG(nn.Module):
    """`features` (conv/BN/ReLU/pool), then `classifier` (flatten, one linear layer)."""

    def __init__(self, config: list[int | str], num_classes: int, in_channels: int, input_size: int, bn: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, input_size
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                size //= 2
                if size < 1:
                    raise StructpruneError(f"VGG: a {input_size}px input is pooled below 1 pixel; use a larger input")
            else:
                layers.append(nn.Conv2d(channels, int(item), 3, padding=1, bias=not bn))
                if bn:
                    layers.append(nn.BatchNorm2d(int(item)))
                layers.append(nn.ReLU(inplace=True))
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):  # x: [N, C, H, W] -> logits [N, classes]
        return self.classifier(self.features(x))


def _factory(name: str):
    def make(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, bn: bool = True) -> VGG:
        return VGG(CONFIGS[name], num_classes, in_channels, input_size, bn=bn)

    make.__name__ = name.replace("-", "_")
    return make


for _name in CONFIGS:
    register(_name)(_factory(_name))
