"""The training step's Python around the kernel (issue 15) keeps what does not change between calls
(the block-sparse P's padding and constant 1, the corner constant) and walks the parameters once; a
model changed after its first step (a hook, new parameters, another dtype) must still get exactly the
gradients a fresh model gets."""

import pytest
import torch
from torch import nn

from testbed import hookimpl
from testbed.engine.loop import train
from testbed.experiment.config import parse_config
from testbed.experiment.runner import plan_runs
from testbed.model import kernel as kernels
from testbed.model.config import ModelConfig
from testbed.model.transformer import LinearTransformer
from testbed.plugins import load_plugins

pytestmark = pytest.mark.skipif(kernels.load() is None, reason="no C++ compiler: the kernel is not built")

D, N = 5, 20


def _prompts(dtype: torch.dtype, seed: int, batch_size: int = 203) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, N + 1, D, generator=generator)
    y = (x @ torch.randn(batch_size, D, 1, generator=generator)).squeeze(-1)
    return x.to(dtype), y.to(dtype)


def _model(dtype: torch.dtype = torch.float32, parameterization: str = "block_sparse", seed: int = 0) -> LinearTransformer:
    config = ModelConfig(layers=3, parameterization=parameterization, init_std=0.3)
    return LinearTransformer(config, D, N, torch.Generator().manual_seed(seed)).to(dtype)


