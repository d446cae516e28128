"""CIFAR ResNets (He et al. 2016, section 4.2): three stages of basic blocks, 16/32/64 maps, depth 6n+2.

Shortcuts that change shape are 1×1 convolutions with batch norm (option B), not zero-padding
(option A, written with F.pad, which dependency-graph pruners cannot follow).
`resnet20` (n=3, 0.27 M params, 41 M MACs at 32×32), `resnet56` (n=9, 0.86 M params, 126 M MACs),
`tiny-resnet` (n=1, 4/8/16 maps) for tests.
"""

from __future__ import annotations

from torch import nn

from structprune.errors import StructpruneError
from structprune.models.registry import register


class BasicBlock(nn.Module):
    """conv3×3–BN–ReLU–conv3×3–BN, plus the shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int, in_channels: int, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise StructpruneError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (got {depth})")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, planes = [], widths[0]
        for i, width in enumerate(widths):
            blocks = [BasicBlock(planes if j == 0 else width, width, 2 if (i > 0 and j == 0) else 1) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            planes = width
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):  # x: [N, C, H, W] -> logits [N, classes]
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))  # [N, 64, H/4, W/4]
        return self.fc(self.flatten(self.pool(x)))


@register("resnet20")
def resnet20(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> CifarResNet:
    return CifarResNet(20, num_classes, in_channels)


@register("resnet56")
def resnet56(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> CifarResNet:
    return CifarResNet(56, num_classes, in_channels)


@register("resnet")
def resnet(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, depth: int = 20,
           widths: tuple[int, int, int] | list[int] = (16, 32, 64)) -> CifarResNet:
    """Any CIFAR ResNet: `create("resnet", depth=32)`."""
    return CifarResNet(depth, num_classes, in_channels, tuple(widths))


@register("tiny-resnet")
def tiny_resnet(num_classes: int = 10, in_channels: int = 3, input_size: int = 16) -> CifarResNet:
    return CifarResNet(8, num_classes, in_channels, widths=(4, 8, 16))
