"""The engine's fused loss-and-gradient pass (compiled kernel, tile by tile) against autograd on
the literal formula."""

import pytest
import torch

from testbed.model import kernel as kernels
from testbed.model.config import FeatureMapConfig, ModelConfig
from testbed.model.transformer import LinearTransformer, direct_forward, mse_loss

pytestmark = pytest.mark.skipif(kernels.load() is None, reason="no C++ compiler: the kernel is not built")


@pytest.mark.parametrize("parameterization", ["block_sparse", "full"])
@pytest.mark.parametrize("feature_map", [None, FeatureMapConfig(hidden=(7,))])
@pytest.mark.parametrize("batch_size", [1, 64, 203])  # within one tile, exactly one, several with padding
def test_loss_backward_matches_autograd(parameterization, feature_map, batch_size):
    config = ModelConfig(layers=3, parameterization=parameterization, init_std=0.2, feature_map=feature_map)
    fused = LinearTransformer(config, 4, 9, torch.Generator().manual_seed(0))
    reference = LinearTransformer(config, 4, 9, torch.Generator().manual_seed(0)).double()
    generator = torch.Generator().manual_seed(batch_size)
    x = torch.randn(batch_size, 10, 4, generator=generator)
    y = (x @ torch.randn(batch_size, 4, 1, generator=generator)).squeeze(-1)

    loss = fused.loss_backward(x, y, y[:, -1])
    expected = mse_loss(direct_forward(reference, x.double(), y.double()), y[:, -1].double())
    expected.backward()

    assert loss.shape == () and abs(loss.item() - expected.item()) <= 1e-5 * expected.item()
    for (name, p), q in zip(fused.named_parameters(), reference.parameters()):
        assert p.grad is not None, name
        assert (p.grad.double() - q.grad).abs().max() <= 1e-5 * q.grad.abs().max() + 1e-12, name
    if parameterization == "block_sparse":
        assert torch.count_nonzero(fused.B.grad[-1]) == 0


def test_loss_backward_accumulates_like_backward():
    """Two calls add up, as two loss.backward() calls would."""
    model = LinearTransformer(ModelConfig(init_std=0.2), 3, 5, torch.Generator().manual_seed(1))
    x = torch.randn(40, 6, 3, generator=torch.Generator().manual_seed(2))
    y = x.sum(-1)
    model.loss_backward(x, y, y[:, -1])
    once = model.A.grad.clone()
    model.loss_backward(x, y, y[:, -1])
    assert torch.allclose(model.A.grad, 2 * once)
