"""Exact Hessian-vector products through the compiled kernel (forward-over-reverse: the gradient's
steps run on (value, tangent) pairs, one tangent per direction, vectorized over prompts).

Parameter-space directions are mapped to tangents of the attention matrices (P, Qc) and back. P is
a linear function of the parameters (block-sparse: B padded, plus a constant), so the Hessian in
the parameters is this map's transpose around the Hessian in (P, Qc): no second-order term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from testbed.model import kernel as kernels
from testbed.model.transformer import LinearTransformer
from testbed.tasks import Batch


def kernel_supports(model: LinearTransformer, batch: Batch) -> bool:
    """The kernel covers an attention variant it supports (linear attention) without a feature map,
    in float32 or float64 (prompts and parameters alike). A feature map's parameters move the
    prompt itself, and the kernel carries tangents of P and Q only (not of Z0, nor the MLP's
    second derivatives): such models take torch.func, exact but slower (full P and Q, L=3, d=5,
    n=20 with a 5-30-5 feature map on 1,000 prompts, one thread: an HVP 56 ms, the full 551 x 551
    Hessian 13 s, against 1.4 ms and about 0.1 s without the feature map;
    tests/test_feature_map_path.py checks its values)."""
    dtype = batch.x.dtype
    return (model.attention.kernel_supported and model.feature_map is None
            and dtype in kernels.DTYPES and all(p.dtype == dtype for p in model.parameters())
            and kernels.load() is not None)


def kernel_hvp(model: LinearTransformer, batch: Batch, params: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """H(params) v for every row v of ``directions`` (K, N): the Hessian of the batch's mean squared
    error in the flattened parameters (the order of ``model.named_parameters()``), in the dtype of
    ``params``."""
    library = kernels.load()
    dtype = params.dtype
    L, d = model.config.layers, model.d
    D, n = d + 1, model.n
    first, second = (p.numel() for p in model.parameters())
    blocks = dict(zip(("first", "second"), params.detach().split([first, second])))
    K = directions.shape[0]
    v_first, v_second = directions.detach().to(dtype).split([first, second], dim=1)
    if model.config.parameterization == "block_sparse":  # parameters A (= Qc), then B
        r = d
        A, B = blocks["first"].view(L, d, d), blocks["second"].view(L, d, d)
        P = F.pad(B, (0, 1, 0, 1))
        P[:, d, d] = 1.0
        Qc = A
        tP, tQc = F.pad(v_second.reshape(K, L, d, d), (0, 1, 0, 1)), v_first.reshape(K, L, d, d)
    else:  # parameters P, then Q
        r = D
        P, Qc = blocks["first"].view(L, D, D), blocks["second"].view(L, D, D)
        tP, tQc = v_first.reshape(K, L, D, D), v_second.reshape(K, L, D, D)
    # The kernel reads the covariates and labels as prompt() lays them out (no feature map here).
    x, y, target, P, Qc, tP, tQc = (t.detach().contiguous() for t in (batch.x, batch.y, batch.target, P, Qc, tP, tQc))
    prompts = x.shape[0]
    kernels.check_arguments(dtype, x=(x, (prompts, n + 1, d)), y=(y, (prompts, n + 1)), target=(target, (prompts,)),
                            P=(P, (L, D, D)), Qc=(Qc, (L, r, r)), tP=(tP, (K, L, D, D)), tQc=(tQc, (K, L, r, r)))
    HP, HQc = torch.empty(K, L, D, D, dtype=dtype), torch.empty(K, L, r, r, dtype=dtype)
    hvp = kernels.entry(library, "la_hvp", dtype)
    status = hvp(prompts, D, n + 1, r, n, L, *(t.data_ptr() for t in (x, y, target, P, Qc)), K,
                 tP.data_ptr(), tQc.data_ptr(), HP.data_ptr(), HQc.data_ptr())
    if status:
        raise MemoryError("linear-attention kernel: out of memory")
    if model.config.parameterization == "block_sparse":
        return torch.cat([HQc.reshape(K, -1), HP[:, :, :d, :d].reshape(K, -1)], dim=1)
    return torch.cat([HP.reshape(K, -1), HQc.reshape(K, -1)], dim=1)


def kernel_hessian(model: LinearTransformer, batch: Batch, params: torch.Tensor) -> torch.Tensor:
    """The full Hessian; rows and columns of parameters the prediction cannot depend on are exact
    zeros and are not computed."""
    active = ~model.inert_parameters()
    size = params.numel()
    H = torch.zeros(size, size, dtype=params.dtype)
    H[active] = kernel_hvp(model, batch, params, torch.eye(size, dtype=params.dtype)[active])
    return (H + H.T) / 2  # symmetric up to float rounding; make it exactly so
