"""Hand-derived forward and backward of a stack of linear self-attention layers.

Autograd over this model spends most of its time on tiny batched products and bookkeeping; the
gradient written out by hand needs six batched products per layer and exactly the arithmetic of
the associative form. ``tests/test_model.py`` checks it against autograd on the direct formula.

Notation (per prompt; every product below is batched over prompts). Z: (D, N1) with D = d+1 rows
and N1 = n+1 columns. ``r`` key rows: the projection Q acts only on Z[:r] (r = d for the paper's
block-sparse Q = [[A, 0], [0, 0]], r = D for a full Q), with ``Qc`` its (r, r) core. Layer l:

    X = Z[:r],  C = Z[:, :n] (the mask M drops the query column),  S = C X[:, :n]^T   (D, r)
    K = P S Qc / n,  Z <- Z + K X

The last layer computes only entry (D-1, N1-1), the one the prediction reads.
"""

from __future__ import annotations

import torch

from testbed.model import kernel as kernels


# Products with a matrix shared by every prompt, written so that torch folds the batch into one
# matrix product (a broadcast matmul or einsum would run a slow batched product of tiny matrices).
def _left(P: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """P @ M[b] for every b."""
    return (M.transpose(1, 2) @ P.t()).transpose(1, 2)


def _batch_sum(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """sum over b of U[b]^T @ V[b]."""
    return U.reshape(-1, U.shape[-1]).t() @ V.reshape(-1, V.shape[-1])


def _layer_kernel(Z: torch.Tensor, P: torch.Tensor, Qc: torch.Tensor, r: int, n: int):
    X = Z[:, :r]
    S = torch.bmm(Z[:, :, :n], X[:, :, :n].transpose(1, 2))  # (B, D, r)
    PS = _left(P, S)
    K = (PS @ Qc) / n
    return X, S, PS, K


def forward_predictions(Z: torch.Tensor, P: torch.Tensor, Qc: torch.Tensor, r: int, n: int):
    """Predictions yhat (B,) and what the backward pass needs (Z and K of each layer, v, s, k)."""
    saved = []
    L = P.shape[0]
    for layer in range(L - 1):
        X, S, PS, K = _layer_kernel(Z, P[layer], Qc[layer], r, n)
        saved.append((Z, S, PS, K))
        Z = Z + torch.bmm(K, X)
    # Last layer, entry (D-1, N1-1) only: k = (p C) X_c^T Qc / n with p the last row of P.
    p = P[L - 1, -1]  # (D,)
    v = (p.view(1, -1, 1) * Z[:, :, :n]).sum(1)  # p C   (B, n)
    s = (v.unsqueeze(1) * Z[:, :r, :n]).sum(2)  # (p C) X_c^T   (B, r)
    k = (s @ Qc[L - 1]) / n
    query = Z[:, :r, -1]
    yhat = -(Z[:, -1, -1] + (k * query).sum(-1))
    return yhat, (saved, Z, v, s, k)


def backward_gradients(grad_yhat, P, Qc, r, n, state):
    """Gradients of sum(grad_yhat * yhat) w.r.t. Z0, P and Qc."""
    saved, Z, v, s, k = state
    L = P.shape[0]
    dP = torch.zeros_like(P)
    dQc = torch.zeros_like(Qc)
    g = -grad_yhat  # d/d(Z[-1,-1] + k . query)
    dZ = torch.zeros_like(Z)
    dZ[:, -1, -1] = g
    dZ[:, :r, -1] += g.unsqueeze(1) * k
    dk = g.unsqueeze(1) * Z[:, :r, -1]  # (B, r)
    dQc[L - 1] = s.t() @ dk / n
    u = dk @ Qc[L - 1].t() / n  # d s   (B, r)
    dv = (u.unsqueeze(2) * Z[:, :r, :n]).sum(1)  # (B, n)
    dZ[:, :r, :n] += u.unsqueeze(2) * v.unsqueeze(1)
    dP[L - 1, -1] = (dv.unsqueeze(1) * Z[:, :, :n]).sum((0, 2))
    dZ[:, :, :n] += P[L - 1, -1].view(1, -1, 1) * dv.unsqueeze(1)
    for layer in range(L - 2, -1, -1):
        Zl, S, PS, K = saved[layer]
        X = Zl[:, :r]
        G = dZ  # d Z_{l+1}; the residual passes it through unchanged
        dK = torch.bmm(G, X.transpose(1, 2))  # (B, D, r)
        dX = torch.bmm(K.transpose(1, 2), G)  # (B, r, N1)
        SQ = S @ Qc[layer]
        dP[layer] = _batch_sum(dK.transpose(1, 2), SQ.transpose(1, 2)) / n
        dQc[layer] = _batch_sum(PS, dK) / n
        dS = _left(P[layer].t(), dK) @ (Qc[layer].t() / n)  # P^T dK Qc^T / n
        dZ = G.clone()
        dZ[:, :r] += dX
        dZ[:, :, :n] += torch.bmm(dS, X[:, :, :n])
        dZ[:, :r, :n] += torch.bmm(dS.transpose(1, 2), Zl[:, :, :n])
    return dZ, dP, dQc


class LinearAttentionStack(torch.autograd.Function):
    """yhat = stack(Z0, P, Qc) with the hand-written backward above (first order only: Hessians
    are taken on the plain autograd path of the model)."""

    @staticmethod
    def forward(ctx, Z0, P, Qc, r: int, n: int):
        """Predictions yhat (B,); keeps each layer's state for the backward pass."""
        yhat, state = forward_predictions(Z0, P, Qc, r, n)
        ctx.state = state
        ctx.save_for_backward(P, Qc)
        ctx.shape = (r, n)
        return yhat

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_yhat):
        """Gradients for Z0, P and Qc (none for the sizes r and n)."""
        P, Qc = ctx.saved_tensors
        r, n = ctx.shape
        dZ, dP, dQc = backward_gradients(grad_yhat, P, Qc, r, n, ctx.state)
        ctx.state = None
        return dZ, dP, dQc, None, None


def _address(tensor: torch.Tensor) -> int:
    return tensor.data_ptr()


class CompiledLinearAttentionStack(torch.autograd.Function):
    """The same stack through the compiled kernel of ``testbed.model.kernel`` (float32 or float64,
    the dtype of P)."""

    @staticmethod
    def forward(ctx, Z0, P, Qc, r: int, n: int, library):
        """Predictions yhat (B,); the kernel keeps what its backward pass needs in ``ctx.saved``."""
        Z0, P, Qc = (t.detach().contiguous() for t in (Z0, P, Qc))
        B, D, N1, L = kernels.stack_sizes(Z0, P, Qc, r, n)
        saved = torch.empty(library.la_saved_size(B, D, N1, r, L), dtype=P.dtype)
        yhat = torch.empty(B, dtype=P.dtype)
        forward = kernels.entry(library, "la_forward", P.dtype)
        if forward(B, D, N1, r, n, L, *map(_address, (Z0, P, Qc, saved, yhat))):
            raise MemoryError("linear-attention kernel: out of memory")
        ctx.save_for_backward(P, Qc)
        ctx.saved, ctx.sizes, ctx.library = saved, (B, D, N1, r, n, L), library
        return yhat

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_yhat):
        """Gradients for Z0, P and Qc from the kernel (none for the sizes and the library)."""
        return compiled_stack_backward(ctx, grad_yhat, "la", "linear")


def compiled_stack_backward(ctx, grad_yhat: torch.Tensor, prefix: str, variant: str):
    """The backward pass of a compiled attention stack whose forward kept P and Qc (saved tensors),
    ``ctx.saved``, ``ctx.sizes`` and ``ctx.library``: dZ0, dP and dQc from the library's
    ``<prefix>_backward`` entry point (and None for the sizes and the library)."""
    P, Qc = ctx.saved_tensors
    B, D, N1, r, n, L = ctx.sizes
    grad_yhat = grad_yhat.contiguous()
    kernels.check_arguments(P.dtype, grad_yhat=(grad_yhat, (B,)))
    dZ = torch.empty((B, D, N1), dtype=P.dtype)
    dP, dQc = torch.empty_like(P), torch.empty_like(Qc)
    addresses = map(_address, (ctx.saved, P, Qc, grad_yhat, dZ, dP, dQc))
    if kernels.entry(ctx.library, f"{prefix}_backward", P.dtype)(B, D, N1, r, n, L, *addresses):
        raise MemoryError(f"{variant}-attention kernel: out of memory")
    ctx.saved = None
    return dZ, dP, dQc, None, None, None
