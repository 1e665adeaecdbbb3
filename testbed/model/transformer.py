"""The linear Transformer of Ahn et al. (ICLR 2024), docs/paper.md section 1.

One prompt is a matrix Z with d+1 rows and n+1 columns: column i <= n is (x_i, y_i), the last column
is the query (x_q, 0). Layer l maps

    Z <- Z + (1/n) P_l Z M (Z^T Q_l Z),    M = diag(1, ..., 1, 0)

and the prediction is yhat = -Z[d, n] after the last layer. That is linear attention; an attention
variant (``attention.py``) replaces the scores Z^T Q Z by its own weights, e.g. their softmax.
``LinearTransformer`` asks its variant for the layer update (linear attention: the associative form
``P (Z M Z^T) Q Z``, whose inner product is only (d+1) x (d+1): linear in n). ``direct_forward`` is
a literal transcription with the (n+1) x (n+1) weight matrix, the reference the tests and the
benchmark compare against.
"""

from __future__ import annotations

import ctypes
import contextlib
import math
from typing import Callable, Iterable, NamedTuple

import torch
from torch import nn
from torch.autograd.graph import increment_version

from testbed.model import kernel as kernels
from testbed.model.attention import attention_variant
from testbed.model.config import PARAMETERIZATIONS, ModelConfig
from testbed.model.kernel import feature_map as feature_kernel
from testbed.model.kernel.linear_attention import CompiledLinearAttentionStack, LinearAttentionStack
from testbed.model.kernel import softmax_attention
from testbed.tasks import shape_problem


