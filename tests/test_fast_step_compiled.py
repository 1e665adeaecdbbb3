"""The compiled clipping and Adam/AdamW and SGD updates (testbed.native.optimizer) give the bits of
the torch operations engine.fast_step issues otherwise, on random tensors of every size from 1 to 300
(the vector loops' remainders included) with zeros, denormals, huge and tiny values, float32 and
float64, every weight-decay, momentum and nesterov variant, and step counters of both dtypes up to
2**24 and past it; a training step takes the compiled path where it is at hand (no torch element-wise
operation runs), and TESTBED_KERNEL=torch turns it off."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from testbed.engine import fast_step
from testbed.engine.loop import training_step
from testbed.native.optimizer import MAX_TENSORS, adam_step_function, clip_grad_norm_function
from test_fast_step import OPTIMIZERS, Training

TRIALS = 400
needs_library = pytest.mark.skipif(adam_step_function() is None, reason="no C++ compiler (or torch without MKL)")


def sample(rng: np.random.Generator, n: int, dtype: torch.dtype, positive: bool = False) -> torch.Tensor:
    """n values of one of several kinds: normal, wide exponents, denormals, zeros, huge, uniform."""
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    info = np.finfo(np_dtype)
    kind = rng.integers(6)
    with np.errstate(all="ignore"):
        if kind == 0:
            x = rng.standard_normal(n)
        elif kind == 1:
            x = rng.standard_normal(n) * 10.0 ** rng.uniform(-30, 30, n)
        elif kind == 2:
            x = rng.standard_normal(n) * info.tiny * rng.uniform(0, 2, n)
        elif kind == 3:
            x = np.where(rng.random(n) < 0.3, 0.0, rng.standard_normal(n)) * 1e-3
        elif kind == 4:
            x = rng.standard_normal(n) * float(info.max) ** 0.5 * rng.uniform(0, 4)
        else:
            x = rng.uniform(-1, 1, n) * 10.0 ** rng.integers(-8, 8)
        x = x.astype(np_dtype)
    return torch.from_numpy(np.abs(x) if positive else x)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    integer = torch.int32 if a.dtype == torch.float32 else torch.int64
    return a.dtype == b.dtype and torch.equal(a.view(integer), b.view(integer))


def same_float(a: float, b: float) -> bool:
    return a == b or (a != a and b != b)


def random_sizes(rng: np.random.Generator) -> list[int]:
    """One to four tensor sizes from 1 to 300 (vector tails of every length included)."""
    return [int(n) for n in rng.integers(1, 301, rng.integers(1, 5))]


def with_grads(values: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.nn.Parameter]:
    parameters = [torch.nn.Parameter(v.clone()) for v in values]
    for p, g in zip(parameters, grads):
        p.grad = g.clone()
    return parameters


def torch_ops(monkeypatch: pytest.MonkeyPatch, run):
    """``run()`` with fast_step's torch operations (the reference the compiled path must equal)."""
    with monkeypatch.context() as patch:
        patch.setattr(fast_step, "USE_COMPILED", False)
        return run()


def updated_on_both_paths(monkeypatch, values, grads, make_state, update) -> list[list[tuple[torch.Tensor, ...]]]:
    """Per path (compiled, then fast_step's torch operations), per parameter: the parameter, its
    gradient and its state after ``update(state, parameters)`` on fresh copies of ``values`` and
    ``grads``, the state made by ``make_state(parameters)``."""
    sides = []
    for compiled in (True, False):
        parameters = with_grads(values, grads)
        state = make_state(parameters)
        run = lambda: update(state, parameters)  # noqa: E731
        with torch.no_grad():
            run() if compiled else torch_ops(monkeypatch, run)
        sides.append([(p, p.grad, *state[p].values()) for p in parameters])
    return sides