def _gradients(model: LinearTransformer, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model.loss_backward(x, y, y[:, -1])
    return loss, [p.grad.clone() for p in model.parameters()]


def _autograd_gradients(model: LinearTransformer, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The same loss and gradients through autograd: dLoss/dx asked for forces the full pass."""
    model.zero_grad(set_to_none=True)
    loss = model.loss_backward(x.clone().requires_grad_(True), y, y[:, -1])
    return loss, [p.grad.clone() for p in model.parameters()]


def _same(a: tuple[torch.Tensor, list[torch.Tensor]], b: tuple[torch.Tensor, list[torch.Tensor]]) -> bool:
    return torch.equal(a[0], b[0]) and len(a[1]) == len(b[1]) and all(torch.equal(u, v) for u, v in zip(a[1], b[1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_P_built_by_the_kernel_from_B_with_signed_zeros_gives_autograds_gradients(dtype):
    # la_loss_grad_block_sparse builds P from B as pad + corner does (B + 0: -0.0 becomes +0.0).
    model = _model(dtype)
    with torch.no_grad():
        model.B[0, 0, :2] = torch.tensor([-0.0, 0.0])
        model.B[1, :, 0] = -0.0
    x, y = _prompts(dtype, seed=7)
    kernel, autograd = _gradients(model, x, y), _autograd_gradients(model, x, y)
    assert _same(kernel, autograd)
    assert all(torch.equal(torch.signbit(a), torch.signbit(b)) for a, b in zip(kernel[1], autograd[1]))


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_a_grad_is_added_to_in_place_whatever_its_layout(layout):
    # The kernel adds to a contiguous .grad itself; a strided one is added to by torch.
    x, y = _prompts(torch.float32, seed=8)
    reference, model = _model(), _model()
    for p in reference.parameters():
        p.grad = torch.full_like(p, 0.25)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.25)
        if layout == "transposed":
            p.grad = p.grad.transpose(1, 2).contiguous().transpose(1, 2)
            assert not p.grad.is_contiguous()
    kept = [p.grad for p in model.parameters()]
    versions = [g._version for g in kept]
    reference.loss_backward(x, y, y[:, -1])
    model.loss_backward(x, y, y[:, -1])
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(reference.parameters(), model.parameters()))
    assert all(p.grad is g for p, g in zip(model.parameters(), kept))  # added in place, as autograd adds
    assert all(g._version > v for g, v in zip(kept, versions))  # and marked changed, as torch's add_ marks it


def test_a_target_of_any_stride_is_read_as_its_contiguous_copy():
    model = _model()
    x, y = _prompts(torch.float32, seed=9)
    spread = torch.zeros(3 * len(y))
    spread[::3] = y[:, -1]
    strided = _gradients(model, x, y)  # y[:, -1]: stride n+1
    model.zero_grad(set_to_none=True)
    every_third = model.loss_backward(x, y, spread[::3]), [p.grad.clone() for p in model.parameters()]
    assert _same(strided, every_third)
    assert _same(strided, _autograd_gradients(model, x, y))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("parameterization", ["block_sparse", "full"])
def test_repeated_steps_follow_the_weights_as_they_change(dtype, parameterization):
    # The kept P must be B's of this call, not of the first: every step is autograd's bit for bit.
    model = _model(dtype, parameterization)
    x, y = _prompts(dtype, seed=1)
    for _ in range(3):
        assert torch.isfinite(_gradients(model, x, y)[0])
        assert _same(_gradients(model, x, y), _autograd_gradients(model, x, y))
        with torch.no_grad():
            for p in model.parameters():
                p.sub_(0.05 * p.grad / p.grad.norm())


def test_a_hook_registered_after_the_first_step_is_called():
    model, reference = _model(), _model()
    x, y = _prompts(torch.float32, seed=2)
    _gradients(model, x, y)  # the first step: no hook, the gradients added by hand
    called = []
    model.A.register_hook(lambda grad: called.append(grad) or grad)
    assert _same(_gradients(model, x, y), _gradients(reference, x, y))
    assert len(called) == 1  # the hooked step went through autograd


def test_parameters_reassigned_after_the_first_step_are_used():
    model = _model(seed=0)
    x, y = _prompts(torch.float32, seed=3)
    _gradients(model, x, y)
    other = _model(seed=1)
    model.A, model.B = nn.Parameter(other.A.detach().clone()), nn.Parameter(other.B.detach().clone())
    assert _same(_gradients(model, x, y), _gradients(other, x, y))


def test_a_model_moved_to_float64_after_the_first_step_computes_in_float64():
    model = _model(torch.float32)
    _gradients(model, *_prompts(torch.float32, seed=4))
    model.to(torch.float64)
    x, y = _prompts(torch.float64, seed=4)
    loss, grads = _gradients(model, x, y)
    assert loss.dtype == torch.float64 and all(g.dtype == torch.float64 for g in grads)
    assert _same((loss, grads), _gradients(_model(torch.float64), x, y))
    model.to(torch.float32)  # and back: the float32 results again
    x, y = _prompts(torch.float32, seed=4)
    assert _same(_gradients(model, x, y), _gradients(_model(torch.float32), x, y))


def test_B_of_another_shape_is_an_error_not_a_broadcast():
    model = _model()
    x, y = _prompts(torch.float32, seed=5)
    model.B = nn.Parameter(torch.zeros(3, 1, D))
    with pytest.raises(ValueError, match=r"B is a float32 tensor of shape \(3, 1, 5\)"):
        model.loss_backward(x, y, y[:, -1])


class _StepCounter:
    """Counts the steps on_step_end sees."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    @hookimpl
    def on_step_end(self, run, step, metrics) -> None:
        self.steps.append(step)


def test_the_loop_calls_on_step_end_of_a_plugin_registered_during_the_run(tmp_path):
    # The loop skips pluggy's call while no plugin implements on_step_end; it must look every step.
    plugins = load_plugins()
    counter = _StepCounter()

    def register_at_step_2(event: dict) -> None:  # train's report callback: mid-loop, at an evaluation
        if event["event"] == "eval" and event["step"] == 2:
            plugins.manager.register(counter)

    raw = {"name": "late", "task": {"name": "gaussian", "d": 3, "n": 6}, "model": {"layers": 2},
           "optimizers": [{"name": "sgd", "lr": 0.01}], "train": {"steps": 5, "batch_size": 16, "seeds": [0]},
           "eval": {"every": 2, "batch_size": 16}}
    (plan,) = plan_runs(parse_config(raw, plugins.registry), tmp_path / "late")
    assert train(plan, plugins, report=register_at_step_2).status == "completed"
    assert counter.steps == [2, 3, 4, 5]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("attention", ["linear", "softmax"])
def test_evaluation_prompt_copied_into_place_predicts_bit_for_bit(dtype, attention):
    # Without a gradient for the prompts the compiled forward gets the prompt copied into place in one
    # pass; with one it gets prompt()'s concatenations: the same entries, the same predictions.
    config = ModelConfig(layers=3, attention=attention, init_std=0.3)
    model = LinearTransformer(config, D, N, torch.Generator().manual_seed(0)).to(dtype)
    x, y = _prompts(dtype, seed=6)
    with torch.no_grad():
        evaluated = model(x, y)
    assert torch.equal(evaluated, model(x.clone().requires_grad_(True), y))
