"""Tests of the Lion optimizer and its testbed plugin registration."""

from __future__ import annotations

import math

import pytest
import torch

import testbed
from testbed.testing import load_plugins, run_tiny, tiny_config
from testbed_lion import Lion, plugin


def _sign(x: float) -> float:
    return (x > 0) - (x < 0)


def reference_lion(theta, grads, lr, b1, b2, wd):
    """Chen et al. 2023, Algorithm 2, in plain Python on lists: the trajectory of theta."""
    theta, m = list(theta), [0.0] * len(theta)
    trajectory = []
    for g in grads:
        c = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
        theta = [t - lr * (_sign(ci) + wd * t) for t, ci in zip(theta, c)]
        m = [b2 * mi + (1 - b2) * gi for mi, gi in zip(m, g)]
        trajectory.append(theta)
    return trajectory


def test_three_steps_match_hand_computed_update():
    theta0 = [1.0, -2.0, 0.5, 3.0]
    # Coordinate 2's last gradient is tiny and positive: the momentum decides that step's sign.
    # Coordinate 3's first gradient is 0: sign(0) = 0, so only weight decay moves it.
    grads = [[0.5, -1.0, 2.0, 0.0], [-0.1, -1.0, -3.0, 1.0], [-0.2, 2.0, 0.0005, -0.5]]
    lr, b1, b2, wd = 0.1, 0.9, 0.99, 0.5
    expected = reference_lion(theta0, grads, lr, b1, b2, wd)
    # Hand-computed anchors for the reference itself (theta - lr * (sign(c) + wd * theta)):
    assert expected[0][0] == pytest.approx(0.85)  # 1 - 0.1 * (1 + 0.5)
    assert expected[0][3] == pytest.approx(2.85)  # 3 - 0.1 * (0 + 1.5)
    assert expected[1][0] == pytest.approx(0.9075)  # c = 0.9*0.005 + 0.1*(-0.1) < 0
    assert expected[2][0] == pytest.approx(0.962125)
    # c = 0.9 * (-0.0102) + 0.1 * 0.0005 < 0 although g > 0; following g would give 0.3334375.
    assert expected[2][2] == pytest.approx(0.5334375)

    p = torch.tensor(theta0, dtype=torch.float64, requires_grad=True)
    opt = Lion([p], lr=lr, betas=(b1, b2), weight_decay=wd)
    for g, want in zip(grads, expected):
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        assert p.detach().tolist() == pytest.approx(want, abs=1e-12)


def test_param_without_grad_is_untouched():
    a = torch.ones(3, requires_grad=True)
    b = torch.ones(3, requires_grad=True)
    opt = Lion([a, b], lr=0.1, weight_decay=1.0)
    a.grad = torch.ones(3)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(3))
    assert b not in opt.state
    assert torch.allclose(a.detach(), torch.full((3,), 1 - 0.1 * (1 + 1.0)))


def _quadratic():
    torch.manual_seed(0)
    q = torch.randn(5, 5)
    a = q @ q.T + torch.eye(5)  # symmetric positive definite
    b = torch.randn(5)
    x_star = torch.linalg.solve(a, b)

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        # 0.5 (x - x*)^T A (x - x*) is >= 0 with its minimum 0 at x*.
        d = x - x_star
        return 0.5 * d @ a @ d

    return loss_fn


def test_reduces_convex_quadratic_loss():
    loss_fn = _quadratic()
    x = torch.full((5,), 3.0, requires_grad=True)
    opt = Lion([x], lr=0.01, betas=(0.9, 0.99))
    initial = loss_fn(x).item()
    for _ in range(1000):
        opt.zero_grad()
        loss_fn(x).backward()
        opt.step()
    final = loss_fn(x).item()
    assert initial > 10.0
    assert final < 1e-3 * initial


def test_step_with_closure_returns_loss():
    loss_fn = _quadratic()
    x = torch.full((5,), 3.0, requires_grad=True)
    opt = Lion([x], lr=0.05)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn(x)
        loss.backward()
        return loss

    first = opt.step(closure)
    assert math.isclose(first.item(), loss_fn(torch.full((5,), 3.0)).item())
    assert not torch.equal(x.detach(), torch.full((5,), 3.0))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": -1e-3},
        {"betas": (1.0, 0.99)},
        {"betas": (0.9, -0.1)},
        {"betas": (0.9,)},
        {"weight_decay": -0.1},
    ],
)
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        Lion([torch.zeros(2, requires_grad=True)], **kwargs)


def lion_alone():
    """A fresh registry holding only this plugin, under its entry-point name."""
    return load_plugins(named={"lion": plugin}, builtins=False)


def test_plugin_registers_lion_with_options():
    plugins = lion_alone()
    assert plugins.names("optimizer") == ["lion"]
    entry = plugins.optimizer("lion")
    assert entry.plugin == "lion"
    assert set(entry.options) == {"betas", "weight_decay"}
    assert "Lion" in entry.doc
    assert not plugins.needs_closure("lion")

    # The host validates the user's options, then calls factory(params, lr=..., **options).
    assert plugins.validate("optimizer", "lion", {}) == {"betas": [0.9, 0.99], "weight_decay": 0.0}
    params = [torch.zeros(3, requires_grad=True)]
    opt = plugins.build_optimizer("lion", params, lr=1e-3)
    assert isinstance(opt, Lion)
    assert opt.param_groups[0]["lr"] == 1e-3
    assert opt.param_groups[0]["betas"] == (0.9, 0.99)


@pytest.mark.parametrize(
    "given",
    [{"betas": [0.9, 1.5]}, {"betas": [0.9, 1.0]}, {"betas": [0.9]}, {"weight_decay": -1.0}, {"eps": 1e-8}],
)
def test_plugin_options_reject_bad_values(given):
    with pytest.raises(testbed.ConfigError, match=r"optimizers\[0\]\.options"):
        lion_alone().validate("optimizer", "lion", given)


def test_lion_trains_the_tiny_model(tmp_path):
    # Loaded beside the built-in plugins, through pluggy as an installed entry point would be.
    plugins = load_plugins(named={"lion": plugin})
    run = run_tiny(tiny_config(optimizers=[{"name": "lion", "lr": 0.01}], train={"steps": 40}), tmp_path, plugins)
    record = run.run("lion")
    assert record.status == "completed" and record.steps_done == 40
    assert record.eval_losses[-1] < 0.9 * record.eval_losses[0]
