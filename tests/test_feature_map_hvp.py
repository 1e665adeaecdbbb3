"""Hessian-vector products and Hessians of feature-map (MLP) models through the compiled kernel
(la_hvp_features: the attention's forward-over-reverse with the features' tangents, and the MLP's
own), against torch.func on the plain-autograd path; and torch.func where the kernel is off."""

import pytest
import torch
from torch.func import grad, jacrev, jvp

from testbed.engine.probe import Probe
from testbed.model import kernel as kernels
from testbed.model.config import FeatureMapConfig, ModelConfig
from testbed.model.kernel.second_order import kernel_hvp, kernel_supports
from testbed.model.transformer import LinearTransformer
from testbed.tasks import Batch

needs_kernel = pytest.mark.skipif(kernels.load() is None, reason="no C++ compiler: the kernel is not built")

TOLERANCE = {torch.float32: 2e-5, torch.float64: 1e-12}


def make(parameterization: str, hidden: tuple[int, ...], layers: int, dtype: torch.dtype, batch_size: int = 37,
         d: int = 3, n: int = 7, out_dim: int | None = None):
    """A probe at a random point of an odd-sized feature-map model on ``batch_size`` prompts (not a
    multiple of any tile)."""
    config = ModelConfig(layers=layers, parameterization=parameterization, init_std=0.3,
                         feature_map=FeatureMapConfig(hidden=hidden, out_dim=out_dim))
    model = LinearTransformer(config, d, n, torch.Generator().manual_seed(layers)).to(dtype)
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(batch_size, n + 1, d, generator=generator, dtype=dtype)
    y = (x @ torch.randn(batch_size, d, 1, generator=generator, dtype=dtype)).squeeze(-1)
    batch = Batch(x, y)
    return model, batch, Probe.of(model, None, batch, batch_size, 0)


def torch_func_hvp(probe: Probe, vector: torch.Tensor) -> torch.Tensor:
    """H v by forward-over-reverse in torch.func on the plain-autograd path: the reference."""
    return jvp(grad(probe.loss_function()), (probe.params,), (vector,))[1]


def close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> bool:
    """Equal up to float rounding, relative to the largest entry (which must not be zero)."""
    scale = expected.abs().max()
    return bool(scale > 0) and bool((actual - expected).abs().max() <= TOLERANCE[dtype] * scale)


class CountedEntry:
    """Counts the calls of one of the linear-attention library's entry points while in use."""

    def __init__(self, name: str):
        self.library, self.name = kernels.load(), name
        self.calls = 0

    def __enter__(self) -> "CountedEntry":
        entry = self.original = getattr(self.library, self.name)

        def counted(*arguments):
            self.calls += 1
            return entry(*arguments)

        setattr(self.library, self.name, counted)
        return self

    def __exit__(self, *exc) -> None:
        setattr(self.library, self.name, self.original)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("parameterization", ["block_sparse", "full"])
@pytest.mark.parametrize("hidden", [(30,), (7, 4)], ids=["hidden30", "hidden7x4"])
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("count", [1, 3, 8])
def test_few_directions_match_torch_func(dtype, parameterization, hidden, layers, count):
    model, batch, probe = make(parameterization, hidden, layers, dtype)
    assert kernel_supports(model, batch)
    directions = torch.randn(count, probe.params.numel(), generator=torch.Generator().manual_seed(count), dtype=dtype)
    products = kernel_hvp(model, batch, probe.params, directions)
    expected = torch.stack([torch_func_hvp(probe, v) for v in directions])
    assert products.dtype == dtype and products.shape == expected.shape
    assert close(products, expected, dtype)
    # The feature map's own block moves too: its rows are not all zero, and match on their own.
    mlp = sum(p.numel() for p in model.feature_map.parameters())
    assert close(products[:, -mlp:], expected[:, -mlp:], dtype)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_directions_in_one_part_only(dtype):
    """A direction in the MLP's weights alone (the attention's tangents zero) and one in P and Q alone
    (the features' tangents zero), an output width other than d, more directions than a pass of 8."""
    model, batch, probe = make("full", (5,), 2, dtype, batch_size=45, d=4, n=9, out_dim=3)
    mlp = sum(p.numel() for p in model.feature_map.parameters())
    directions = torch.randn(19, probe.params.numel(), generator=torch.Generator().manual_seed(3), dtype=dtype)
    directions[:5, :-mlp] = 0
    directions[5:10, -mlp:] = 0
    products = kernel_hvp(model, batch, probe.params, directions)
    expected = torch.stack([torch_func_hvp(probe, v) for v in directions])
    assert close(products, expected, dtype)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("parameterization", ["block_sparse", "full"])
def test_probe_hvp_and_hessian_take_the_kernel(dtype, parameterization):
    model, batch, probe = make(parameterization, (6,), 3, dtype, batch_size=41)
    vector = torch.randn(probe.params.numel(), generator=torch.Generator().manual_seed(2), dtype=dtype)
    entry = f"la_hvp_features_{kernels.DTYPES[dtype]}"
    with CountedEntry(entry) as counted:
        product = probe.hvp(vector)
    assert counted.calls == 1
    assert close(product, torch_func_hvp(probe, vector), dtype)
    with CountedEntry(entry) as counted:
        hessian = probe.hessian()
    assert counted.calls >= 1
    expected = jacrev(grad(probe.loss_function()))(probe.params)
    assert torch.equal(hessian, hessian.T)
    assert close(hessian, expected, dtype)


def test_torch_func_without_the_kernel(monkeypatch):
    """With TESTBED_KERNEL=torch the probe's HVP and Hessian of a feature-map model are torch.func's
    (no library to call), and still the exact derivatives: H v equals the Hessian times v."""
    monkeypatch.setenv("TESTBED_KERNEL", "torch")
    kernels.load.cache_clear()
    try:
        model, batch, probe = make("full", (4,), 2, torch.float64, batch_size=13)
        assert not kernel_supports(model, batch)
        hessian = probe.hessian()
        vector = torch.randn(probe.params.numel(), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        assert close(probe.hvp(vector), hessian @ vector, torch.float64)
        assert hessian.abs().max() > 0
    finally:
        monkeypatch.undo()
        kernels.load.cache_clear()
