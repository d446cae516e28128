"""MobileNetV2 for small images (Sandler et al. 2018): inverted residual blocks with depthwise 3×3 convs.

CIFAR variant: a stride-1 stem and stride 1 in the second stage, so 32×32 inputs end at 4×4.
`mobilenetv2` (2.2 M params, 88 M MACs at 32×32); `tiny-mobilenet` (8/12/16 maps) for tests.
"""

from __future__ import annotations

from torch import nn

from structprune.models.registry import register

# (expansion t, output maps c, repeats n, first stride s) per stage
CIFAR_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
TINY_SETTINGS = [(1, 8, 1, 1), (4, 12, 2, 2), (4, 16, 2, 2)]


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """1×1 expand – depthwise 3×3 – 1×1 linear projection; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [conv_bn_relu(cin, hidden, 1)] if expand != 1 else []
        layers += [conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, settings=CIFAR_SETTINGS, stem: int = 32, last: int = 1280):
        super().__init__()
        layers: list[nn.Module] = [conv_bn_relu(in_channels, stem, 3)]
        cin = stem
        for t, c, n, s in settings:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(conv_bn_relu(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(last, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x):  # x: [N, C, H, W] -> logits [N, classes]
        return self.classifier(self.features(x))


@register("mobilenetv2")
def mobilenetv2(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> MobileNetV2:
    return MobileNetV2(num_classes, in_channels)


@register("tiny-mobilenet")
def tiny_mobilenet(num_classes: int = 10, in_channels: int = 3, input_size: int = 16) -> MobileNetV2:
    return MobileNetV2(num_classes, in_channels, settings=TINY_SETTINGS, stem=8, last=32)
