"""The compiled softmax-attention kernel (testbed/model/kernel/softmax_attention.cpp) against the
literal formula (``direct_forward``) in autograd: loss, every gradient and the prompts' gradient in
float32 and float64, both parameterizations, odd sizes; a 300-step Adam trajectory; the autograd
fallback without the library; and the run ids of softmax runs."""

from __future__ import annotations

import copy

import pytest
import torch

from testbed.engine.loop import training_step
from testbed.experiment import cache
from testbed.experiment.cache import identity, run_id
from testbed.experiment.config import parse_config
from testbed.experiment.runner import plan_runs
from testbed.model.config import ModelConfig
from testbed.model.kernel import softmax_attention
from testbed.model.transformer import LinearTransformer, direct_forward, mse_loss
from testbed.plugins import load_plugins
from testbed.tasks import Batch

from shared_fixtures import TINY

compiled = pytest.mark.skipif(softmax_attention.load() is None, reason="no C++ compiler: the kernel is not built")

@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: these tensors are tiny, and on a busy machine hand-offs between threads made
    the autograd side of the trajectories 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


D, N = 3, 7  # odd sizes: N + 1 = 8 columns, D + 1 = 4 rows
PROMPTS = 75  # not a multiple of the tile (16 floats or 8 doubles with AVX-512, 8 or 4 with AVX2)
# Relative error bounds against the formula in float64 on the same prompts. float32: a few ulps
# (6e-8) through up to 4 layers of softmax and products of about ten terms (measured: 2e-7 for
# predictions, up to 1e-6 for gradients); float64: the same, a billion times tighter (measured 2e-15).
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}


def make(parameterization: str, layers: int, dtype: torch.dtype, init_std: float = 0.5, seed: int = 0):
    """A softmax model (initialized in float32, then cast, as a run's) and prompts for it, drawn in
    float64 and rounded to ``dtype``."""
    config = ModelConfig(layers=layers, parameterization=parameterization, attention="softmax", init_std=init_std)
    model = LinearTransformer(config, D, N, torch.Generator().manual_seed(seed)).to(dtype)
    return model, prompts(PROMPTS, torch.Generator().manual_seed(seed + 1), dtype)


def prompts(count: int, generator: torch.Generator, dtype: torch.dtype) -> Batch:
    """Gaussian regression prompts (d = D, n = N) in ``dtype``."""
    x = torch.randn(count, N + 1, D, generator=generator, dtype=torch.float64)
    y = (x @ torch.randn(count, D, 1, generator=generator, dtype=torch.float64)).squeeze(-1)
    return Batch(x.to(dtype), y.to(dtype))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def formula_gradients(model: LinearTransformer, batch: Batch):
    """Loss, parameter gradients and the gradient to the covariates x through the literal formula
    in float64 autograd, on the same prompts and parameters."""
    reference = copy.deepcopy(model).double()
    x = batch.x.double().clone().requires_grad_(True)  # a copy: batch.x stays a constant
    loss = mse_loss(direct_forward(reference, x, batch.y.double()), batch.target.double())
    loss.backward()
    return loss.detach(), [p.grad for p in reference.parameters()], x.grad


@compiled
@pytest.mark.parametrize("layers", [1, 4])
@pytest.mark.parametrize("parameterization", ["block_sparse", "full"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_loss_and_every_gradient_match_the_formula(dtype, parameterization, layers):
    model, batch = make(parameterization, layers, dtype)
    expected_loss, expected_grads, expected_dx = formula_gradients(model, batch)
    tolerance = TOLERANCE[dtype]
    with torch.no_grad():
        prediction = model(batch.x, batch.y)
    assert "CompiledSoftmaxAttentionStack" in type(model(batch.x, batch.y).grad_fn).__name__  # the kernel ran
    assert prediction.dtype == dtype
    assert relative_error(prediction, direct_forward(copy.deepcopy(model).double(), batch.x.double(), batch.y.double())) < tolerance

    # The training path: loss and gradient in one pass of the kernel.
    loss = model.loss_backward(batch.x, batch.y, batch.target)
    assert abs(loss.item() - expected_loss.item()) <= tolerance * expected_loss.item()
    for (name, p), expected in zip(model.named_parameters(), expected_grads):
        if name == "B":  # the last layer's B cannot reach the prediction: an exact zero
            assert not p.grad[-1].any()
            p, expected = p.grad[:-1], expected[:-1]
            if layers == 1:
                continue
        else:
            p = p.grad
        assert expected.abs().max() > 1e-3, name
        assert relative_error(p, expected) < tolerance, name

    # The forward path (evaluation, Probe.gradient) and its backward, the prompts' gradient included.
    model.zero_grad()
    x = batch.x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        mse_loss(model(x, batch.y), batch.target).backward()
    assert relative_error(x.grad, expected_dx) < tolerance
    for p, expected in zip(model.parameters(), expected_grads):
        torch.testing.assert_close(p.grad.double(), expected, rtol=tolerance, atol=tolerance * expected.abs().max().item())

    # loss_backward with a gradient to the prompts (a feature map, or x itself, below the stack).
    model.zero_grad()
    x = batch.x.detach().clone().requires_grad_(True)
    model.loss_backward(x, batch.y, batch.target)
    assert relative_error(x.grad, expected_dx) < tolerance


@compiled
def test_scores_far_apart_stay_finite():
    """Scores hundreds apart (large parameters) are where an unshifted exp overflows: the kernel
    subtracts each column's maximum, as torch's softmax does."""
    model, batch = make("full", 2, torch.float32, init_std=3.0)
    loss = model.loss_backward(batch.x, batch.y, batch.target)
    expected_loss, expected_grads, _ = formula_gradients(model, batch)
    assert torch.isfinite(loss) and torch.isfinite(expected_loss)
    assert abs(loss.item() - expected_loss.item()) <= 1e-4 * expected_loss.item()
    for p, expected in zip(model.parameters(), expected_grads):
        assert relative_error(p.grad, expected) < 1e-4


def adam_trajectory(dtype: torch.dtype, kernel: bool, steps: int = 300, every: int = 10) -> torch.Tensor:
    """Eval losses (in float64 autograd) every ``every`` of ``steps`` clipped Adam steps taken
    through the engine's step, on the compiled kernel or on the model's plain autograd."""
    model, eval_batch = make("block_sparse", 3, dtype, init_std=0.3)
    model.use_kernel = kernel
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.9, 0.9))
    data = torch.Generator().manual_seed(3)
    losses = []
    for step in range(1, steps + 1):
        training_step(model, optimizer, prompts(64, data, dtype), 1.0)
        if step % every == 0:
            reference = copy.deepcopy(model).double()
            reference.use_kernel = False
            with torch.no_grad():
                prediction = reference(eval_batch.x.double(), eval_batch.y.double())
            losses.append(mse_loss(prediction, eval_batch.target.double()).item())
    return torch.tensor(losses, dtype=torch.float64)


