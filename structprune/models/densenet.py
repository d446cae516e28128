"""DenseNet-BC for small images (Huang et al. 2017): every layer's maps are concatenated onto its input.

Bottleneck layer BN–ReLU–1×1 conv (4k maps)–BN–ReLU–3×3 conv (k maps), k = growth rate; transitions
halve the maps (compression 0.5) and the resolution. Three dense blocks of (depth − 4) / 6 layers.
`densenet`: depth 40, k = 12 (0.18 M params, 72 M MACs at 32×32; `depth=100` gives DenseNet-BC-100);
`tiny-densenet`: depth 10, k = 4, for tests.
"""

from __future__ import annotations

import torch
from torch import nn

from structprune.errors import StructpruneError
from structprune.models.registry import register


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):  # x: [N, cin, H, W] -> [N, cin + growth, H, W]
        new = self.conv2(self.relu2(self.bn2(self.conv1(self.relu1(self.bn1(x))))))
        return torch.cat([x, new], dim=1)


class Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2))


class DenseNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, depth: int = 40, growth: int = 12, compression: float = 0.5):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise StructpruneError(f"DenseNet-BC depth must be 6n+4 with n >= 1 (got {depth})")
        per_block = (depth - 4) // 6
        channels = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)]
        for block in range(3):
            for _ in range(per_block):
                layers.append(DenseLayer(channels, growth))
                channels += growth
            if block < 2:
                out = int(channels * compression)
                layers.append(Transition(channels, out))
                channels = out
        layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):  # x: [N, C, H, W] -> logits [N, classes]
        return self.classifier(self.features(x))


@register("densenet")
def densenet(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, depth: int = 40, growth: int = 12) -> DenseNet:
    return DenseNet(num_classes, in_channels, depth=depth, growth=growth)


@register("tiny-densenet")
def tiny_densenet(num_classes: int = 10, in_channels: int = 3, input_size: int = 16) -> DenseNet:
    return DenseNet(num_classes, in_channels, depth=10, growth=4)
