"""Tests of the Gaussian-mixture task and the update-cosine diagnostic, through testbed.testing and
testbed's public API only."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import testbed
from testbed.testing import load_plugins, run_tiny, tiny_config, tiny_probe, with_update
from testbed_mixture import GaussianMixtureTask, UpdateCosine, plugin


@pytest.fixture(scope="module")
def plugins():
    """This plugin beside the built-in ones, under its entry-point name."""
    return load_plugins(named={"mixture": plugin})


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ registration
def test_plugin_registers_a_task_and_a_diagnostic(plugins):
    alone = load_plugins(named={"mixture": plugin}, builtins=False)
    assert alone.names("task") == ["gaussian_mixture"] and alone.names("diagnostic") == ["update_cosine"]
    task, diagnostic = plugins.task("gaussian_mixture"), plugins.diagnostic("update_cosine")
    assert task.plugin == diagnostic.plugin == "mixture"
    assert set(task.options) == {"components", "separation", "std", "means_seed", "label_noise"}
    assert diagnostic.schedule == testbed.Schedule(every=1, stop=201)
    assert [plot.tag for plot in diagnostic.plots] == ["cosine"]


@pytest.mark.parametrize("given", [{"components": 0}, {"std": 0.0}, {"separation": -1.0}, {"mean": 1.0}])
def test_task_options_reject_bad_values(plugins, given):
    with pytest.raises(testbed.ConfigError, match=r"task\.options"):
        plugins.validate("task", "gaussian_mixture", given)


# ------------------------------------------------------------------ the task contract
def test_prompts_have_the_shapes_and_dtype_of_the_contract(plugins):
    task = plugins.build_task("gaussian_mixture", d=4, n=9, options={"components": 3})
    assert isinstance(task, GaussianMixtureTask) and (task.d, task.n) == (4, 9)
    batch = task.sample(5, gen())
    assert batch.x.shape == (5, 10, 4) and batch.y.shape == (5, 10)
    assert batch.x.dtype == batch.y.dtype == torch.float32


def test_draws_only_from_its_generator(plugins):
    task = plugins.build_task("gaussian_mixture", options={"label_noise": 0.1})
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first, second = task.sample(8, gen(7)), task.sample(8, gen(7))
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG untouched
    assert torch.equal(first.x, second.x) and torch.equal(first.y, second.y)
    assert not torch.equal(first.x, task.sample(8, gen(8)).x)


def test_tokens_lie_around_the_fixed_means_in_equal_shares(plugins):
    task = plugins.build_task("gaussian_mixture", d=3, n=50, options={"components": 4, "std": 0.01})
    again = plugins.build_task("gaussian_mixture", d=3, n=50, options={"components": 4, "std": 0.01})
    assert torch.equal(task.means, again.means)  # drawn from means_seed, not from the sampling stream
    torch.testing.assert_close(torch.linalg.vector_norm(task.means, dim=1), torch.full((4,), 2.0))
    x = task.sample(200, gen()).x.reshape(-1, 3)
    distances = torch.cdist(x, task.means)
    assert float(distances.min(dim=1).values.max()) < 0.1
    shares = torch.bincount(distances.argmin(dim=1), minlength=4) / x.shape[0]
    assert torch.allclose(shares, torch.full((4,), 0.25), atol=0.02)  # 10,200 tokens: SE 0.004


def test_labels_are_linear_with_standard_normal_weights(plugins):
    task = plugins.build_task("gaussian_mixture", d=3, n=20)
    batch = task.sample(2000, gen())
    w = torch.linalg.lstsq(batch.x.double(), batch.y.double().unsqueeze(-1)).solution  # (B, d, 1)
    residual = batch.x.double() @ w - batch.y.double().unsqueeze(-1)
    assert float(residual.abs().max()) < 1e-4  # noiseless labels: exactly <w, x>
    w = w.squeeze(-1)
    assert torch.allclose(w.mean(0), torch.zeros(3, dtype=torch.float64), atol=0.1)  # SE 0.022
    assert torch.allclose(w.var(0), torch.ones(3, dtype=torch.float64), atol=0.15)  # SE 0.032


# ------------------------------------------------------------------ the diagnostic on a real Probe
def test_cosine_of_consecutive_updates(plugins):
    diagnostic = plugins.build_diagnostic("update_cosine")
    assert isinstance(diagnostic, UpdateCosine) and diagnostic.needs_update
    stepped = with_update(tiny_probe(init_std=0.3))
    backwards = dataclasses.replace(stepped, next_params=stepped.params - stepped.update)
    assert diagnostic.measure(stepped, 0) == []  # no update before the first
    assert diagnostic.measure(stepped, 1) == [testbed.Scalar("cosine", pytest.approx(1.0))]
    assert diagnostic.measure(backwards, 2) == [testbed.Scalar("cosine", pytest.approx(-1.0))]
    assert diagnostic.measure(stepped, 5) == []  # not consecutive: the step-4 update was not seen


def test_state_dict_round_trip_measures_as_if_never_stopped(plugins):
    probe = with_update(tiny_probe(init_std=0.3), lr=0.1)
    other = with_update(tiny_probe(init_std=0.3, seed=1), lr=0.1)
    first = plugins.build_diagnostic("update_cosine")
    first.measure(probe, 0)
    resumed = plugins.build_diagnostic("update_cosine")
    resumed.load_state_dict(first.state_dict())
    assert resumed.measure(other, 1) == first.measure(other, 1)


# ------------------------------------------------------------------ a tiny experiment with both
def test_a_tiny_experiment_with_the_task_and_the_diagnostic(plugins, tmp_path):
    momentum = {"name": "sgd", "lr": 0.01, "options": {"momentum": 0.9}}
    config = tiny_config(optimizers=[momentum], task="gaussian_mixture", diagnostics=["update_cosine"])
    record = run_tiny(config, tmp_path / "with", plugins).run()
    assert record.status == "completed" and not record.diagnostic_errors
    cosines = record.diagnostics["update_cosine/cosine"]
    assert [step for step, _ in cosines] == list(range(1, 20))  # updates leave steps 0..19
    assert all(-1.0 <= value <= 1.0 for _, value in cosines)
    assert sum(value for _, value in cosines) / len(cosines) > 0.5  # heavy momentum keeps its direction
    without = run_tiny(tiny_config(optimizers=[momentum], task="gaussian_mixture"), tmp_path / "without", plugins)
    assert without.run().eval_losses == record.eval_losses  # the diagnostic leaves training bitwise alone
