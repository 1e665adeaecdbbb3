"""Compiled kernels, built on first use with the system C++ compiler: one library per C++ source beside
this file (``linear_attention.cpp``: the linear-attention stack; others add their own).

The torch implementation (``linear_attention.py`` beside it) spends its time in batched products of
tiny matrices; the C++ version stores prompts batch-innermost so every inner loop is a vectorized
pass over the batch, and runs the same steps on (value, tangent) pairs for exact Hessian-vector
products. It is optional: without a C++ compiler, or with TESTBED_KERNEL=torch, the torch
implementation (and torch.func for second derivatives) runs instead, with the same results up to
float rounding.
Every entry point comes in float32 and float64 (``entry`` picks the one for a dtype).
"""

from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path

import torch

from testbed.native import DTYPES, compiled_library

SOURCE = Path(__file__).with_name("linear_attention.cpp")


_INTS = [ctypes.c_int] * 6
_POINTER = ctypes.c_void_p
LINEAR_ATTENTION = {"la_forward": _INTS + [_POINTER] * 5, "la_backward": _INTS + [_POINTER] * 7,
                    "la_hvp": _INTS + [_POINTER] * 5 + [ctypes.c_int] + [_POINTER] * 4,
                    "la_hvp_features": _INTS + [_POINTER] * 5 + [ctypes.c_int] + [_POINTER] * 7,
                    "la_loss_grad": _INTS + [_POINTER] * 8, "la_loss_grad_xy": _INTS + [_POINTER] * 8,
                    "la_loss_grad_block_sparse": [ctypes.c_int] * 5 + [ctypes.c_long] + [ctypes.c_int] * 2
                                                 + [_POINTER] * 8}


@lru_cache(maxsize=1)
def load() -> ctypes.CDLL | None:
    """The linear-attention library (``linear_attention.cpp``), or None when it is disabled or
    cannot be built here."""
    library = compiled_library(SOURCE, LINEAR_ATTENTION)
    if library is not None:
        library.la_saved_size.argtypes = [ctypes.c_int] * 5
        library.la_saved_size.restype = ctypes.c_size_t
    return library


def entry(library: ctypes.CDLL, name: str, dtype: torch.dtype):
    """The library's entry point ``name`` for elements of ``dtype`` (la_forward, float64 ->
    la_forward_f64); a ValueError for a dtype the kernel is not compiled for."""
    if dtype not in DTYPES:
        raise ValueError(f"linear-attention kernel: no entry point for {dtype}; it computes in "
                         f"{' or '.join(str(t).removeprefix('torch.') for t in DTYPES)}")
    return getattr(library, f"{name}_{DTYPES[dtype]}")


def stack_sizes(Z0: torch.Tensor, P: torch.Tensor, Qc: torch.Tensor, r: int, n: int) -> tuple[int, int, int, int]:
    """(B, D, N1, L) of a kernel call on prompts Z0 (B, D, n+1) with P (L, D, D) and the core Qc
    (L, r, r) of Q, after checking all three (see ``check_arguments``): all in P's dtype."""
    if Z0.dim() != 3 or P.dim() != 3:
        raise ValueError(f"linear-attention kernel: Z0 of shape {tuple(Z0.shape)} and P of shape "
                         f"{tuple(P.shape)}, expected (B, D, n+1) and (L, D, D)")
    (B, D, _), L = Z0.shape, P.shape[0]
    if not 0 < r <= D:
        raise ValueError(f"linear-attention kernel: Q acts on r = {r} rows, expected 1 to D = {D}")
    check_arguments(P.dtype, Z0=(Z0, (B, D, n + 1)), P=(P, (L, D, D)), Qc=(Qc, (L, r, r)))
    return B, D, n + 1, L


def check_arguments(dtype: torch.dtype, strided: tuple[str, ...] = (),
                    **arguments: tuple[torch.Tensor, tuple[int, ...]]) -> None:
    """Raise ValueError unless every tensor (name=(tensor, shape)) is of ``dtype`` (float32 or
    float64: one the kernel is compiled for), contiguous (those named in ``strided``: a vector the
    kernel reads with its stride need not be), on the CPU and of exactly its shape. The C++ code
    reads and writes through raw pointers with the sizes it is passed: a mismatch would run out of
    bounds (an abort) or read garbage. Reads no entry."""
    expected = str(dtype if dtype in DTYPES else torch.float32).removeprefix("torch.")
    for name, (tensor, shape) in arguments.items():
        contiguous = name in strided or tensor.is_contiguous()
        if tensor.shape != shape or tensor.dtype != dtype or dtype not in DTYPES or not tensor.is_cpu or not contiguous:
            actual = str(tensor.dtype).removeprefix("torch.")
            layout = "" if contiguous else ", not contiguous"
            wanted = "" if name in strided else "contiguous "
            raise ValueError(f"linear-attention kernel: {name} is a {actual} tensor of shape "
                             f"{tuple(tensor.shape)} on {tensor.device}{layout}; expected a {wanted}"
                             f"{expected} tensor of shape {shape} on cpu")


def add_to_grad(parameter: torch.nn.Parameter, grad: torch.Tensor) -> None:
    """Add a gradient the kernel computed to ``parameter.grad`` as autograd accumulates it: the tensor
    (made contiguous) becomes ``.grad`` when there is none, else it is added in place."""
    if parameter.grad is None:
        parameter.grad = grad.contiguous()
    else:
        parameter.grad.add_(grad)  # ``+=`` would also set .grad again, through its checks
