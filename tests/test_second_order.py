"""The compiled kernel's Hessian-vector products (forward-over-reverse) against torch.func on the
plain-autograd path."""

import pytest
import torch
from torch.func import grad, jacrev

from testbed.model import kernel as kernels
from testbed.engine.probe import Probe
from testbed.model.transformer import LinearTransformer
from testbed.model.config import FeatureMapConfig, ModelConfig
from testbed.model.kernel.second_order import kernel_hessian, kernel_hvp, kernel_supports
from testbed.tasks import Batch

pytestmark = pytest.mark.skipif(kernels.load() is None, reason="no C++ compiler: the kernel is not built")


def make(parameterization: str, layers: int, batch_size: int = 37):
    model = LinearTransformer(ModelConfig(layers=layers, parameterization=parameterization, init_std=0.3),
                              3, 6, torch.Generator().manual_seed(layers))
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(batch_size, 7, 3, generator=generator)
    y = (x @ torch.randn(batch_size, 3, 1, generator=generator)).squeeze(-1)
    batch = Batch(x, y)
    probe = Probe.of(model, None, batch, batch_size, 0)
    reference = jacrev(grad(probe.loss_function(batch)))(probe.params)
    return model, batch, probe, reference


@pytest.mark.parametrize("parameterization", ["block_sparse", "full"])
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_kernel_hessian_matches_torch_func(parameterization, layers):
    model, batch, probe, reference = make(parameterization, layers)
    assert kernel_supports(model, batch)
    H = kernel_hessian(model, batch, probe.params)
    scale = reference.abs().max()
    assert scale > 0
    assert (H - reference).abs().max() <= 1e-5 * scale
    assert torch.equal(H, H.T)
    inert = model.inert_parameters()
    assert inert.sum() == (9 if parameterization == "block_sparse" else 12)
    assert torch.count_nonzero(H[inert]) == 0 and torch.count_nonzero(reference[inert]) == 0


@pytest.mark.parametrize("parameterization", ["block_sparse", "full"])
def test_kernel_hvp_matches_hessian_times_vector(parameterization):
    model, batch, probe, reference = make(parameterization, 3, batch_size=50)
    vectors = torch.randn(3, probe.params.numel(), generator=torch.Generator().manual_seed(1))
    products = kernel_hvp(model, batch, probe.params, vectors)
    expected = vectors @ reference  # H is symmetric; float32 on both sides
    assert (products - expected).abs().max() <= 1e-4 * expected.abs().max()
    single = probe.hvp(vectors[0])  # the probe's path: the kernel for one direction
    assert (single - expected[0]).abs().max() <= 1e-4 * expected.abs().max()


def test_many_directions_run_in_chunks():
    """More than one chunk of 128 tangents (the full parameterization with d = 7 has 256 active
    directions of 2 * 3 * 64 = 384 parameters) gives the same products as one by one."""
    model = LinearTransformer(ModelConfig(layers=3, parameterization="full", init_std=0.2), 7, 5,
                              torch.Generator().manual_seed(0))
    x = torch.randn(9, 6, 7, generator=torch.Generator().manual_seed(2))
    batch = Batch(x, x.sum(-1))
    probe = Probe.of(model, None, batch, 9, 0)
    directions = torch.randn(130, probe.params.numel(), generator=torch.Generator().manual_seed(3))
    together = kernel_hvp(model, batch, probe.params, directions)
    one_by_one = torch.stack([kernel_hvp(model, batch, probe.params, v[None])[0] for v in directions[:3]])
    assert torch.allclose(together[:3], one_by_one, rtol=1e-5, atol=1e-6 * together.abs().max())
    reference = jacrev(grad(probe.loss_function(batch)))(probe.params)
    assert (together - directions @ reference).abs().max() <= 1e-4 * together.abs().max()


def test_kernel_not_used_where_it_does_not_apply():
    # softmax attention's kernel takes no feature map's tangents (tests/test_softmax_hvp.py)
    model = LinearTransformer(ModelConfig(attention="softmax", feature_map=FeatureMapConfig(hidden=(4,))), 3, 6,
                              torch.Generator().manual_seed(0))
    batch = Batch(torch.randn(4, 7, 3), torch.randn(4, 7))
    assert not kernel_supports(model, batch)
    float64 = LinearTransformer(ModelConfig(), 3, 6, torch.Generator()).double()
    assert kernel_supports(float64, Batch(batch.x.double(), batch.y.double()))
    assert not kernel_supports(float64, batch)  # float32 prompts for a float64 model
    assert not kernel_supports(LinearTransformer(ModelConfig(), 3, 6, torch.Generator()).half(),
                               Batch(batch.x.half(), batch.y.half()))