class FeatureMap(nn.Module):
    """ReLU MLP on covariates; Linear-layer default init law, drawn from the init generator."""

    def __init__(self, sizes: list[int], generator: torch.Generator):
        super().__init__()
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        with torch.no_grad():
            for linear in self.linears:
                bound = 1.0 / math.sqrt(linear.in_features)
                linear.weight.uniform_(-bound, bound, generator=generator)
                linear.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP applied to the last dimension of ``x``."""
        for i, linear in enumerate(self.linears):
            x = linear(x)
            if i < len(self.linears) - 1:
                x = torch.relu(x)
        return x


class LinearTransformer(nn.Module):
    """The paper's model. Parameters are stacked over layers (one tensor each for A and B, or P and Q),
    which keeps the optimizer step to a couple of tensor operations. The attention variant
    (``self.attention``, named by ``config.attention``) computes each layer's update.

    block_sparse: P_l = [[B_l, 0], [0, 1]], Q_l = [[A_l, 0], [0, 0]], trainable A (L,d,d), B (L,d,d).
    full:         P_l, Q_l unconstrained, trainable P (L,d+1,d+1), Q (L,d+1,d+1).
    """

    def __init__(self, config: ModelConfig, d: int, n: int, generator: torch.Generator):
        super().__init__()
        if config.parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {config.parameterization!r}")
        self.attention = attention_variant(config.attention)
        self.config = config
        self.n = n
        self.use_kernel = True  # False: always the plain-autograd path (twice differentiable)
        self.feature_map = None
        if config.feature_map is not None:
            out_dim = config.feature_map.out_dim or d
            sizes = [d, *config.feature_map.hidden, out_dim]
            self.feature_map = FeatureMap(sizes, generator)
            d = out_dim
        self.d = d
        L, std = config.layers, config.init_std
        if config.parameterization == "block_sparse":
            self.A = nn.Parameter(torch.randn(L, d, d, generator=generator) * std)
            self.B = nn.Parameter(torch.randn(L, d, d, generator=generator) * std)
        else:
            self.P = nn.Parameter(torch.randn(L, d + 1, d + 1, generator=generator) * std)
            self.Q = nn.Parameter(torch.randn(L, d + 1, d + 1, generator=generator) * std)

    def attention_matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """P and Q of every layer as (L, d+1, d+1) tensors."""
        if self.config.parameterization == "full":
            return self.P, self.Q
        d = self.d
        # Pad to (d+1)x(d+1); the fixed 1 of P is a constant, so B of the last layer keeps an
        # exactly-zero (not missing) gradient.
        P = nn.functional.pad(self.B, (0, 1, 0, 1)) + _corner(d, self.B)
        Q = nn.functional.pad(self.A, (0, 1, 0, 1))
        return P, Q

    @property
    def input_d(self) -> int:
        """Features of a covariate: the task's d (a feature map maps them to ``self.d``)."""
        return self.d if self.feature_map is None else self.feature_map.linears[0].in_features

    def prompt(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Z (B, d+1, n+1) from covariates and labels, with the query's label hidden (set to 0).
        Every path (compiled kernel, torch, autograd, Hessians) starts here, so it rejects prompts of
        another shape: torch would take extra tokens for context and compute a meaningless loss."""
        self._check_prompts(x, y)
        if self.feature_map is not None:
            x = self.feature_map(x)
        y = torch.cat([y[:, :-1], torch.zeros_like(y[:, -1:])], dim=1)
        return torch.cat([x, y.unsqueeze(-1)], dim=2).transpose(1, 2)

    def _check_prompts(self, x: torch.Tensor, y: torch.Tensor) -> None:
        problem = shape_problem(x, y, x.shape[0] if x.dim() else 0, self.n, self.input_d)
        if problem is not None:
            raise ValueError(f"prompts of the wrong shape: {problem}")

    def _kernel_prompt(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``prompt(x, y)`` laid out contiguously, as the compiled kernel reads it. Without a feature
        map or a gradient to take, the same entries are copied into place in one pass: ``prompt``'s
        two concatenations and the transposing copy ``contiguous()`` makes cost twice as much."""
        if (self.feature_map is not None or x.dtype != y.dtype
                or (torch.is_grad_enabled() and (x.requires_grad or y.requires_grad))):
            return self.prompt(x, y).contiguous()
        self._check_prompts(x, y)
        B, N1, d = x.shape
        Z = torch.empty(B, d + 1, N1, dtype=x.dtype, device=x.device)
        Z[:, :d].copy_(x.transpose(1, 2))
        Z[:, d, :-1].copy_(y[:, :-1])
        Z[:, d, -1] = 0  # the query's label, hidden
        return Z

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Predictions yhat (B,) for the query of every prompt.

        A variant with a compiled kernel (linear and softmax attention, ``COMPILED_STACKS``) runs
        through it and its hand-written gradient (first order); without the library, linear
        attention runs through the same gradient in torch (``linear_attention``) and softmax
        attention through ``autograd_forward``: the same computation in plain autograd, which
        supports higher derivatives (Hessians) and ``torch.func`` transforms.
        """
        if not self.use_kernel:
            return self.autograd_forward(x, y)
        library = self._compiled_kernel()
        if library is not None:
            P, Qc, r = self.kernel_matrices()
            stack = COMPILED_STACKS[self.attention.name].function
            return stack.apply(self._kernel_prompt(x, y), P, Qc, r, self.n, library)  # laid out as it reads it
        if not self.attention.kernel_supported:
            return self.autograd_forward(x, y)
        P, Qc, r = self.kernel_matrices()
        return LinearAttentionStack.apply(self.prompt(x, y), P, Qc, r, self.n)

    def loss_backward(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The mean squared error of the predictions, with its gradient accumulated into every
        parameter's ``.grad`` (as ``loss.backward()`` would). For linear and softmax attention
        (float32 or float64) the compiled kernel computes both in one pass over the batch, tile by
        tile."""
        parameters = list(self.parameters())  # walked once a step: the checks below all read it
        library = self._compiled_kernel(parameters)
        if library is None:
            loss = mse_loss(self(x, y), target)
            loss.backward()
            return loss.detach()
        loss = self._loss_grad_from_covariates(library, parameters, x, y, target)
        if loss is not None:
            return loss
        features = self._compiled_features(x, y)
        Z0 = self._kernel_prompt(x, y) if features is None else features.prompt(x, y)
        # Without an autograd graph below the prompt or a hook to call, the parameters' gradients are
        # added by hand (``_accumulate_matrix_gradients``), so P and Qc need no graph either.
        direct = not Z0.requires_grad and _without_hooks(parameters)
        with torch.no_grad() if direct else contextlib.nullcontext():
            P, Qc, r = self.kernel_matrices()
        tensors = [t.detach().contiguous() for t in (Z0, target, P, Qc)]
        B, D, N1, _ = kernels.stack_sizes(tensors[0], tensors[2], tensors[3], r, self.n)
        kernels.check_arguments(P.dtype, target=(tensors[1], (B,)))
        loss, dP, dQc = torch.empty((), dtype=P.dtype), torch.empty_like(P), torch.empty_like(Qc)
        wants_dZ = Z0.requires_grad or features is not None
        dZ = torch.empty(Z0.shape, dtype=P.dtype) if wants_dZ else None  # contiguous, unlike Z0
        compiled = COMPILED_STACKS[self.attention.name]
        loss_grad = kernels.entry(library, f"{compiled.prefix}_loss_grad", P.dtype)
        status = loss_grad(B, D, N1, r, self.n, self.config.layers, *(t.data_ptr() for t in tensors),
                           loss.data_ptr(), dZ.data_ptr() if dZ is not None else None,
                           dP.data_ptr(), dQc.data_ptr())
        if status:
            raise MemoryError(f"{self.attention.name}-attention kernel: out of memory")
        if features is not None:
            features.accumulate_grad(x, dZ)
        if direct:
            self._accumulate_matrix_gradients(dP, dQc)
            return loss
        # The rest of the graph (P from B, a feature map the compiled one does not cover) is autograd.
        roots, grads = [P, Qc], [dP, dQc]
        if Z0.requires_grad:
            roots.append(Z0)
            grads.append(dZ)
        torch.autograd.backward(roots, grads)
        return loss

    def _loss_grad_from_covariates(self, library, parameters: list[nn.Parameter], x: torch.Tensor,
                                   y: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        """``loss_backward`` for linear attention in one kernel call that reads the covariates and
        labels themselves (la_loss_grad_xy lays each tile of prompts out as ``prompt`` would: no
        prompt is built), when nothing asks for more: no feature map, no gradient for the prompts, no
        hook on a parameter (``parameters``, all of one dtype), prompts in the parameters' dtype.
        None otherwise. Every training step runs it, so it builds as little as it can."""
        if (self.attention.name != "linear" or self.feature_map is not None or not _without_hooks(parameters)
                or (torch.is_grad_enabled() and (x.requires_grad or y.requires_grad))):
            return None
        self._check_prompts(x, y)
        dtype = parameters[0].dtype
        if x.dtype != dtype or y.dtype != dtype or target.dtype != dtype:
            return None
        x, y = _contiguous(x), _contiguous(y)
        if self.config.parameterization == "block_sparse":
            return self._block_sparse_loss_grad(library, x, y, target)
        P, Q, target = _contiguous(self.P.detach()), _contiguous(self.Q.detach()), _contiguous(target)
        (B, N1), (L, D, _) = y.shape, P.shape
        kernels.check_arguments(dtype, x=(x, (B, N1, D - 1)), y=(y, (B, N1)), target=(target, (B,)),
                                P=(P, (L, D, D)), Qc=(Q, (L, D, D)))
        loss, dP, dQ = torch.empty((), dtype=dtype), torch.empty_like(P), torch.empty_like(Q)
        if kernels.entry(library, "la_loss_grad_xy", dtype)(
                B, D, N1, D, self.n, L, x.data_ptr(), y.data_ptr(), target.data_ptr(), P.data_ptr(),
                Q.data_ptr(), loss.data_ptr(), dP.data_ptr(), dQ.data_ptr()):
            raise MemoryError("linear-attention kernel: out of memory")
        self._accumulate_matrix_gradients(dP, dQ)
        return loss

    def _block_sparse_loss_grad(self, library, x: torch.Tensor, y: torch.Tensor,
                                target: torch.Tensor) -> torch.Tensor:
        """``_loss_grad_from_covariates`` of a block-sparse model through la_loss_grad_block_sparse,
        which takes B and A themselves (it builds P as ``attention_matrices`` does), reads ``target``
        with its stride (y[:, -1] is not copied) and adds the gradients to the parameters' ``.grad``
        in place: no tensor is built here but the loss (and a .grad the first time)."""
        A, B_ = _contiguous(self.A.detach()), _contiguous(self.B.detach())
        dtype, (B, N1), L, d = A.dtype, y.shape, A.shape[0], self.d
        kernels.check_arguments(dtype, x=(x, (B, N1, d)), y=(y, (B, N1)), target=(target, (B,)),
                                A=(A, (L, d, d)), B=(B_, (L, d, d)), strided=("target",))
        loss = torch.empty((), dtype=dtype)
        (grad_A, add_A), (grad_B, add_B) = _gradient_buffer(self.A, dtype), _gradient_buffer(self.B, dtype)
        if kernels.entry(library, "la_loss_grad_block_sparse", dtype)(
                B, d, N1, self.n, L, target.stride(0), add_B, add_A, x.data_ptr(), y.data_ptr(),
                target.data_ptr(), B_.data_ptr(), A.data_ptr(), loss.data_ptr(), grad_B.data_ptr(),
                grad_A.data_ptr()):
            raise MemoryError("linear-attention kernel: out of memory")
        for parameter, grad, added in ((self.A, grad_A, add_A), (self.B, grad_B, add_B)):
            if added:  # as torch's add_ would have marked it
                increment_version(grad)
            else:  # no .grad yet, or one the kernel cannot add to in place (strided, another dtype)
                kernels.add_to_grad(parameter, grad)
        return loss

    def _accumulate_matrix_gradients(self, dP: torch.Tensor, dQc: torch.Tensor) -> None:
        """Add dLoss/dP and dLoss/dQc to the attention parameters' ``.grad`` as autograd would: A's is
        dQc, B's the top-left d x d block of dP (the rest of P is constant); a full model's are dP
        and dQc themselves."""
        if self.config.parameterization == "block_sparse":
            pairs = ((self.A, dQc), (self.B, dP[:, :self.d, :self.d]))
        else:
            pairs = ((self.P, dP), (self.Q, dQc))
        for parameter, grad in pairs:
            kernels.add_to_grad(parameter, grad)

    def _compiled_features(self, x: torch.Tensor, y: torch.Tensor) -> feature_kernel.CompiledFeatureMap | None:
        """The compiled feature map for the prompt of ``(x, y)`` (after checking its shape), or None:
        without a feature map, without the library, in another dtype than the parameters', or when
        a gradient to the prompts themselves is asked for (autograd then builds the prompt)."""
        if self.feature_map is None:
            return None
        self._check_prompts(x, y)
        dtype = self.feature_map.linears[0].weight.dtype
        library = feature_kernel.load()
        if (library is None or x.dtype != dtype or y.dtype != dtype
                or (torch.is_grad_enabled() and (x.requires_grad or y.requires_grad))):
            return None
        return feature_kernel.CompiledFeatureMap(library, self.feature_map.linears)

    def _compiled_kernel(self, parameters: list[nn.Parameter] | None = None):
        """The compiled kernel of this model's attention variant when it covers the model (a variant
        with one, its ``parameters`` all in float32 or all in float64), else None."""
        compiled = COMPILED_STACKS.get(self.attention.name)
        if compiled is None or not self.use_kernel:
            return None
        dtypes = {p.dtype for p in (self.parameters() if parameters is None else parameters)}
        if len(dtypes) != 1 or not dtypes <= kernels.DTYPES.keys():
            return None
        return compiled.load()

    def kernel_matrices(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """P (L, D, D), the core Qc (L, r, r) of Q and r: Q acts only on the first r rows of Z."""
        P, _ = self.attention_matrices()
        if self.config.parameterization == "block_sparse":
            return P, self.A, self.d
        return P, self.Q, self.d + 1

    def inert_parameters(self) -> torch.Tensor:
        """A mask over the flattened parameters: True where the prediction cannot depend on the
        entry (structural zeros of every derivative): B of the last layer, or every row but the
        last of the last layer's full P."""
        masks = []
        for name, p in self.named_parameters():
            mask = torch.zeros_like(p, dtype=torch.bool)
            if name == "B":
                mask[-1] = True
            elif name == "P":
                mask[-1, :-1] = True
            masks.append(mask.reshape(-1))
        return torch.cat(masks)

    def autograd_forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``forward`` in plain autograd: twice differentiable, works under ``torch.func``."""
        Z = self.prompt(x, y)
        P, Q = self.attention_matrices()
        last = self.config.layers - 1
        for layer in range(last):
            Z = Z + self.attention.update(Z, P[layer], Q[layer], self.n)
        return -(Z[:, -1, -1] + self.attention.query_label_update(Z, P[last], Q[last], self.n))


class CompiledStack(NamedTuple):
    """An attention variant's compiled kernel: its library loader (None where it cannot be built),
    the prefix of its entry points (``<prefix>_loss_grad_f32``...) and its autograd function."""
    load: Callable[[], ctypes.CDLL | None]
    prefix: str
    function: type[torch.autograd.Function]


# The variants a compiled kernel computes, forward and first-order backward (their Hessian-vector
# products: ``<prefix>_hvp``, see kernel/second_order.py); the others (and every variant where the
# library cannot be built) run through torch.
COMPILED_STACKS = {
    "linear": CompiledStack(kernels.load, "la", CompiledLinearAttentionStack),
    "softmax": CompiledStack(softmax_attention.load, "sa", softmax_attention.CompiledSoftmaxAttentionStack),
}


def _corner(d: int, like: torch.Tensor) -> torch.Tensor:
    """The constant part of a block-sparse P: a 1 at (d, d). Built at every call, not kept: made
    under a torch.func transform it would belong to that transform's level."""
    corner = torch.zeros(d + 1, d + 1, dtype=like.dtype, device=like.device)
    corner[d, d] = 1.0
    return corner


def _without_hooks(parameters: Iterable[nn.Parameter]) -> bool:
    """Whether the kernel's dP and dQc may be added to these parameters' ``.grad`` by hand (their
    derivative through ``kernel_matrices`` is a slice): no hook on any of them, which only a pass
    through autograd would call."""
    return all(not p._backward_hooks and not getattr(p, "_post_accumulate_grad_hooks", None)
               for p in parameters)


def _gradient_buffer(parameter: nn.Parameter, dtype: torch.dtype) -> tuple[torch.Tensor, bool]:
    """Where the kernel puts ``parameter``'s gradient: its ``.grad`` to add to in place (True) when the
    kernel can (contiguous, in ``dtype``, on the CPU, outside any graph), else a new tensor (False)."""
    grad = parameter.grad
    if (grad is not None and grad.dtype == dtype and grad.is_cpu and grad.is_contiguous()
            and not grad.requires_grad and grad.shape == parameter.shape):
        return grad, True
    return torch.empty(parameter.shape, dtype=dtype), False


def _contiguous(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor.contiguous()`` without its call when the tensor already is (most are, every step)."""
    return tensor if tensor.is_contiguous() else tensor.contiguous()


def direct_forward(model: LinearTransformer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Literal transcription of docs/paper.md section 1: every layer in full with the (n+1)x(n+1)
    weight matrix of the model's attention variant and the mask matrix M. Slow (quadratic in n);
    the reference for tests and `testbed bench`."""
    Z = model.prompt(x, y)
    P, Q = model.attention_matrices()
    n = model.n
    M = torch.diag(torch.cat([torch.ones(n), torch.zeros(1)])).to(Z)
    for layer in range(model.config.layers):
        weights = model.attention.reference_weights(Z, Q[layer])
        Z = Z + (P[layer] @ Z @ M @ weights) / n
    return -Z[:, -1, -1]


def mse_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The paper's loss: mean squared error over the batch (no 1/2)."""
    return (prediction - target).square().mean()
