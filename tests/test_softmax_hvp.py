"""Hessian-vector products and Hessians of softmax-attention models through the compiled kernel
(sa_hvp: forward-over-reverse on value and tangent lanes), against torch.func jvp(grad) on the
plain-autograd path (the literal formula), and the torch.func fallback without the library."""

import pytest
import torch
from torch.func import grad, jacrev, jvp

from testbed.engine.probe import Probe
from testbed.model.config import FeatureMapConfig, ModelConfig
from testbed.model.kernel import softmax_attention
from testbed.model.kernel.second_order import kernel_hvp, kernel_supports
from testbed.model.transformer import LinearTransformer
from testbed.tasks import Batch

pytestmark = pytest.mark.skipif(softmax_attention.load() is None, reason="no C++ compiler: the kernel is not built")

TOLERANCE = {torch.float32: 2e-5, torch.float64: 1e-12}
FLOAT32_EXP_OVERFLOW = 88.7  # exp of a larger score is inf in float32: the column-max shift must act


def make(parameterization: str, layers: int, dtype: torch.dtype, batch_size: int = 37, d: int = 3, n: int = 7,
         init_std: float = 0.3, feature_map: FeatureMapConfig | None = None):
    """A probe of a softmax model of odd sizes at a random point, on ``batch_size`` prompts (37: not a
    multiple of any tile). The prompts are drawn in float32 and converted, so a float32 and a float64
    probe of the same arguments are the same problem."""
    config = ModelConfig(layers=layers, parameterization=parameterization, attention="softmax",
                         init_std=init_std, feature_map=feature_map)
    model = LinearTransformer(config, d, n, torch.Generator().manual_seed(layers)).to(dtype)
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(batch_size, n + 1, d, generator=generator)
    y = (x @ torch.randn(batch_size, d, 1, generator=generator)).squeeze(-1)
    batch = Batch(x.to(dtype), y.to(dtype))
    return model, batch, Probe.of(model, None, batch, batch_size, 0)


def torch_func_hvp(probe: Probe, vector: torch.Tensor) -> torch.Tensor:
    """H v by forward-over-reverse in torch.func on the plain-autograd path: the reference."""
    return jvp(grad(probe.loss_function()), (probe.params,), (vector,))[1]


def directions(count: int, probe: Probe) -> torch.Tensor:
    return torch.randn(count, probe.params.numel(), generator=torch.Generator().manual_seed(count),
                       dtype=probe.params.dtype)