@needs_library
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_compiled_norm_and_clipping_are_the_torch_operations_bits(dtype, monkeypatch):
    rng = np.random.default_rng(1)
    for _ in range(TRIALS):
        sizes = random_sizes(rng)
        grads = [sample(rng, n, dtype) for n in sizes]
        max_norm = float(rng.choice([1.0, 0.5, 1e-3, 1e6, rng.uniform(0, 10)]))
        reference, compiled = with_grads(grads, grads), with_grads(grads, grads)
        expected = torch_ops(monkeypatch, lambda: fast_step.clip_grad_norm(reference, max_norm))
        assert same_float(fast_step.clip_grad_norm(compiled, max_norm), expected)
        assert all(same_bits(p.grad, q.grad) for p, q in zip(compiled, reference))
        expected = torch_ops(monkeypatch, lambda: fast_step.grad_norm(reference))
        assert same_float(fast_step.grad_norm(compiled), expected)


@needs_library
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_compiled_adam_update_is_the_torch_operations_bits(dtype, monkeypatch):
    rng = np.random.default_rng(2)
    for trial in range(TRIALS):
        sizes = random_sizes(rng)
        values, grads = [sample(rng, n, dtype) for n in sizes], [sample(rng, n, dtype) for n in sizes]
        exp_avgs, exp_avg_sqs = [sample(rng, n, dtype) for n in sizes], [sample(rng, n, dtype, True) for n in sizes]
        group = {"betas": (float(rng.choice([0.9, 0.8, 0.5, 0.3, rng.uniform(0, 1)])),
                           float(rng.choice([0.999, 0.99, 0.9, 0.6, rng.uniform(0, 1)]))),
                 "lr": float(rng.choice([1e-3, 0.02, rng.uniform(0, 1)])), "eps": float(rng.choice([1e-8, 1e-6, 1e-3])),
                 "weight_decay": float(rng.choice([0.0, 0.05, 0.1])), "decoupled_weight_decay": trial % 4 < 2,
                 "amsgrad": False}
        counter = (torch.float32, torch.float64)[trial % 3 % 2]
        count = float(rng.choice([0, 1, 99, 2**24 - 1, 2**24, 1e7 + 3, rng.integers(0, 10000)]))
        sides = updated_on_both_paths(
            monkeypatch, values, grads,
            lambda parameters: {p: {"step": torch.tensor(count, dtype=counter), "exp_avg": m.clone(),
                                    "exp_avg_sq": v.clone()} for p, m, v in zip(parameters, exp_avgs, exp_avg_sqs)},
            lambda state, parameters: fast_step._adam_update(state, {**group, "params": parameters}))
        for ours, theirs in zip(*sides):
            assert all(same_bits(a, b) for a, b in zip(ours, theirs)), (trial, group, count, counter)


@needs_library
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_compiled_sgd_update_is_the_torch_operations_bits(dtype, monkeypatch):
    rng = np.random.default_rng(3)
    for trial in range(TRIALS):
        sizes = random_sizes(rng)
        values, grads, buffers = ([sample(rng, n, dtype) for n in sizes] for _ in range(3))
        momentum = float(rng.choice([0.0, 0.9, 0.5, rng.uniform(0, 1)]))
        group = {"lr": float(rng.choice([1e-3, 0.05, rng.uniform(0, 1)])), "momentum": momentum,
                 "weight_decay": float(rng.choice([0.0, 0.01, 0.1])), "dampening": float(rng.choice([0.0, 0.3])),
                 "nesterov": momentum != 0 and trial % 2 == 0}
        sides = updated_on_both_paths(
            monkeypatch, values, grads,
            lambda parameters: {p: {"momentum_buffer": b.clone()} if momentum != 0 else {}
                                for p, b in zip(parameters, buffers)},
            lambda state, parameters: fast_step._sgd_update(state, {**group, "params": parameters}))
        for ours, theirs in zip(*sides):
            assert all(same_bits(a, b) for a, b in zip(ours, theirs)), (trial, group)


