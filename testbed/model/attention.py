"""The attention variants of the transformer, one class each.

Every layer of the model is ``Z <- Z + (1/n) P Z M W``: the value side ``P Z M`` is the same for
every variant (M = diag(1, ..., 1, 0) drops the query as a key), the weights W computed from the
scores ``Z^T Q Z`` are what a variant chooses. A variant holds three things: its fast layer update,
the per-layer weights of the literal reference formula (``direct_forward``), and whether the
hand-written torch stack (``kernel/linear_attention.py``) computes it.

Adding a variant is adding one class to ``ATTENTION_VARIANTS``; the config's choices follow.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from testbed.errors import ConfigError


class Attention:
    """One attention variant: the layer update, its reference formula and kernel support.

    ``Z`` is a batch of prompts (B, d+1, n+1), ``P`` and ``Q`` one layer's (d+1, d+1) matrices and
    ``n`` the number of context tokens. Variants hold no state; the model holds one instance.
    """

    name: ClassVar[str]
    # True when the hand-written torch stack of ``kernel.linear_attention`` (the path without a
    # compiler) computes this variant. Which variants a compiled kernel trains is
    # ``transformer.COMPILED_STACKS`` (softmax too), and which it takes Hessian-vector products of,
    # ``kernel.second_order.HVP_COVERS_FEATURE_MAPS`` (softmax too, without a feature map).
    kernel_supported: ClassVar[bool] = False
    # (n+1) x (n+1) matrices per layer and prompt that autograd keeps (the memory bound counts them)
    score_matrices: ClassVar[int] = 0

    def update(self, Z: torch.Tensor, P: torch.Tensor, Q: torch.Tensor, n: int) -> torch.Tensor:
        """The layer's update (1/n) P Z M W of every column, (B, d+1, n+1)."""
        raise NotImplementedError

    def query_label_update(self, Z: torch.Tensor, P: torch.Tensor, Q: torch.Tensor, n: int) -> torch.Tensor:
        """Only entry (d, n) of the update, (B,): the last layer's, the one the prediction reads.
        Variants override it to skip the rest of the update."""
        return self.update(Z, P, Q, n)[:, -1, -1]

    def reference_weights(self, Z: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
        """The (n+1) x (n+1) weights W of the literal formula Z + (1/n) P Z M W, (B, n+1, n+1)."""
        raise NotImplementedError


class LinearAttention(Attention):
    """The paper's linear attention: W = Z^T Q Z, computed in the associative form."""

    name = "linear"
    kernel_supported = True

    def update(self, Z: torch.Tensor, P: torch.Tensor, Q: torch.Tensor, n: int) -> torch.Tensor:
        """(P (Z M Z^T) Q) Z / n: the inner product is (d+1) x (d+1), linear in n."""
        context = Z[:, :, :n]
        kernel = P @ (context @ context.transpose(1, 2)) @ Q
        return (kernel @ Z) / n

    def query_label_update(self, Z: torch.Tensor, P: torch.Tensor, Q: torch.Tensor, n: int) -> torch.Tensor:
        """Row d of the kernel P (Z M Z^T) Q times the query column."""
        context = Z[:, :, :n]
        row = P[-1] @ (context @ context.transpose(1, 2)) @ Q  # (B, d+1): row d of the kernel
        return (row.unsqueeze(1) @ Z[:, :, -1:]).reshape(-1) / n

    def reference_weights(self, Z: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
        """The scores Z^T Q Z themselves."""
        return Z.transpose(1, 2) @ Q @ Z


class SoftmaxAttention(Attention):
    """Softmax attention: W = softmax of Z^T Q Z over the keys (the query included, before M)."""

    name = "softmax"
    score_matrices = 3  # the scores, their softmax, the masked weights

    def update(self, Z: torch.Tensor, P: torch.Tensor, Q: torch.Tensor, n: int) -> torch.Tensor:
        """P Z M W / n, with M applied by dropping the query's key row of W."""
        return P @ Z[:, :, :n] @ self._weights(Z, Q, n)

    def query_label_update(self, Z: torch.Tensor, P: torch.Tensor, Q: torch.Tensor, n: int) -> torch.Tensor:
        """Row d of P times the context, times the query's column of the weights."""
        # The context is sliced first: the order of the graph's nodes fixes the order in which
        # second derivatives (torch.func Hessians) are summed, so it is part of the bitwise result.
        context = Z[:, :, :n]
        weights = self._weights(Z, Q, n)[:, :, -1:]  # (B, n, 1)
        return ((P[-1] @ context).unsqueeze(1) @ weights).reshape(-1)

    def reference_weights(self, Z: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
        """Softmax of the scores Z^T Q Z over the keys (dim 1)."""
        return torch.softmax(Z.transpose(1, 2) @ Q @ Z, dim=1)

    def _weights(self, Z: torch.Tensor, Q: torch.Tensor, n: int) -> torch.Tensor:
        # (B, n, n+1): the reference weights without the query's key row (the mask M), over n.
        return self.reference_weights(Z, Q)[:, :n, :] / n


ATTENTION_VARIANTS: dict[str, type[Attention]] = {
    variant.name: variant for variant in (LinearAttention, SoftmaxAttention)
}


def attention_variant(name: str) -> Attention:
    """The variant called ``name``; a ConfigError naming the known ones if there is none."""
    variant = ATTENTION_VARIANTS.get(name)
    if variant is None:
        raise ConfigError(f"unknown attention {name!r}: expected one of {', '.join(ATTENTION_VARIANTS)}")
    return variant()
