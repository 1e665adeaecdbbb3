"""The standard optimizer plugins build the torch optimizers they promise, with the given options,
and the engine clips the global gradient norm before every step for every optimizer."""

import math

import pytest
import torch

from testbed.engine.specs import OptimizerSpec
from testbed.engine.build import build_optimizer
from testbed.engine.loop import _non_finite, training_step
from testbed.options import validate_options
from testbed.tasks import Batch


def build(registry, name, lr, options, params):
    entry = registry.get("optimizer", name, "test")
    return build_optimizer(OptimizerSpec(name, name, lr, validate_options(entry.options, options, "test")),
                           registry, params)


@pytest.mark.parametrize(("name", "options", "cls", "expected"), [
    ("sgd", {"momentum": 0.9, "nesterov": True}, torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    ("adam", {"betas": [0.9, 0.9]}, torch.optim.Adam, {"betas": (0.9, 0.9), "eps": 1e-8, "weight_decay": 0.0}),
    ("adamw", {}, torch.optim.AdamW, {"weight_decay": 0.01, "betas": (0.9, 0.999)}),
    ("torch", {"class": "RMSprop", "kwargs": {"alpha": 0.8}}, torch.optim.RMSprop, {"alpha": 0.8}),
    ("torch", {"class": "Adam", "kwargs": {"betas": [0.5, 0.6]}}, torch.optim.Adam, {"betas": (0.5, 0.6)}),
])
def test_standard_optimizers(registry, name, options, cls, expected):
    params = [torch.nn.Parameter(torch.zeros(3))]
    optimizer = build(registry, name, 0.05, options, params)
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.05
    for key, value in expected.items():
        assert group[key] == value


def test_adam_matches_torch_adam_step_by_step(registry):
    """The plugin adds nothing to torch's Adam: same updates on the same gradients."""
    ours = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    reference = torch.nn.Parameter(ours.detach().clone())
    optimizer = build(registry, "adam", 0.1, {"betas": [0.9, 0.9]}, [ours])
    torch_adam = torch.optim.Adam([reference], lr=0.1, betas=(0.9, 0.9))
    for k in range(5):
        for p, opt in ((ours, optimizer), (reference, torch_adam)):
            opt.zero_grad()
            (p.square().sum() * (k + 1)).backward()
            opt.step()
    assert torch.equal(ours, reference)


class Quadratic(torch.nn.Module):
    """A model whose loss gradient is as large as we like: prediction = scale * <w, x_q>."""

    def __init__(self, scale: float):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(4))
        self.scale = scale

    def forward(self, x, y):
        return self.scale * x[:, -1] @ self.w


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_clipping_before_every_step(registry, name):
    model = Quadratic(scale=100.0)
    optimizer = build(registry, name, 0.01, {}, model.parameters())
    batch = Batch(torch.ones(8, 3, 4), torch.zeros(8, 3))
    measured = training_step(model, optimizer, batch, clip_grad_norm=1.0)
    assert measured["grad_norm"] > 100  # the norm before clipping is reported
    clipped = torch.linalg.vector_norm(model.w.grad)
    assert math.isclose(float(clipped), 1.0, rel_tol=1e-5)


def test_no_clipping_when_off(registry):
    model = Quadratic(scale=100.0)
    optimizer = build(registry, "sgd", 0.01, {}, model.parameters())
    measured = training_step(model, optimizer, Batch(torch.ones(8, 3, 4), torch.zeros(8, 3)), clip_grad_norm=None)
    assert math.isclose(float(torch.linalg.vector_norm(model.w.grad)), measured["grad_norm"], rel_tol=1e-6)
    assert measured["grad_norm"] > 100


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_an_overflowing_gradient_norm_is_a_zero_step_not_divergence(registry, name):
    # loss 16 * 1e36 and gradient entries 8e36 are finite float32, but the norm's sum of squares
    # overflows: torch's clipping scales the gradient by 1 / inf = 0 and the step goes on
    model = Quadratic(scale=1e18)
    optimizer = build(registry, name, 0.01, {"momentum": 0.9} if name == "sgd" else {}, model.parameters())
    measured = training_step(model, optimizer, Batch(torch.ones(8, 3, 4), torch.zeros(8, 3)), clip_grad_norm=1.0)
    assert math.isfinite(measured["loss"]) and measured["grad_norm"] == math.inf
    assert _non_finite(measured, optimizer) is None
    assert torch.equal(model.w.grad, torch.zeros(4)) and torch.equal(model.w.detach(), torch.ones(4))
    assert optimizer.state[model.w]  # the optimizer did take its (zero) step


def test_a_non_finite_loss_diverges_without_a_step(registry):
    model = Quadratic(scale=1e20)  # loss 16e40 overflows
    optimizer = build(registry, "adam", 0.01, {}, model.parameters())
    measured = training_step(model, optimizer, Batch(torch.ones(8, 3, 4), torch.zeros(8, 3)), clip_grad_norm=1.0)
    assert measured["loss"] == math.inf and _non_finite(measured, optimizer) == "loss"
    assert not optimizer.state and torch.equal(model.w.detach(), torch.ones(4))
