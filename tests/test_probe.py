"""The Probe's exact derivatives (loss, gradient, Hessian-vector products, Hessian) that diagnostics
measure with, against finite differences and an independent autograd loop."""

from __future__ import annotations

import pytest
import torch

from testbed import Probe
from helpers import autograd_loop_hessian, tiny_probe

PARAMETERIZATIONS = ("block_sparse", "full")


def central_difference_hessian(probe: Probe, h: float = 1e-5) -> torch.Tensor:
    """Column j = (grad(theta + h e_j) - grad(theta - h e_j)) / 2h, with Probe.gradient (the engine's
    first-order fast path, not torch.func)."""
    theta = probe.params
    columns = []
    for e in torch.eye(theta.numel(), dtype=theta.dtype):
        columns.append((probe.gradient(theta + h * e) - probe.gradient(theta - h * e)) / (2 * h))
    return torch.stack(columns, dim=1)


def max_rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_hessian_matches_finite_differences_and_an_autograd_loop(registry, parameterization):
    probe = tiny_probe(registry, parameterization)
    assert probe.params.dtype == torch.float64
    H = probe.hessian()
    P = probe.params.numel()
    assert H.shape == (P, P) and H.dtype == torch.float64
    assert float(H.abs().max()) > 1.0  # not a degenerate (all-zero) case
    assert max_rel_error(H, central_difference_hessian(probe)) < 1e-7
    assert max_rel_error(H, autograd_loop_hessian(probe)) < 1e-10
    assert max_rel_error(H, H.T) < 1e-12


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_gradient_and_hvp_match_independent_computations(registry, parameterization):
    probe = tiny_probe(registry, parameterization)
    theta, P = probe.params, probe.params.numel()
    h = 1e-6
    fd = torch.tensor([(probe.loss(theta + h * e) - probe.loss(theta - h * e)) / (2 * h)
                       for e in torch.eye(P, dtype=torch.float64)], dtype=torch.float64)
    assert max_rel_error(probe.gradient(), fd) < 1e-7
    v = torch.randn(P, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert max_rel_error(probe.hvp(v), probe.hessian() @ v) < 1e-10
    # The loss and gradient at another point do not move the probe's own point.
    before = probe.params.clone()
    probe.gradient(theta + 1.0)
    assert torch.equal(probe.params, before)


def test_block_sparse_last_layer_b_has_structural_zeros(registry):
    probe = tiny_probe(registry, "block_sparse", d=2, layers=2)
    H = probe.hessian()
    (b,) = [blk for blk in probe.blocks if blk.name == "B"]
    last = slice(b.start + 4, b.stop)  # B of the last layer: (d x d) = 4 entries after layer 0's
    assert torch.count_nonzero(H[last]) == 0 and torch.count_nonzero(H[:, last]) == 0
    assert torch.count_nonzero(probe.gradient()[last]) == 0
