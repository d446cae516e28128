"""Model zoo and registry. `create(name, num_classes=..., in_channels=..., input_size=...)`.

paper-mnist, paper-cifar10, plain, tiny-paper  plain conv–ReLU–pool CNNs in the paper's notation (paper.py)
vgg11, vgg16, tiny-vgg                       VGG with batch norm for 32×32 inputs (vgg.py)
resnet20, resnet56, resnet, tiny-resnet      CIFAR ResNets with 1×1-conv shortcuts (resnet.py)
mobilenetv2, tiny-mobilenet                  depthwise convs, inverted residuals (mobilenet.py)
densenet, tiny-densenet                      DenseNet-BC, concatenation (densenet.py)
Bring any nn.Module with `@register("name")` on its factory.
"""

from structprune.models import densenet, mobilenet, paper, resnet, vgg  # noqa: F401  (register the networks)
from structprune.models.registry import available, create, register

__all__ = ["available", "create", "register"]
