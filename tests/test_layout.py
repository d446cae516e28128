"""The fast layout for inference: channels_last batches where they help, the same results, and a fallback for
networks that reshape their activations with .view()."""

from __future__ import annotations

import torch
from torch import nn

from structprune.data import Split
from structprune.layout import FastLayout, accepts_channels_last, fast_layout
from structprune.train import evaluate


def test_fast_layout_is_channels_last_for_cpu_batches_of_several_channels_only():
    x = torch.randn(2, 3, 4, 4)
    y = fast_layout(x)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous() and torch.equal(x, y)
    one = torch.randn(2, 1, 4, 4)
    assert fast_layout(one) is one  # one channel: the degenerate strides are left alone
    flat = torch.randn(2, 5)
    assert fast_layout(flat) is flat


class _ViewNet(nn.Module):
    """Flattens with .view(), which channels_last activations refuse."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return self.fc(h.view(h.size(0), -1))


def test_a_network_that_refuses_channels_last_is_run_as_its_batches_come():
    torch.manual_seed(0)
    net = _ViewNet().eval()
    x = torch.randn(10, 3, 6, 6)
    layout = FastLayout()
    assert torch.allclose(layout(net, x), net(x), atol=1e-6)
    assert not layout.enabled
    split = Split(x, torch.randint(0, 10, (10,)))
    wrong = int((net(x).argmax(1) != split.y).sum())
    assert evaluate(net, split, batch_size=4).mcr == wrong / 10


def test_evaluation_in_the_fast_layout_gives_the_plain_results():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 10)).eval()
    split = Split(torch.randn(32, 3, 8, 8), torch.randint(0, 10, (32,)))
    layout = FastLayout()
    assert torch.allclose(layout(net, split.x), net(split.x), atol=1e-5) and layout.enabled
    result = evaluate(net, split, batch_size=8)
    with torch.no_grad():
        logits = net(split.x)
    assert result.mcr == float((logits.argmax(1) != split.y).float().mean())
    assert abs(result.loss - float(nn.functional.cross_entropy(logits, split.y))) < 1e-5


def test_the_layout_decision_probes_every_network_and_restores_its_mode():
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 10)).train()
    x = torch.randn(2, 3, 6, 6)
    stats = conv[1].running_mean.clone()
    assert accepts_channels_last(conv, sample=x)
    assert conv.training and torch.equal(conv[1].running_mean, stats)  # probed in eval mode
    assert not accepts_channels_last(conv, _ViewNet(), sample=x)  # one refusing network decides
    assert not accepts_channels_last(nn.Conv2d(1, 2, 3), sample=torch.randn(2, 1, 6, 6))  # one channel: left alone
