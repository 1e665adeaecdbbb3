"""gradient_noise takes its minibatch gradients through Probe.gradients (issue 15): its records agree
with the implementation it replaced, kept below literally, to float rounding, so it draws the same
prompts from the same stream in the same order."""

from __future__ import annotations

import pytest
import torch

from testbed import Histogram, Probe, Scalar
from testbed.engine.seeds import generator
from testbed.model.config import ModelConfig
from testbed.model.transformer import LinearTransformer
from testbed.tasks import InDtype
from testbed_std import noise_stats
from testbed_std.diagnostics import GradientNoise


def reference_noise(probe: Probe, full_batch: int, batch_size: int, samples: int, step: int = 0):
    """The diagnostic's full gradient and noise norms before issue 15, literally: one
    ``probe.gradient`` per chunk of the full batch, then one per minibatch."""
    generator = probe.generator(f"gradient_noise:{step}")
    total, remaining = None, full_batch
    while remaining > 0:
        size = min(batch_size, remaining)
        g = probe.gradient(batch=probe.sample(size, generator)).double() * size
        total = g if total is None else total + g
        remaining -= size
    full = (total / full_batch).to(probe.params.dtype)
    errors = torch.empty(samples, dtype=torch.float64)
    for k in range(samples):
        g = probe.gradient(batch=probe.sample(batch_size, generator))
        errors[k] = torch.linalg.vector_norm((g - full).double())
    return full, errors


def gamma_probe(registry, parameterization: str, dtype: torch.dtype = torch.float32) -> Probe:
    """A probe at initialization of the gamma task (heavy-tailed noise), d=3, n=6, L=3, in ``dtype``
    (prompts cast as a run of that train.dtype casts them)."""
    task = InDtype(registry.get("task", "gamma", "task").factory(d=3, n=6), dtype)
    config = ModelConfig(layers=3, parameterization=parameterization)
    model = LinearTransformer(config, 3, 6, generator(0)).to(dtype)
    return Probe.of(model, task, task.sample(64, generator(99)), train_batch_size=64, seed=1)


PROBES = {
    "float32 block_sparse": lambda registry: gamma_probe(registry, "block_sparse"),
    "float32 full": lambda registry: gamma_probe(registry, "full"),
    "float64 block_sparse": lambda registry: gamma_probe(registry, "block_sparse", torch.float64),
}


@pytest.mark.parametrize("name", PROBES)
def test_records_agree_with_the_per_minibatch_implementation(registry, name):
    probe = PROBES[name](registry)
    # 650 = 10 chunks of 64 and one of 10: a short last chunk, as full_batch allows.
    diagnostic = GradientNoise(full_batch=650, batch_size=None, samples=300, bins=20, tail_fraction=0.1)
    records = diagnostic.measure(probe, step=3)
    full, errors = reference_noise(probe, 650, probe.train_batch_size, 300, step=3)
    (histogram,) = [r for r in records if isinstance(r, Histogram)]
    rtol = 1e-4 if probe.params.dtype == torch.float32 else 1e-10
    assert float(errors.std()) > 0.1 * float(errors.mean())  # noise worth the name
    torch.testing.assert_close(histogram.values, errors, rtol=rtol, atol=0.0)
    values = {r.tag: r.value for r in records if isinstance(r, Scalar)}
    assert values["full_gradient_norm"] == pytest.approx(float(torch.linalg.vector_norm(full)), rel=rtol)
    for tag, expected in noise_stats.summarize(errors, 0.1).items():
        assert values[tag] == pytest.approx(expected, rel=100 * rtol), tag
