"""The compiled softmax-attention stack (``softmax_attention.cpp``): forward, and a hand-written
backward in one pass with the loss, float32 and float64.

Notation as in ``linear_attention``: per prompt Z (D, N1), D = d+1 rows, N1 = n+1 columns, Q acting
on the first ``r`` rows X = Z[:r] through its (r, r) core Qc. Layer l:

    S = X^T Qc X  (N1, N1),   A = softmax of S over the keys (dim 0 here, dim 1 of a batch; the
    query's own key included),   Z <- Z + P Z[:, :n] A[:n] / n

(the mask M drops the query's key row after the softmax), exactly ``SoftmaxAttention`` and the
literal formula ``direct_forward``; the last layer computes only the entry the prediction reads.
The kernel subtracts each column's maximum before the exponential, as torch's softmax does.

Hessian-vector products (``sa_hvp``, the arguments of the linear kernel's ``la_hvp``) run the
gradient's steps once more on (value, tangent) pairs, forward-over-reverse; ``second_order.kernel_hvp``
calls them for a model without a feature map (with one, or without the library, ``Probe`` takes
torch.func on the model's plain-autograd path, ``LinearTransformer.autograd_forward``). Without a C++
compiler, or with TESTBED_KERNEL=torch, ``load`` is None and the model trains through that plain
autograd path too, with the same results up to float rounding.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path

import torch

from testbed.model import kernel as kernels
from testbed.model.kernel.linear_attention import compiled_stack_backward
from testbed.native import compiled_library

SOURCE = Path(__file__).with_name("softmax_attention.cpp")
_INTS = [ctypes.c_int] * 6
_POINTER = ctypes.c_void_p
# The entry points (each with an _f32 and an _f64 version) and their ctypes arguments: those of the
# linear-attention kernel's forward, backward, loss_grad and hvp.
SOFTMAX_ATTENTION = {"sa_forward": _INTS + [_POINTER] * 5, "sa_backward": _INTS + [_POINTER] * 7,
                     "sa_loss_grad": _INTS + [_POINTER] * 8,
                     "sa_hvp": _INTS + [_POINTER] * 5 + [ctypes.c_int] + [_POINTER] * 4}


@lru_cache(maxsize=1)
def load() -> ctypes.CDLL | None:
    """The softmax-attention library, or None when kernels are disabled or cannot be built here."""
    library = compiled_library(SOURCE, SOFTMAX_ATTENTION)
    if library is not None:
        for suffix in kernels.DTYPES.values():  # a tile holds one vector: its width depends on the dtype
            saved_size = getattr(library, f"sa_saved_size_{suffix}")
            saved_size.argtypes, saved_size.restype = [ctypes.c_int] * 5, ctypes.c_size_t
    return library


def _address(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


class CompiledSoftmaxAttentionStack(torch.autograd.Function):
    """yhat = stack(Z0, P, Qc) through the compiled kernel (float32 or float64, the dtype of P),
    with its hand-written backward (first order)."""

    @staticmethod
    def forward(ctx, Z0, P, Qc, r: int, n: int, library):
        """Predictions yhat (B,); what the backward pass reads is kept only if a gradient is asked
        for (evaluation under no_grad keeps one tile's worth)."""
        Z0, P, Qc = (t.detach().contiguous() for t in (Z0, P, Qc))
        B, D, N1, L = kernels.stack_sizes(Z0, P, Qc, r, n)
        saved = None
        if any(ctx.needs_input_grad[:3]):
            saved = torch.empty(kernels.entry(library, "sa_saved_size", P.dtype)(B, D, N1, r, L), dtype=P.dtype)
        yhat = torch.empty(B, dtype=P.dtype)
        forward = kernels.entry(library, "sa_forward", P.dtype)
        if forward(B, D, N1, r, n, L, *map(_address, (Z0, P, Qc, saved, yhat))):
            raise MemoryError("softmax-attention kernel: out of memory")
        ctx.save_for_backward(P, Qc)
        ctx.saved, ctx.sizes, ctx.library = saved, (B, D, N1, r, n, L), library
        return yhat

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_yhat):
        """Gradients for Z0, P and Qc from the kernel (none for the sizes and the library)."""
        return compiled_stack_backward(ctx, grad_yhat, "sa", "softmax")