def elementwise_operations(run) -> set[str]:
    """The names of the torch element-wise and norm operations that ``run()`` calls."""
    with torch.autograd.profiler.profile() as profile:
        run()
    watched = ("lerp", "addcmul", "addcdiv", "sqrt", "norm", "_foreach_mul", "_foreach_add")
    return {event.name for event in profile.function_events if any(w in event.name for w in watched)}


@needs_library
@pytest.mark.parametrize("name, operation", [("adam", "aten::_foreach_lerp_"), ("adam eps weight decay", "aten::_foreach_lerp_"),
                                             ("adamw", "aten::_foreach_lerp_"), ("sgd", "aten::_foreach_add_"),
                                             ("sgd nesterov weight decay", "aten::_foreach_add_")])
def test_a_training_step_takes_the_compiled_path(name, operation, monkeypatch):
    training = Training(OPTIMIZERS[name], torch.float32, 1.0)
    training.steps(1, fast=True)  # the state exists (momentum buffers): what follows is the steady step
    assert elementwise_operations(lambda: training.steps(1, fast=True)) == set()
    monkeypatch.setattr(fast_step, "USE_COMPILED", False)
    assert {operation, "aten::_foreach_norm"} <= elementwise_operations(lambda: training.steps(1, fast=True))


def test_amsgrad_and_non_contiguous_parameters_take_the_torch_operations():
    training = Training(OPTIMIZERS["adam amsgrad"], torch.float32, 1.0)
    training.steps(1, fast=True)
    assert "aten::_foreach_lerp_" in elementwise_operations(lambda: training.steps(1, fast=True))
    weight = torch.nn.Parameter(torch.ones(4, 3).t())  # a transposed view: not contiguous
    optimizer = torch.optim.Adam([weight], lr=0.1)
    weight.grad = torch.ones(3, 4)
    assert "aten::_foreach_lerp_" in elementwise_operations(lambda: fast_step.step(optimizer))


def test_testbed_kernel_torch_turns_the_compiled_functions_off():
    code = ("from testbed.native.optimizer import adam_step_function, clip_grad_norm_function; "
            "print(adam_step_function() is None, clip_grad_norm_function() is None)")
    completed = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TESTBED_KERNEL": "torch"},
                               capture_output=True, text=True, timeout=120)
    assert completed.stdout.split() == ["True", "True"], completed.stderr


def test_a_counter_that_reaches_zero_raises_as_torchs_step_does(monkeypatch):
    outcomes = []
    for path in ("compiled", "torch ops", "torch's step"):
        weight = torch.nn.Parameter(torch.ones(3))
        optimizer = torch.optim.Adam([weight], lr=0.1)
        weight.grad = torch.ones(3)
        optimizer.step()
        optimizer.state[weight]["step"].fill_(-1.0)  # the next step divides by 1 - beta1 ** 0
        monkeypatch.setattr(fast_step, "USE_COMPILED", path == "compiled")
        with pytest.raises(ZeroDivisionError):
            optimizer.step() if path == "torch's step" else fast_step.step(optimizer)
        outcomes.append([weight.detach().clone(), *optimizer.state[weight].values()])
    for outcome in outcomes[:2]:  # what torch's step left behind when it raised
        assert all(same_bits(a, b) for a, b in zip(outcome, outcomes[2]))


@needs_library
def test_more_tensors_than_the_compiled_clip_holds_are_clipped_by_torch():
    # the compiled call keeps a norm per tensor on its stack: past MAX_TENSORS fast_step takes torch's
    # operations, and the call itself refuses them rather than writing past its array
    grads = [torch.full((3,), float(k)) for k in range(MAX_TENSORS + 1)]
    reference, ours = with_grads(grads, grads), with_grads(grads, grads)
    expected = float(torch.nn.utils.clip_grad_norm_(reference, 1.0))
    assert same_float(fast_step.clip_grad_norm(ours, 1.0), expected)
    assert all(same_bits(p.grad, q.grad) for p, q in zip(ours, reference))
    with pytest.raises(ValueError, match=f"at most {MAX_TENSORS} tensors"):
        clip_grad_norm_function()([p.grad for p in ours], 1.0)
