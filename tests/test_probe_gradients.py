"""Probe.gradients: many minibatch gradients at one point through the model's training path (the
compiled kernel where it covers the model), equal to Probe.autograd_gradient up to float rounding, drawn lazily
and without touching the probe."""

from __future__ import annotations

import pytest
import torch

from testbed import Probe
from testbed.engine.seeds import generator
from testbed.model import kernel as kernels
from testbed.model.config import ModelConfig
from testbed.model.transformer import LinearTransformer
from helpers import tiny_probe


def float32_probe(registry, parameterization: str) -> Probe:
    """A float32 probe (the compiled kernel's precision) of the gamma task, d=3, n=6, L=3."""
    task = registry.get("task", "gamma", "task").factory(d=3, n=6)
    config = ModelConfig(layers=3, parameterization=parameterization, init_std=0.3)
    model = LinearTransformer(config, 3, 6, generator(0))
    return Probe.of(model, task, task.sample(64, generator(99)), train_batch_size=64, seed=1)


@pytest.mark.skipif(kernels.load() is None, reason="no C++ compiler: the kernel is not built")
@pytest.mark.parametrize("parameterization", ["block_sparse", "full"])
def test_gradients_through_the_kernel_agree_with_gradient(registry, parameterization):
    probe = float32_probe(registry, parameterization)
    batches = [probe.sample(size, generator(7)) for size in (64, 64, 13)]
    fast = list(probe.gradients(batches))
    assert len(fast) == 3
    for batch, g in zip(batches, fast):
        expected = probe.autograd_gradient(batch=batch)
        assert g.shape == expected.shape == probe.params.shape and g.dtype == torch.float32
        assert float(expected.abs().max()) > 1e-3  # not a degenerate (all-zero) point
        torch.testing.assert_close(g, expected, rtol=1e-5, atol=1e-7)


def test_gradients_in_float64_and_at_another_point(registry):
    probe = tiny_probe(registry, "full")
    theta = probe.params + 0.1
    batch = probe.sample(32, generator(3))
    batch = type(batch)(batch.x.double(), batch.y.double())
    (g,) = probe.gradients([batch], theta)
    torch.testing.assert_close(g, probe.autograd_gradient(theta, batch), rtol=1e-12, atol=1e-14)
    (at_params,) = probe.gradients([batch])
    assert not torch.equal(g, at_params)


def test_gradients_draw_each_batch_only_when_asked_and_leave_the_probe_alone(registry):
    probe = float32_probe(registry, "block_sparse")
    params, weights = probe.params.clone(), [p.detach().clone() for p in probe.model.parameters()]
    drawn = []

    def batches():
        for k in range(3):
            drawn.append(k)
            yield probe.sample(64, generator(k))

    gradients = probe.gradients(batches())
    assert drawn == []
    next(gradients)
    assert drawn == [0]
    rest = list(gradients)
    assert drawn == [0, 1, 2] and len(rest) == 2
    assert torch.equal(probe.params, params)
    assert all(torch.equal(p, w) and p.grad is None for p, w in zip(probe.model.parameters(), weights))
