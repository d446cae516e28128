"""Quantization-aware retraining: straight-through gradients, shadow weights, pruned zeros held."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from structprune.data import load_dataset
from structprune.models import create
from structprune.quant.apply import plan_formats, quantize_model_
from structprune.quant.fixed_point import FixedPoint
from structprune.quant.qat import QuantAwareNet, fake_quant, retrain_quantized
from structprune.train import TrainConfig, evaluate


def test_fake_quant_forward_is_quantized_and_backward_is_identity():
    fmt = FixedPoint(3, 0.25)
    w = torch.tensor([0.1, -0.3, 2.0, 0.6], requires_grad=True)
    y = fake_quant(w, fmt)
    assert torch.equal(y.detach(), fmt.round_trip(w))
    (y * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert torch.equal(w.grad, torch.tensor([1.0, 2.0, 3.0, 4.0]))


def test_shadow_weights_get_the_gradient_of_the_quantized_network():
    torch.manual_seed(0)
    net = create("tiny-paper")
    plan = plan_formats(net, 3)
    wrapped = QuantAwareNet(net, plan)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    F.cross_entropy(wrapped(x), y).backward()
    reference = create("tiny-paper")
    with torch.no_grad():
        for (name, p), (_, q) in zip(net.named_parameters(), reference.named_parameters(), strict=True):
            q.copy_(wrapped.plan[name].round_trip(p) if name in plan else p)
    F.cross_entropy(reference(x), y).backward()
    for (name, p), (_, q) in zip(net.named_parameters(), reference.named_parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name
    # the forward pass never changed the float shadow weights
    assert not torch.equal(net.features[0].weight, plan["features.0.weight"].round_trip(net.features[0].weight))


def test_retraining_ends_on_the_grid_keeps_zeros_and_recovers_accuracy():
    torch.manual_seed(0)
    data = load_dataset("digits")
    net = create("tiny-paper")
    from structprune.train import train

    train(net, data, TrainConfig(epochs=2))
    with torch.no_grad():
        net.features[2].weight[:, :1] = 0.0  # pruned kernels
    ptq = copy.deepcopy(net)
    quantize_model_(ptq, plan_formats(ptq, 2))
    plan, history = retrain_quantized(net, data, 2, TrainConfig(epochs=1, lr=0.03, weight_decay=0.0))
    assert len(history) == 1
    assert bool((net.features[2].weight[:, :1] == 0).all())
    params = dict(net.named_parameters())
    for name, fmt in plan.items():
        assert fmt.bits == 2
        assert torch.equal(fmt.round_trip(params[name]), params[name].detach())
    # one epoch of retraining beats quantizing the trained weights directly (chance is 90% MCR)
    after, direct = evaluate(net, data.val), evaluate(ptq, data.val)
    assert after.loss < direct.loss and after.mcr < 0.5


def test_activation_quantization_puts_relu_outputs_on_a_grid():
    torch.manual_seed(0)
    net = create("tiny-paper").eval()
    wrapped = QuantAwareNet(net, plan_formats(net, 8), act_bits=4)
    wrapped(torch.randn(16, 1, 8, 8))  # the first batch calibrates one step per ReLU
    fmt = wrapped.act_formats["features.1"]
    assert fmt.bits == 4
    out = wrapped.net.features[1](torch.randn(16, 8, 8, 8))  # the hook replaces the output by its fixed-point value
    assert torch.equal(out, fmt.round_trip(out))
    wrapped.remove_hooks()
    plain = net.features[1](torch.randn(2, 8, 8, 8) + 0.123)
    assert not torch.equal(plain, fmt.round_trip(plain))
