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
from testbed.model.kernel import feature_map as feature_kernel
from testbed.model.transformer import COMPILED_STACKS, LinearTransformer
from testbed.tasks import Batch

HESSIAN_DIRECTIONS = 64  # directions per kernel_hvp call of a full Hessian: a multiple of the kernel's 8
# The variants whose compiled kernel takes Hessian-vector products (<prefix>_hvp of COMPILED_STACKS, all
# with la_hvp's arguments), and whether it covers a feature map's tangents too.
HVP_COVERS_FEATURE_MAPS = {"linear": True, "softmax": False}


def kernel_supports(model: LinearTransformer, batch: Batch) -> bool:
    """The compiled kernel of the model's attention variant covers it (``HVP_COVERS_FEATURE_MAPS``:
    linear attention with or without a feature map, softmax attention without one), in float32 or
    float64 (prompts and parameters alike). Softmax attention (sa_hvp; L=3, d=5, n=20, 1,000
    prompts, one thread): an HVP 6 ms and the full Hessian 0.4-0.7 s, where torch.func takes 70-110
    ms and 6-10 s. A feature map's weights move the covariates the attention reads: the kernel takes
    their tangents and returns dLoss/dfeatures with its tangents (la_hvp_features), and the MLP's
    own forward-over-reverse runs in ``feature_map.cpp`` (fm_tangents, fm_gradient_tangents). The
    paper's MLP-feature model (full P and Q, L=3, d=5, n=20, a 5-30-5 feature map) on 1,000 prompts,
    one thread: an HVP about 4.5 ms and the full 551 x 551 Hessian 1.4-1.5 s, where torch.func takes
    45-52 ms and 12 s."""
    dtype = batch.x.dtype
    covers_feature_maps = HVP_COVERS_FEATURE_MAPS.get(model.attention.name)
    return (covers_feature_maps is not None and (covers_feature_maps or model.feature_map is None)
            and dtype in kernels.DTYPES and all(p.dtype == dtype for p in model.parameters())
            and COMPILED_STACKS[model.attention.name].load() is not None
            and (model.feature_map is None or feature_kernel.load() is not None))


def kernel_hvp(model: LinearTransformer, batch: Batch, params: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """H(params) v for every row v of ``directions`` (K, N): the Hessian of the batch's mean squared
    error in the flattened parameters (the order of ``model.named_parameters()``), in the dtype of
    ``params``."""
    compiled = COMPILED_STACKS[model.attention.name]
    library = compiled.load()
    dtype = params.dtype
    L, d = model.config.layers, model.d
    D, n = d + 1, model.n
    first, second, *mlp = (p.numel() for p in model.parameters())  # the feature map's come last
    split = [first, second, sum(mlp)]
    blocks = dict(zip(("first", "second", "mlp"), params.detach().split(split)))
    K = directions.shape[0]
    v_first, v_second, v_mlp = directions.detach().to(dtype).split(split, dim=1)
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
    # The kernel reads the covariates and labels as prompt() lays them out; a feature map's features
    # are its covariates, and move along the directions' part in the MLP's weights.
    features, x = None, batch.x
    if model.feature_map is not None:
        features = feature_kernel.CompiledFeatureMap(feature_kernel.load(), model.feature_map.linears, blocks["mlp"])
        x, tx = features.tangents(batch.x, v_mlp)
    x, y, target, P, Qc, tP, tQc = (t.detach().contiguous() for t in (x, batch.y, batch.target, P, Qc, tP, tQc))
    prompts = x.shape[0]
    kernels.check_arguments(dtype, x=(x, (prompts, n + 1, d)), y=(y, (prompts, n + 1)), target=(target, (prompts,)),
                            P=(P, (L, D, D)), Qc=(Qc, (L, r, r)), tP=(tP, (K, L, D, D)), tQc=(tQc, (K, L, r, r)))
    HP, HQc = torch.empty(K, L, D, D, dtype=dtype), torch.empty(K, L, r, r, dtype=dtype)
    pointers = [t.data_ptr() for t in (x, y, target, P, Qc)] + [K, tP.data_ptr(), tQc.data_ptr()]
    if features is None:
        hvp = kernels.entry(library, f"{compiled.prefix}_hvp", dtype)
        status = hvp(prompts, D, n + 1, r, n, L, *pointers, HP.data_ptr(), HQc.data_ptr())
    else:
        dx, tdx = torch.empty_like(x), torch.empty_like(tx)
        kernels.check_arguments(dtype, tx=(tx, (K, prompts, n + 1, d)))
        status = kernels.entry(library, "la_hvp_features", dtype)(
            prompts, D, n + 1, r, n, L, *pointers, tx.data_ptr(), HP.data_ptr(), HQc.data_ptr(), dx.data_ptr(),
            tdx.data_ptr())
    if status:
        raise MemoryError(f"{model.attention.name}-attention kernel: out of memory")
    if model.config.parameterization == "block_sparse":
        products = [HQc.reshape(K, -1), HP[:, :, :d, :d].reshape(K, -1)]
    else:
        products = [HP.reshape(K, -1), HQc.reshape(K, -1)]
    if features is not None:
        products.append(features.gradient_tangents(batch.x, v_mlp, dx, tdx))
    return torch.cat(products, dim=1)


def kernel_hessian(model: LinearTransformer, batch: Batch, params: torch.Tensor) -> torch.Tensor:
    """The full Hessian; rows and columns of parameters the prediction cannot depend on are exact
    zeros and are not computed."""
    active = ~model.inert_parameters()
    size = params.numel()
    H = torch.zeros(size, size, dtype=params.dtype)
    rows = active.nonzero().flatten()
    for chunk in rows.split(HESSIAN_DIRECTIONS):  # bounds the tangents' memory (a feature map's: K x its activations)
        H[chunk] = kernel_hvp(model, batch, params, torch.eye(size, dtype=params.dtype)[chunk])
    return (H + H.T) / 2  # symmetric up to float rounding; make it exactly so
