"""Gradient clipping and the Adam/AdamW and SGD updates compiled (``optimizer.cpp``): each one call in place of
some fifteen tiny torch operations (a few microseconds of dispatch each) on a small model's tensors,
with the same arithmetic, so the same bits. Callers check what fits (contiguous CPU float32/float64
tensors of one dtype, amsgrad off); without the library (no compiler, TESTBED_KERNEL=torch, torch
dispatching to other than its AVX-512 kernels, or its sqrt not MKL's) the functions here are None and
callers issue torch's operations."""

from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch

from testbed.native import DTYPES, compiled_library

SOURCE = Path(__file__).with_name("optimizer.cpp")
MAX_TENSORS = 64  # the clip's per-tensor norms are kept on the stack
_P, _I, _D, _C = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
_SIGNATURES = {
    "clip_grad_norm": [_P, _P, _I, _C, _D, ctypes.POINTER(_D)],
    "adam_step": [_P, _P, _P, _P, _P, _C, _P, _I, _D, _D, _D, _D, _D, _C, _P],
    "sgd_step": [_P, _P, _P, _P, _I, _D, _D, _D, _D, _C],
}
_MKL_MODE = 0x2 | 0x140000 | 0x100  # VML_HA | VML_FTZDAZ_OFF | VML_ERRMODE_IGNORE, as torch's vml.h calls it
_MKL_SQRT = {torch.float32: "vmsSqrt", torch.float64: "vmdSqrt"}
MAX_ELEMENTS = 2**31 - 1  # MKL's 32-bit counts: torch splits larger arrays
ClipFunction = Callable[[list[torch.Tensor], float | None], float]
AdamFunction = Callable[..., bool]
SgdFunction = Callable[..., None]


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    # the source follows the kernels torch dispatches to on AVX-512 (checked there, bit for bit)
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return None
    # -ffp-contract=off: the fused multiply-adds are the source's explicit ones, no others
    return compiled_library(SOURCE, _SIGNATURES, extra_flags=("-ffp-contract=off",))


def _torch_sqrt_functions() -> dict[torch.dtype, ctypes._CFuncPtr] | None:
    """MKL's vector square roots that torch's CPU sqrt calls (its results are not always correctly
    rounded, so the update must call the same function), or None where torch's sqrt is another one:
    checked on values where MKL's and the correctly rounded root differ."""
    try:
        torch_library = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        functions = {dtype: getattr(torch_library, name) for dtype, name in _MKL_SQRT.items()}
    except (OSError, AttributeError):
        return None
    probe = torch.Generator().manual_seed(0)
    for dtype, function in functions.items():
        function.argtypes, function.restype = [ctypes.c_int32, _P, _P, ctypes.c_int64], None
        values = torch.rand(4096, generator=probe, dtype=torch.float64).mul_(1e4).to(dtype)
        roots = torch.empty_like(values)
        function(values.numel(), values.data_ptr(), roots.data_ptr(), _MKL_MODE)
        if not torch.equal(roots.view(torch.uint8), torch.sqrt(values).view(torch.uint8)):
            return None
    return functions


def _pointers(tensors: list[torch.Tensor]) -> ctypes.Array:
    return (_P * len(tensors))(*[t.data_ptr() for t in tensors])


def _sizes(tensors: list[torch.Tensor]) -> ctypes.Array:
    return (_I * len(tensors))(*[t.numel() for t in tensors])


@lru_cache(maxsize=1)
def clip_grad_norm_function() -> ClipFunction | None:
    """``clip(grads, max_norm) -> total norm``: the L2 norm of all ``grads`` (contiguous, one dtype)
    and, unless ``max_norm`` is None, the grads scaled in place as clip_grad_norm_ scales them."""
    library = _library()
    if library is None:
        return None
    entries = {dtype: getattr(library, f"clip_grad_norm_{suffix}") for dtype, suffix in DTYPES.items()}

    def clip(grads: list[torch.Tensor], max_norm: float | None) -> float:
        total = _D()
        if entries[grads[0].dtype](_pointers(grads), _sizes(grads), len(grads), max_norm is not None,
                                   0.0 if max_norm is None else max_norm, ctypes.byref(total)):
            raise ValueError(f"compiled clipping takes at most {MAX_TENSORS} tensors, got {len(grads)}")
        return total.value

    return clip


@lru_cache(maxsize=1)
def adam_step_function() -> AdamFunction | None:
    """``update(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, weight_decay, eps,
    decoupled)``: torch's single-tensor Adam/AdamW step (amsgrad off) on contiguous tensors of one
    dtype, the state tensors and step counters (0-dim, one dtype) updated in place. Returns False,
    having changed nothing, where torch's step would divide by zero (a counter that reaches 0)."""
    library = _library()
    sqrt_functions = None if library is None else _torch_sqrt_functions()
    if sqrt_functions is None:
        return None
    entries = {dtype: (getattr(library, f"adam_step_{suffix}"), ctypes.cast(sqrt_functions[dtype], _P).value)
               for dtype, suffix in DTYPES.items()}

    def update(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
             exp_avg_sqs: list[torch.Tensor], steps: list[torch.Tensor], lr: float, beta1: float, beta2: float,
             weight_decay: float, eps: float, decoupled: bool) -> bool:
        entry, sqrt_function = entries[params[0].dtype]
        return 0 == entry(_pointers(params), _pointers(grads), _pointers(exp_avgs), _pointers(exp_avg_sqs),
                          _pointers(steps), steps[0].dtype == torch.float64, _sizes(params), len(params),
                          lr, beta1, beta2, weight_decay, eps, decoupled, sqrt_function)

    return update


@lru_cache(maxsize=1)
def sgd_step_function() -> SgdFunction | None:
    """``update(params, grads, buffers, lr, weight_decay, momentum, dampening, nesterov)``: torch's
    single-tensor SGD step on contiguous tensors of one dtype whose momentum buffers all exist (or
    momentum 0, ``buffers`` then unused), params and buffers updated in place."""
    library = _library()
    if library is None:
        return None
    entries = {dtype: getattr(library, f"sgd_step_{suffix}") for dtype, suffix in DTYPES.items()}

    def update(params: list[torch.Tensor], grads: list[torch.Tensor], buffers: list[torch.Tensor], lr: float,
               weight_decay: float, momentum: float, dampening: float, nesterov: bool) -> None:
        entries[params[0].dtype](_pointers(params), _pointers(grads), _pointers(buffers or params), _sizes(params),  # no buffers: never read
                                 len(params), lr, weight_decay, momentum, dampening, nesterov)

    return update
