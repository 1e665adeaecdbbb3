"""One training step (engine.loop.training_step): the global gradient norm is measured and clipped
before every step for every optimizer; an overflowing norm is a zero step, a non-finite loss a
divergence without a step."""

import math

import pytest
import torch

from testbed.engine.loop import _non_finite, training_step
from testbed.tasks import Batch
from helpers import make_optimizer


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
    optimizer = make_optimizer(registry, name, 0.01, {}, model.parameters())
    batch = Batch(torch.ones(8, 3, 4), torch.zeros(8, 3))
    measured = training_step(model, optimizer, batch, clip_grad_norm=1.0)
    assert measured["grad_norm"] > 100  # the norm before clipping is reported
    clipped = torch.linalg.vector_norm(model.w.grad)
    assert math.isclose(float(clipped), 1.0, rel_tol=1e-5)


def test_no_clipping_when_off(registry):
    model = Quadratic(scale=100.0)
    optimizer = make_optimizer(registry, "sgd", 0.01, {}, model.parameters())
    measured = training_step(model, optimizer, Batch(torch.ones(8, 3, 4), torch.zeros(8, 3)), clip_grad_norm=None)
    assert math.isclose(float(torch.linalg.vector_norm(model.w.grad)), measured["grad_norm"], rel_tol=1e-6)
    assert measured["grad_norm"] > 100


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_an_overflowing_gradient_norm_is_a_zero_step_not_divergence(registry, name):
    # loss 16 * 1e36 and gradient entries 8e36 are finite float32, but the norm's sum of squares
    # overflows: torch's clipping scales the gradient by 1 / inf = 0 and the step goes on
    model = Quadratic(scale=1e18)
    optimizer = make_optimizer(registry, name, 0.01, {"momentum": 0.9} if name == "sgd" else {}, model.parameters())
    measured = training_step(model, optimizer, Batch(torch.ones(8, 3, 4), torch.zeros(8, 3)), clip_grad_norm=1.0)
    assert math.isfinite(measured["loss"]) and measured["grad_norm"] == math.inf
    assert _non_finite(measured, optimizer) is None
    assert torch.equal(model.w.grad, torch.zeros(4)) and torch.equal(model.w.detach(), torch.ones(4))
    assert optimizer.state[model.w]  # the optimizer did take its (zero) step


def test_a_non_finite_loss_diverges_without_a_step(registry):
    model = Quadratic(scale=1e20)  # loss 16e40 overflows
    optimizer = make_optimizer(registry, "adam", 0.01, {}, model.parameters())
    measured = training_step(model, optimizer, Batch(torch.ones(8, 3, 4), torch.zeros(8, 3)), clip_grad_norm=1.0)
    assert measured["loss"] == math.inf and _non_finite(measured, optimizer) == "loss"
    assert not optimizer.state and torch.equal(model.w.detach(), torch.ones(4))