def stepwise_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest relative difference between two loss curves, point by point."""
    return ((a - b).abs() / b.abs()).max().item()


@compiled
def test_300_adam_steps_through_the_kernel_follow_autograd():
    """Over 300 steps the kernel's float32 trajectory stays on the exact (float64 autograd) one as
    closely as autograd's own float32 trajectory does: each step rounds at 6e-8 and Adam's
    normalized steps carry the differences on; measured 4e-8 for both, bounded at 1e-5 (the loss
    moves by about 1e-3 of itself a step: a kernel off by more than rounding leaves the bound within
    a few steps).
    In float64 the kernel stays within 1e-12 (measured 4e-16)."""
    exact = adam_trajectory(torch.float64, kernel=False)
    assert exact[-1] < 0.8 * exact[0]  # it trained: the trajectory goes somewhere
    autograd32 = adam_trajectory(torch.float32, kernel=False)
    kernel32 = adam_trajectory(torch.float32, kernel=True)
    assert stepwise_error(autograd32, exact) < 1e-5
    assert stepwise_error(kernel32, exact) < 1e-5
    assert stepwise_error(kernel32, autograd32) < 1e-5
    assert stepwise_error(adam_trajectory(torch.float64, kernel=True), exact) < 1e-12


@pytest.fixture
def without_the_library(monkeypatch):
    """TESTBED_KERNEL=torch for the libraries loaded after this; the library is forgotten again
    afterwards, so later tests load it anew."""
    monkeypatch.setenv("TESTBED_KERNEL", "torch")
    softmax_attention.load.cache_clear()
    yield
    softmax_attention.load.cache_clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_without_the_library_softmax_trains_through_autograd(without_the_library, dtype):
    assert softmax_attention.load() is None
    model, batch = make("block_sparse", 2, dtype, init_std=0.3)
    assert "CompiledSoftmaxAttentionStack" not in type(model(batch.x, batch.y).grad_fn).__name__
    expected_loss, expected_grads, _ = formula_gradients(model, batch)
    loss = model.loss_backward(batch.x, batch.y, batch.target)
    assert abs(loss.item() - expected_loss.item()) <= TOLERANCE[dtype] * expected_loss.item()
    for p, expected in zip(model.parameters(), expected_grads):
        assert relative_error(p.grad, expected) < TOLERANCE[dtype]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    first = training_step(model, optimizer, batch, 1.0)["loss"]
    for _ in range(30):
        last = training_step(model, optimizer, batch, 1.0)["loss"]
    assert last < 0.9 * first


def run_plan(attention: str, dtype: str, registry):
    raw = copy.deepcopy(TINY)
    raw["model"]["attention"] = attention
    raw["train"]["dtype"] = dtype
    return plan_runs(parse_config(raw, registry), "runs")[0]


def test_softmax_runs_get_run_ids_of_their_own(registry, monkeypatch):
    """Softmax attention moved from autograd to its compiled kernel (new rounding): its runs name
    that arithmetic in their identity (float64's beside the float64 kernel's), so no cached result
    of the autograd path is taken for one of the kernel; linear attention's ids stay as they were."""
    plugins = load_plugins()
    linear, softmax, softmax64 = (run_plan(attention, dtype, registry) for attention, dtype in
                                  (("linear", "float32"), ("softmax", "float32"), ("softmax", "float64")))
    assert "arithmetic" not in identity(linear, plugins)["train"]
    assert identity(softmax, plugins)["train"]["arithmetic"] == "compiled softmax kernel"
    assert identity(softmax64, plugins)["train"]["arithmetic"] == "compiled kernel, compiled softmax kernel"
    plans = (linear, softmax, softmax64)
    ids = [run_id(plan, plugins) for plan in plans]
    monkeypatch.setattr(cache, "ATTENTION_ARITHMETIC", {})  # the ids before the kernel
    before = [run_id(plan, plugins) for plan in plans]
    assert before[0] == ids[0] and before[1] != ids[1] and before[2] != ids[2]
