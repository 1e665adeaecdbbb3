"""The MLP feature map through compiled code (``feature_map.cpp``): the prompt the attention kernel
reads, built with the features in one pass, and the feature map's parameter gradients from the
kernel's dLoss/dZ0, by hand (no autograd graph). Autograd's backward of a 5-30-5 feature map on
2,000 prompts of 21 tokens was two thirds of the training step: BLAS is slow on its skinny
(42,000 x 5 x 30) products. Optional like the attention kernel: without it the model takes
autograd through ``LinearTransformer.prompt``.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from testbed.model.kernel import check_arguments, entry
from testbed.native import compiled_library

SOURCE = Path(__file__).with_name("feature_map.cpp")
_INT, _POINTER, _POINTERS = ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)
_NET = [_INT, _INT, _INT, ctypes.POINTER(ctypes.c_int), _POINTERS, _POINTERS]
FEATURE_MAP = {"fm_prompt": _NET + [_POINTER] * 3, "fm_backward": _NET + [_POINTER] * 2 + [_POINTERS] * 2}


@lru_cache(maxsize=1)
def load() -> ctypes.CDLL | None:
    """The feature-map library, or None when kernels are disabled or cannot be built here."""
    return compiled_library(SOURCE, FEATURE_MAP)


def _pointers(tensors: Sequence[torch.Tensor]) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))


class CompiledFeatureMap:
    """The compiled forward and backward of a ReLU MLP (``linears``: its nn.Linear layers, ReLU
    between them) on prompts of ``n + 1`` tokens, in the dtype of its parameters."""

    def __init__(self, library: ctypes.CDLL, linears: Sequence[nn.Linear]):
        self.library, self.linears = library, list(linears)
        self.dtype = self.linears[0].weight.dtype
        self.sizes = [self.linears[0].in_features] + [linear.out_features for linear in self.linears]

    def _net(self, B: int, N1: int) -> list:
        weights = [linear.weight.detach().contiguous() for linear in self.linears]
        biases = [linear.bias.detach().contiguous() for linear in self.linears]
        check_arguments(self.dtype, **{f"W{l}": (w, (o, i)) for l, (w, i, o) in
                                       enumerate(zip(weights, self.sizes, self.sizes[1:]))},
                        **{f"b{l}": (b, (o,)) for l, (b, o) in enumerate(zip(biases, self.sizes[1:]))})
        return [B, N1, len(self.linears), (ctypes.c_int * len(self.sizes))(*self.sizes),
                _pointers(weights), _pointers(biases)]

    def prompt(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The contiguous prompt Z0 (B, out+1, n+1) of covariates ``x`` (B, n+1, d) and labels
        ``y`` (B, n+1): ``LinearTransformer.prompt``'s value, without an autograd graph."""
        B, N1, _ = x.shape
        x, y = x.detach().contiguous(), y.detach().contiguous()
        check_arguments(self.dtype, x=(x, (B, N1, self.sizes[0])), y=(y, (B, N1)))
        Z = torch.empty(B, self.sizes[-1] + 1, N1, dtype=self.dtype)
        status = entry(self.library, "fm_prompt", self.dtype)(*self._net(B, N1), x.data_ptr(), y.data_ptr(),
                                                              Z.data_ptr())
        if status:
            raise MemoryError("feature-map kernel: out of memory")
        return Z

    def accumulate_grad(self, x: torch.Tensor, dZ: torch.Tensor) -> None:
        """Add the gradient of every weight and bias, given dLoss/dZ0 (B, out+1, n+1) of the prompt
        built from ``x``, into their ``.grad`` (as autograd's backward would)."""
        B, N1, _ = x.shape
        x = x.detach().contiguous()
        check_arguments(self.dtype, x=(x, (B, N1, self.sizes[0])), dZ=(dZ, (B, self.sizes[-1] + 1, N1)))
        parameters = [p for linear in self.linears for p in (linear.weight, linear.bias)]
        grads = [torch.empty_like(p, memory_format=torch.contiguous_format) for p in parameters]
        status = entry(self.library, "fm_backward", self.dtype)(*self._net(B, N1), x.data_ptr(), dZ.data_ptr(),
                                                                _pointers(grads[0::2]), _pointers(grads[1::2]))
        if status:
            raise MemoryError("feature-map kernel: out of memory")
        for p, g in zip(parameters, grads):
            if p.grad is None:
                p.grad = g
            else:
                p.grad.add_(g)
