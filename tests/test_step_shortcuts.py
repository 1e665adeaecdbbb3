"""The training step's shortcuts (issue 15) change no bit: without a gradient for the prompts, the
compiled kernel skips the first layer's share of dLoss/dZ0 and the prompt is copied into place in one
pass; the parameters' gradients and the loss must be exactly those of the full pass, which runs when
the prompts ask for a gradient."""

import pytest
import torch

from testbed.model import kernel as kernels
from testbed.model.config import ModelConfig
from testbed.model.transformer import LinearTransformer

pytestmark = pytest.mark.skipif(kernels.load() is None, reason="no C++ compiler: the kernel is not built")


def _prompts(batch_size: int, n: int, d: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, n + 1, d, generator=generator)
    y = (x @ torch.randn(batch_size, d, 1, generator=generator)).squeeze(-1)
    return x.to(dtype), y.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("parameterization", ["block_sparse", "full"])
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_shortcut_gradients_are_the_full_pass_bit_for_bit(dtype, parameterization, layers):
    config = ModelConfig(layers=layers, parameterization=parameterization, init_std=0.3)
    model = LinearTransformer(config, 5, 20, torch.Generator().manual_seed(0)).to(dtype)
    x, y = _prompts(203, 20, 5, dtype, seed=layers)  # several tiles, the last one padded

    model.zero_grad(set_to_none=False)
    short = model.loss_backward(x, y, y[:, -1])
    short_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=False)
    x_grad = x.clone().requires_grad_(True)  # asks for dLoss/dx: the full backward pass
    full = model.loss_backward(x_grad, y, y[:, -1])

    assert x_grad.grad is not None and torch.count_nonzero(x_grad.grad) > 0
    assert torch.equal(short, full)
    for short_grad, p in zip(short_grads, model.parameters()):
        assert torch.equal(short_grad, p.grad)


def test_shortcut_prompt_rejects_prompts_of_the_wrong_shape():
    model = LinearTransformer(ModelConfig(layers=2), 3, 5, torch.Generator().manual_seed(0))
    x, y = _prompts(8, 6, 3, torch.float32, seed=0)  # one context token too many
    with pytest.raises(ValueError, match="prompts of the wrong shape"):
        model.loss_backward(x, y, y[:, -1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("parameterization", ["block_sparse", "full"])
@pytest.mark.parametrize("start", ["zeros", "none", "accumulated"])
def test_gradients_added_by_hand_are_autograds_bit_for_bit(dtype, parameterization, start):
    # Without hooks the kernel's dP and dQc go into .grad by hand; a hook on every parameter forces
    # the pass through autograd (which must call it), and both must leave the same .grad.
    config = ModelConfig(layers=3, parameterization=parameterization, init_std=0.3)
    x, y = _prompts(203, 20, 5, dtype, seed=4)
    grads, called = [], []
    for hooked in (False, True):
        model = LinearTransformer(config, 5, 20, torch.Generator().manual_seed(0)).to(dtype)
        for p in model.parameters():
            p.grad = None if start == "none" else torch.zeros_like(p) if start == "zeros" else torch.full_like(p, 0.1)
            if hooked:
                p.register_hook(lambda g: called.append(1) or g)
        model.loss_backward(x, y, y[:, -1])
        grads.append([p.grad for p in model.parameters()])
    assert len(called) == 2  # the hooked model went through autograd
    assert all(torch.equal(a, b) for a, b in zip(*grads))
