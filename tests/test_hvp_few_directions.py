"""Hessian-vector products for a few directions (the compiled kernel's real-valued path, vectorized
over prompts) and the probe's gradient through the kernel, against torch.func and autograd on the
plain-autograd path."""

import pytest
import torch
from torch.func import grad, jvp

from testbed.engine.probe import Probe
from testbed.experiment import cache
from testbed.experiment.cache import identity, run_id
from testbed.experiment.config import parse_config
from testbed.experiment.runner import plan_runs
from testbed.model import kernel as kernels
from testbed.model.config import ModelConfig
from testbed.model.kernel.second_order import kernel_hvp, kernel_supports
from testbed.model.transformer import LinearTransformer
from testbed.plugins import load_plugins
from testbed.tasks import Batch

pytestmark = pytest.mark.skipif(kernels.load() is None, reason="no C++ compiler: the kernel is not built")

TOLERANCE = {torch.float32: 2e-5, torch.float64: 1e-12}


def make(parameterization: str, layers: int, dtype: torch.dtype, batch_size: int, d: int = 3, n: int = 7):
    """A probe at a random point of an odd-sized model on ``batch_size`` prompts (not a multiple of any tile)."""
    model = LinearTransformer(ModelConfig(layers=layers, parameterization=parameterization, init_std=0.3),
                              d, n, torch.Generator().manual_seed(layers)).to(dtype)
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(batch_size, n + 1, d, generator=generator, dtype=dtype)
    y = (x @ torch.randn(batch_size, d, 1, generator=generator, dtype=dtype)).squeeze(-1)
    batch = Batch(x, y)
    probe = Probe.of(model, None, batch, batch_size, 0)
    # One forward pass outside torch.func first: the model caches a constant (transformer._corner) on
    # first use, and one first made inside a transform would escape it.
    probe.loss_function()(probe.params)
    return model, batch, probe


def torch_func_hvp(probe: Probe, vector: torch.Tensor) -> torch.Tensor:
    """H v by forward-over-reverse in torch.func on the plain-autograd path: the reference."""
    return jvp(grad(probe.loss_function()), (probe.params,), (vector,))[1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("parameterization", ["block_sparse", "full"])
@pytest.mark.parametrize("layers", [1, 4])
@pytest.mark.parametrize("count", [1, 3, 8])
def test_few_directions_match_torch_func(dtype, parameterization, layers, count):
    model, batch, probe = make(parameterization, layers, dtype, batch_size=37)
    assert kernel_supports(model, batch)
    directions = torch.randn(count, probe.params.numel(), generator=torch.Generator().manual_seed(count), dtype=dtype)
    products = kernel_hvp(model, batch, probe.params, directions)
    expected = torch.stack([torch_func_hvp(probe, v) for v in directions])
    assert products.dtype == dtype and products.shape == expected.shape
    scale = expected.abs().max()
    assert scale > 0
    assert (products - expected).abs().max() <= TOLERANCE[dtype] * scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_many_directions_agree_with_one_at_a_time(dtype):
    """Many directions in one call (passes of 8) give the products of one call per direction."""
    model, batch, probe = make("full", 3, dtype, batch_size=70, d=4, n=9)
    directions = torch.randn(20, probe.params.numel(), generator=torch.Generator().manual_seed(5), dtype=dtype)
    together = kernel_hvp(model, batch, probe.params, directions)
    one_by_one = torch.cat([kernel_hvp(model, batch, probe.params, v[None]) for v in directions])
    assert (one_by_one - together).abs().max() <= TOLERANCE[dtype] * together.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("parameterization", ["block_sparse", "full"])
def test_probe_hvp_matches_torch_func(dtype, parameterization):
    model, batch, probe = make(parameterization, 3, dtype, batch_size=83)
    vector = torch.randn(probe.params.numel(), generator=torch.Generator().manual_seed(2), dtype=dtype)
    expected = torch_func_hvp(probe, vector)
    assert (probe.hvp(vector) - expected).abs().max() <= TOLERANCE[dtype] * expected.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("parameterization", ["block_sparse", "full"])
def test_probe_gradient_through_the_kernel_matches_autograd(dtype, parameterization):
    model, batch, probe = make(parameterization, 3, dtype, batch_size=83)
    weights = [p.detach().clone() for p in probe.model.parameters()]
    other = make(parameterization, 3, dtype, batch_size=21)[1]
    theta = probe.params + 0.05
    for at, on in ((None, None), (theta, None), (None, other), (theta, other), (None, None)):
        g = probe.gradient(at, on)
        expected = probe.autograd_gradient(at, on)
        assert g.dtype == dtype and g.shape == probe.params.shape
        assert float(expected.abs().max()) > 1e-3
        assert (g - expected).abs().max() <= TOLERANCE[dtype] * expected.abs().max()
    assert not torch.equal(probe.gradient(theta), probe.gradient())
    # The probe's own model and point are left as they were.
    assert all(torch.equal(p, w) and p.grad is None for p, w in zip(probe.model.parameters(), weights))


def test_probe_gradient_takes_the_kernel_path():
    """The gradient at the probed point runs the compiled kernel's training entry point (its
    la_loss_grad_block_sparse call, a block-sparse model's la_loss_grad_xy, is counted), not
    functional_call and autograd."""
    model, batch, probe = make("block_sparse", 3, torch.float32, batch_size=40)
    library = kernels.load()
    entry = library.la_loss_grad_block_sparse_f32
    calls = []

    def counted(*arguments):
        calls.append(arguments[0])
        return entry(*arguments)

    library.la_loss_grad_block_sparse_f32 = counted
    try:
        probe.gradient()
    finally:
        library.la_loss_grad_block_sparse_f32 = entry
    assert calls == [40]



def test_runs_that_measure_diagnostics_get_run_ids_of_their_own(registry, tiny_raw, monkeypatch):
    """The probe's second order moved to the kernels' value and tangent lanes (new rounding in the
    diagnostics' values): a run measuring diagnostics names that arithmetic in its identity, so no
    result cached with the previous values is taken for it; a run without diagnostics keeps its id."""
    plugins = load_plugins()
    tiny_raw["diagnostics"] = [{"name": "directional_smoothness", "seeds": [0]}]
    plans = plan_runs(parse_config(tiny_raw, registry), "runs")
    measured, plain = (next(plan for plan in plans if plan.seed == seed) for seed in (0, 1))
    assert identity(measured, plugins)["probe"] == cache.PROBE_ARITHMETIC
    assert "probe" not in identity(plain, plugins)
    ids = [run_id(plan, plugins) for plan in (measured, plain)]
    monkeypatch.setattr(cache, "PROBE_ARITHMETIC", "before")
    assert run_id(measured, plugins) != ids[0] and run_id(plain, plugins) == ids[1]
