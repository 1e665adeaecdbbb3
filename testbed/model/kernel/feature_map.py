"""The MLP feature map through compiled code (``feature_map.cpp``): the prompt the attention kernel
reads, built with the features in one pass, and the feature map's parameter gradients from the
kernel's dLoss/dZ0, by hand (no autograd graph). Autograd's backward of a 5-30-5 feature map on
2,000 prompts of 21 tokens was two thirds of the training step: BLAS is slow on its skinny
(42,000 x 5 x 30) products. Optional like the attention kernel: without it the model takes
autograd through ``LinearTransformer.prompt``.
"""

from __future__ import annotations

import ctypes
import math
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from testbed.model.kernel import add_to_grad, check_arguments, entry
from testbed.native import compiled_library

SOURCE = Path(__file__).with_name("feature_map.cpp")
_INT, _POINTER, _POINTERS = ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)
_NET = [_INT, _INT, _INT, ctypes.POINTER(ctypes.c_int), _POINTERS, _POINTERS]
FEATURE_MAP = {"fm_prompt": _NET + [_POINTER] * 3, "fm_backward": _NET + [_POINTER] * 2 + [_POINTERS] * 2,
               "fm_tangents": _NET + [_POINTER, _INT] + [_POINTER] * 3,
               "fm_gradient_tangents": _NET + [_POINTER, _INT] + [_POINTER] * 4}


@lru_cache(maxsize=1)
def load() -> ctypes.CDLL | None:
    """The feature-map library, or None when kernels are disabled or cannot be built here."""
    return compiled_library(SOURCE, FEATURE_MAP)


def _pointers(tensors: Sequence[torch.Tensor]) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))


class CompiledFeatureMap:
    """The compiled forward and backward of a ReLU MLP (``linears``: its nn.Linear layers, ReLU
    between them) on prompts of ``n + 1`` tokens, in the dtype of its parameters; at the layers' own
    weights, or at ``point``: every weight and bias flattened in parameter order (each layer's weight,
    then its bias)."""

    def __init__(self, library: ctypes.CDLL, linears: Sequence[nn.Linear], point: torch.Tensor | None = None):
        self.library, self.linears = library, list(linears)
        self.dtype = self.linears[0].weight.dtype
        self.sizes = [self.linears[0].in_features] + [linear.out_features for linear in self.linears]
        if point is None:
            values = [p.detach() for linear in self.linears for p in (linear.weight, linear.bias)]
        else:
            shapes = [shape for o, i in zip(self.sizes[1:], self.sizes) for shape in ((o, i), (o,))]
            values = [v.view(shape) for v, shape in zip(point.detach().split([math.prod(s) for s in shapes]), shapes)]
        self.weights, self.biases = [w.contiguous() for w in values[0::2]], [b.contiguous() for b in values[1::2]]
        self.parameter_count = sum(w.numel() + b.numel() for w, b in zip(self.weights, self.biases))

    def _net(self, B: int, N1: int) -> list:
        check_arguments(self.dtype, **{f"W{l}": (w, (o, i)) for l, (w, i, o) in
                                       enumerate(zip(self.weights, self.sizes, self.sizes[1:]))},
                        **{f"b{l}": (b, (o,)) for l, (b, o) in enumerate(zip(self.biases, self.sizes[1:]))})
        return [B, N1, len(self.linears), (ctypes.c_int * len(self.sizes))(*self.sizes),
                _pointers(self.weights), _pointers(self.biases)]

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
            add_to_grad(p, g)

    def tangents(self, x: torch.Tensor, directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The features (B, n+1, out) of covariates ``x`` (B, n+1, d) and their tangents (K, B, n+1, out)
        along ``directions`` (K, parameter count) in the weights and biases (flattened as ``point``)."""
        B, N1, _ = x.shape
        K, out = directions.shape[0], self.sizes[-1]
        x, directions = x.detach().contiguous(), directions.detach().contiguous()
        check_arguments(self.dtype, x=(x, (B, N1, self.sizes[0])), directions=(directions, (K, self.parameter_count)))
        features, tangents = torch.empty(B, N1, out, dtype=self.dtype), torch.empty(K, B, N1, out, dtype=self.dtype)
        if entry(self.library, "fm_tangents", self.dtype)(*self._net(B, N1), x.data_ptr(), K, directions.data_ptr(),
                                                          features.data_ptr(), tangents.data_ptr()):
            raise MemoryError("feature-map kernel: out of memory")
        return features, tangents

    def gradient_tangents(self, x: torch.Tensor, directions: torch.Tensor, d_features: torch.Tensor,
                          t_d_features: torch.Tensor) -> torch.Tensor:
        """The tangents (K, parameter count) of the loss's gradient in the weights and biases along
        ``directions`` (as for ``tangents``), given dLoss/dfeatures (B, n+1, out) and its tangents
        (K, B, n+1, out): J^T t(dF) + t(J)^T dF, forward-over-reverse through the MLP."""
        B, N1, _ = x.shape
        K, out = directions.shape[0], self.sizes[-1]
        x, directions = x.detach().contiguous(), directions.detach().contiguous()
        check_arguments(self.dtype, x=(x, (B, N1, self.sizes[0])), directions=(directions, (K, self.parameter_count)),
                        d_features=(d_features, (B, N1, out)), t_d_features=(t_d_features, (K, B, N1, out)))
        products = torch.empty(K, self.parameter_count, dtype=self.dtype)
        if entry(self.library, "fm_gradient_tangents", self.dtype)(
                *self._net(B, N1), x.data_ptr(), K, directions.data_ptr(), d_features.data_ptr(),
                t_d_features.data_ptr(), products.data_ptr()):
            raise MemoryError("feature-map kernel: out of memory")
        return products