def largest_first_layer_score(model: LinearTransformer, batch: Batch) -> float:
    """max |Z^T Q Z| of the first layer over the batch: the logits its softmax exponentiates."""
    with torch.no_grad():
        Z = model.prompt(batch.x, batch.y)
        _, Q = model.attention_matrices()
        return float((Z.transpose(1, 2) @ Q[0] @ Z).abs().max())


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().max()
    assert scale > 0
    return float((actual - expected).abs().max() / scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("parameterization", ["block_sparse", "full"])
@pytest.mark.parametrize("layers", [1, 4])
@pytest.mark.parametrize("count", [1, 3, 8, 20])
def test_directions_match_torch_func(dtype, parameterization, layers, count):
    """1, 3, 8 and 20 directions (20: passes of 8, 8 and 4) in one call, each against torch.func."""
    model, batch, probe = make(parameterization, layers, dtype)
    assert kernel_supports(model, batch)
    vectors = directions(count, probe)
    products = kernel_hvp(model, batch, probe.params, vectors)
    expected = torch.stack([torch_func_hvp(probe, v) for v in vectors])
    assert products.dtype == dtype and products.shape == expected.shape
    assert relative_error(products, expected) <= TOLERANCE[dtype]


@pytest.mark.parametrize("parameterization", ["block_sparse", "full"])
@pytest.mark.parametrize("layers", [1, 4])
def test_large_logits(parameterization, layers):
    """Scores beyond float32's exponential range (the column-max shift keeps exp finite): float64 equals
    torch.func to float64 rounding; float32, against the float64 products, errs no more than torch.func's
    own float32 products do (the problem is ill-conditioned here: both lose digits)."""
    exact_model, exact_batch, exact_probe = make(parameterization, layers, torch.float64, init_std=10.0)
    assert largest_first_layer_score(exact_model, exact_batch) > FLOAT32_EXP_OVERFLOW
    vectors = directions(3, exact_probe)
    exact = torch.stack([torch_func_hvp(exact_probe, v) for v in vectors])
    assert relative_error(kernel_hvp(exact_model, exact_batch, exact_probe.params, vectors), exact) <= 1e-10
    model, batch, probe = make(parameterization, layers, torch.float32, init_std=10.0)
    products = kernel_hvp(model, batch, probe.params, vectors.float()).double()
    torch_func = torch.stack([torch_func_hvp(probe, v) for v in vectors.float()]).double()
    assert torch.isfinite(products).all()
    assert relative_error(products, exact) <= 4 * relative_error(torch_func, exact) + 1e-6


def counting(name: str):
    """A context in which calls to the softmax library's entry point ``name`` are counted (by their
    number of directions)."""
    library = softmax_attention.load()
    entry, calls = getattr(library, name), []

    def counted(*arguments):
        calls.append(arguments[11])  # the number of directions
        return entry(*arguments)

    class Counting:
        def __enter__(self):
            setattr(library, name, counted)
            return calls

        def __exit__(self, *_):
            setattr(library, name, entry)

    return Counting()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("parameterization", ["block_sparse", "full"])
def test_probe_hvp_takes_the_kernel(dtype, parameterization):
    model, batch, probe = make(parameterization, 3, dtype, batch_size=83)
    vector = directions(1, probe)[0]
    suffix = {torch.float32: "f32", torch.float64: "f64"}[dtype]
    with counting(f"sa_hvp_{suffix}") as calls:
        product = probe.hvp(vector)
    assert calls == [1]
    assert relative_error(product, torch_func_hvp(probe, vector)) <= TOLERANCE[dtype]


@pytest.mark.parametrize("parameterization", ["block_sparse", "full"])
def test_probe_hessian_takes_the_kernel(parameterization):
    """The full Hessian from the kernel's products (the last layer's inert rows skipped) equals
    torch.func's reverse-over-reverse Hessian."""
    model, batch, probe = make(parameterization, 2, torch.float64, batch_size=45)
    with counting("sa_hvp_f64") as calls:
        hessian = probe.hessian()
    active = int((~model.inert_parameters()).sum())
    assert sum(calls) == active < probe.params.numel()
    expected = jacrev(grad(probe.loss_function()))(probe.params)
    assert torch.equal(hessian, hessian.T)
    assert relative_error(hessian, expected) <= TOLERANCE[torch.float64]


def test_a_feature_map_takes_torch_func():
    """The softmax kernel carries no feature map's tangents: such a model is not covered."""
    model, batch, probe = make("full", 2, torch.float64, feature_map=FeatureMapConfig(hidden=(4,)))
    assert not kernel_supports(model, batch)
    vector = directions(1, probe)[0]
    with counting("sa_hvp_f64") as calls:
        product = probe.hvp(vector)
    assert calls == []
    assert torch.equal(product, torch_func_hvp(probe, vector))


@pytest.fixture
def forgets_the_library():
    """The softmax library is loaded anew by the tests after this one (which switches it off)."""
    yield
    softmax_attention.load.cache_clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_without_the_library_torch_func_computes_them(dtype, monkeypatch, forgets_the_library):
    """With TESTBED_KERNEL=torch the probe's products and Hessian come from torch.func and equal the
    kernel's (taken before the library is switched off)."""
    model, batch, probe = make("block_sparse", 2, dtype, batch_size=40)
    vector = directions(1, probe)[0]
    kernel_product, kernel_hessian = probe.hvp(vector), probe.hessian()
    monkeypatch.setenv("TESTBED_KERNEL", "torch")
    softmax_attention.load.cache_clear()
    assert softmax_attention.load() is None and not kernel_supports(model, batch)
    assert relative_error(probe.hvp(vector), kernel_product) <= TOLERANCE[dtype]
    assert relative_error(probe.hessian(), kernel_hessian) <= TOLERANCE[dtype]
