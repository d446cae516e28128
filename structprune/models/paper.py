"""Plain conv–ReLU–pool networks in the notation of the paper.

Notation: layers joined by '-'.  `2x128C3` = two 3×3 convolutions with 128 output maps ('same'
padding, each followed by ReLU); `MP2` = 2×2 max pooling; `256FC` = a fully connected layer with 256
units and ReLU; the last FC layer is the classifier (no ReLU, width = number of classes).
  paper-mnist:   32C5-MP2-64C5-MP2-512FC-10FC         (12.3 M MACs at 28×28)
  paper-cifar10: 2x128C3-MP2-2x128C3-MP2-2x256C3-MP2-256FC-10FC   (the paper's CIFAR-10 network)
"""

from __future__ import annotations

import re

from torch import nn

from structprune.errors import StructpruneError
from structprune.models.registry import register

PAPER_MNIST = "32C5-MP2-64C5-MP2-512FC-10FC"
PAPER_CIFAR10 = "2x128C3-MP2-2x128C3-MP2-2x256C3-MP2-256FC-10FC"
TINY_PAPER = "2x8C3-MP2-16C3-MP2-32FC-10FC"

_CONV = re.compile(r"^(?:(\d+)x)?(\d+)C(\d+)$")
_POOL = re.compile(r"^MP(\d+)$")
_FC = re.compile(r"^(\d+)FC$")


class PlainCNN(nn.Module):
    """`features` (conv/ReLU/pool), then `classifier` (flatten, FC layers)."""

    def __init__(self, spec: str, num_classes: int, in_channels: int, input_size: int, bn: bool = False):
        super().__init__()
        features: list[nn.Module] = []
        channels, size = in_channels, input_size
        tokens = spec.split("-")
        fc_tokens: list[int] = []
        for token in tokens:
            if m := _CONV.match(token):
                repeat, width, k = int(m.group(1) or 1), int(m.group(2)), int(m.group(3))
                for _ in range(repeat):
                    features.append(nn.Conv2d(channels, width, k, padding=k // 2, bias=not bn))
                    if bn:
                        features.append(nn.BatchNorm2d(width))
                    features.append(nn.ReLU(inplace=True))
                    channels = width
            elif m := _POOL.match(token):
                k = int(m.group(1))
                features.append(nn.MaxPool2d(k))
                size //= k
            elif m := _FC.match(token):
                fc_tokens.append(int(m.group(1)))
            else:
                raise StructpruneError(f"bad layer token {token!r} in network notation {spec!r}")
            if size < 1:
                raise StructpruneError(f"network {spec!r} pools a {input_size}px input below 1 pixel")
        if not fc_tokens:
            raise StructpruneError(f"network {spec!r} has no FC classifier")
        fc_tokens[-1] = num_classes
        classifier: list[nn.Module] = [nn.Flatten()]
        width = channels * size * size
        for i, units in enumerate(fc_tokens):
            classifier.append(nn.Linear(width, units))
            if i < len(fc_tokens) - 1:
                classifier.append(nn.ReLU(inplace=True))
            width = units
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(*classifier)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):  # x: [N, C, H, W] -> logits [N, classes]
        return self.classifier(self.features(x))


@register("paper-mnist")
def paper_mnist(num_classes: int = 10, in_channels: int = 1, input_size: int = 28, bn: bool = False):
    return PlainCNN(PAPER_MNIST, num_classes, in_channels, input_size, bn=bn)


@register("paper-cifar10")
def paper_cifar10(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, bn: bool = False):
    return PlainCNN(PAPER_CIFAR10, num_classes, in_channels, input_size, bn=bn)


@register("tiny-paper")
def tiny_paper(num_classes: int = 10, in_channels: int = 1, input_size: int = 8, bn: bool = False):
    return PlainCNN(TINY_PAPER, num_classes, in_channels, input_size, bn=bn)


@register("plain")
def plain(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, spec: str = PAPER_CIFAR10,
          bn: bool = False):
    """Any network in the paper's notation: `create("plain", spec="16C3-MP2-10FC")`."""
    return PlainCNN(spec, num_classes, in_channels, input_size, bn=bn)
