"""Extreme Hessian eigenvalues from Hessian-vector products alone (Lanczos)."""

from __future__ import annotations

from typing import Callable

import torch


def lanczos_extremes(hvp: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor,
                     iterations: int) -> tuple[float, float]:
    """(lambda_min, lambda_max) of the symmetric operator ``hvp`` by ``iterations`` Lanczos steps
    with full reorthogonalization (cheap at this size, and it keeps the Ritz values honest).
    With iterations >= the dimension the result is the exact spectrum's extremes."""
    dimension = start.numel()
    steps = min(iterations, dimension)
    basis = torch.zeros(steps, dimension, dtype=torch.float64)
    alphas, betas = [], []
    q = start.double() / torch.linalg.vector_norm(start.double())
    for j in range(steps):
        basis[j] = q
        w = hvp(q.to(start.dtype)).double()
        alpha = torch.dot(w, q)
        w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)  # full reorthogonalization
        w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        alphas.append(alpha)
        beta = torch.linalg.vector_norm(w)
        if j == steps - 1 or beta < 1e-10:
            break
        betas.append(beta)
        q = w / beta
    k = len(alphas)
    tridiagonal = torch.diag(torch.stack(alphas))
    if k > 1:
        off = torch.stack(betas[: k - 1])
        tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
    ritz = torch.linalg.eigvalsh(tridiagonal)
    return float(ritz[0]), float(ritz[-1])
