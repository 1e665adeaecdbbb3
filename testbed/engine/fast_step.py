"""The training step's optimizer update, gradient clipping and gradient zeroing without torch's
per-call machinery (profiler scopes, step hooks, grad-mode wrappers, grouping by device and dtype).

On the two small tensors of a Setting-1 model that machinery costs more than the arithmetic. Here
the same tensor operations run with the same scalars as torch 2.13 issues them on CPU: the
single-tensor Adam/AdamW and SGD updates (``_single_tensor_adam``, ``_single_tensor_sgd``: what CPU
parameters get by default) and ``clip_grad_norm_``'s foreach path, so every result is torch's bit for
bit, and ``optimizer.state`` is kept as torch keeps it (checkpoints, resume and lr changes work
unchanged). The ``_foreach_*`` operations used are torch's per-tensor operations in a C++ loop on CPU.
Where the compiled library builds (testbed.native.optimizer), the clipping and the Adam/AdamW (amsgrad
off) and SGD updates on contiguous tensors are each one call of the same arithmetic instead (the same
bits, tested); everything else takes these torch operations.
Whatever is not reproduced here (another optimizer or a subclass, hooks, foreach/fused/capturable/
differentiable/maximize, tensor hyperparameters, missing or sparse gradients, other dtypes or devices)
goes to torch itself.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch.autograd.graph import increment_version
from torch.optim.optimizer import Optimizer
# torch's registries of global step hooks (dicts that hooks are added to and removed from in place)
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from testbed.native.optimizer import (MAX_ELEMENTS, MAX_TENSORS, adam_step_function, clip_grad_norm_function,
                                      sgd_step_function)

_FLOAT_TYPES = (torch.float32, torch.float64)
Group = dict[str, Any]
State = dict[torch.Tensor, dict[str, Any]]
_OPERANDS: dict[tuple[float, bool, torch.dtype], torch.Tensor] = {}
MAX_OPERANDS = 256  # constants a run uses (betas, eps, momentum, max_norm): a handful
USE_COMPILED = True  # False: torch's operations even where the compiled library is at hand (tests, timing)


def step(optimizer: Optimizer) -> None:
    """``optimizer.step()`` (no closure), by the plain update where this module reproduces it."""
    plain = _PLAIN_UPDATES.get(type(optimizer))
    if plain is None or not _unhooked(optimizer) or not all(
            plain[0](group) and _plain_parameters(group["params"]) for group in optimizer.param_groups):
        optimizer.step()
        return
    with torch.no_grad():  # what torch's step runs under (differentiable=False)
        for group in optimizer.param_groups:
            plain[1](optimizer.state, group)


def zero_grad(optimizer: Optimizer, parameters: list[torch.Tensor]) -> None:
    """``optimizer.zero_grad(set_to_none=False)`` on ``parameters`` (the optimizer's own): the same
    gradients detached and zeroed in place, without its profiler scope."""
    if type(optimizer).zero_grad is not Optimizer.zero_grad or "zero_grad" in vars(optimizer):
        optimizer.zero_grad(set_to_none=False)
        return
    for p in parameters:
        grad = p.grad
        if grad is not None:
            if grad.grad_fn is not None:
                grad.detach_()
            elif grad.requires_grad:
                grad.requires_grad_(False)
            grad.zero_()


def clip_grad_norm(parameters: list[torch.Tensor], max_norm: float) -> float:
    """``torch.nn.utils.clip_grad_norm_(parameters, max_norm)`` (L2, no error on a non-finite norm) as
    a float: the same foreach operations when every gradient is a plain CPU tensor of one dtype."""
    grads = _uniform_grads(parameters)
    if grads is None:
        return float(torch.nn.utils.clip_grad_norm_(parameters, max_norm))
    compiled = _compiled_clip(grads)
    if compiled is not None:
        total_norm = compiled(grads, float(max_norm))
        increment_version(grads)  # as an in-place torch operation would
        return total_norm
    with torch.no_grad():
        total_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
        dtype = total_norm.dtype
        # max_norm / (total_norm + 1e-6) as torch's Tensor.__rtruediv__ computes it: a reciprocal, then a product
        clip_coef = (total_norm + _operand(1e-6, dtype)).reciprocal() * _operand(float(max_norm), dtype)
        torch._foreach_mul_(grads, torch.clamp(clip_coef, max=1.0))
    return float(total_norm)


def grad_norm(parameters: list[torch.Tensor]) -> float:
    """The L2 norm of all gradients together: the norm of the per-tensor norms."""
    grads = _uniform_grads(parameters)
    compiled = None if grads is None else _compiled_clip(grads)
    if compiled is not None:
        return compiled(grads, None)
    norms = [torch.linalg.vector_norm(p.grad) for p in parameters] if grads is None else torch._foreach_norm(grads, 2)
    return float(torch.linalg.vector_norm(torch.stack(norms)))


def _compiled_clip(grads: list[torch.Tensor]) -> Callable[[list[torch.Tensor], float | None], float] | None:
    """The compiled norm and clipping where ``grads`` (one dtype, from ``_uniform_grads``) fit it:
    dense, contiguous and non-empty float32/float64 tensors; else None."""
    if not USE_COMPILED or len(grads) > MAX_TENSORS or grads[0].dtype not in _FLOAT_TYPES:
        return None
    if not all(g.layout == torch.strided and g.is_contiguous() and 0 < g.numel() <= MAX_ELEMENTS for g in grads):
        return None
    return clip_grad_norm_function()


def _operand(value: float, dtype: torch.dtype) -> torch.Tensor:
    """``value`` as the 0-dim CPU tensor of ``dtype`` that torch makes of a Python scalar operand at
    every call (a wrapped number, then cast to the other operand's dtype), made once: the kernel sees
    the same value without the wrapping and the cast (4 dispatches, about 2 us, per tensor and call)."""
    if not math.isfinite(value):  # never cached (NaN keys would never match)
        return torch.tensor(value, dtype=dtype)
    key = (value, math.copysign(1.0, value) > 0, dtype)  # 0.0 and -0.0 are equal keys, not equal operands
    operand = _OPERANDS.get(key)
    if operand is None:
        if len(_OPERANDS) >= MAX_OPERANDS:  # hyperparameters changed step after step: keep memory bounded
            _OPERANDS.clear()
        operand = _OPERANDS[key] = torch.tensor(value, dtype=dtype)
    return operand


def _uniform_grads(parameters: list[torch.Tensor]) -> list[torch.Tensor] | None:
    """The gradients when every parameter has one and they form one foreach group (plain CPU tensors
    of one dtype: clip_grad_norm_'s single group, in parameter order); else None."""
    grads = [p.grad for p in parameters]
    if not grads or grads[0] is None:
        return None
    dtype = grads[0].dtype
    if all(type(g) is torch.Tensor and g.dtype == dtype and g.is_cpu for g in grads):
        return grads
    return None


def _unhooked(optimizer: Optimizer) -> bool:
    """No step hook (the instance's or global) and no wrapper of step on the instance (an lr
    scheduler's, for one): torch's step would run code the plain update does not."""
    return not (optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
                or _global_optimizer_pre_hooks or _global_optimizer_post_hooks
                or "step" in vars(optimizer)
                or getattr(optimizer, "grad_scale", None) is not None
                or getattr(optimizer, "found_inf", None) is not None)


def _plain_parameters(params: list[torch.Tensor]) -> bool:
    """Dense CPU parameters of one dtype, float32 or float64, each with a gradient: those torch
    updates one tensor at a time by default (on other devices it defaults to the multi-tensor
    arithmetic); one dtype, so that one 0-dim operand serves them all."""
    if not params or params[0].dtype not in _FLOAT_TYPES:
        return False
    dtype = params[0].dtype
    for p in params:
        grad = p.grad
        if grad is None or grad.is_sparse or not p.is_cpu or p.dtype != dtype:
            return False
    return True


def _plain_group(group: Group) -> bool:
    """Options that leave torch on its default single-tensor path with plain-number hyperparameters."""
    return (not group["foreach"] and not group["fused"] and not group["differentiable"]
            and not group["maximize"]
            and not any(isinstance(value, torch.Tensor) for key, value in group.items() if key != "params"))


def _plain_adam_group(group: Group) -> bool:
    """An Adam/AdamW group on ``_single_tensor_adam``'s non-capturable path with number betas."""
    return (_plain_group(group) and not group["capturable"]
            and not any(isinstance(beta, torch.Tensor) for beta in group["betas"]))


def _adam_update(state: State, group: Group) -> None:
    """torch 2.13's ``_single_tensor_adam`` (capturable and differentiable off) on one group."""
    params = group["params"]
    beta1, beta2 = group["betas"]
    lr, weight_decay, eps, amsgrad = group["lr"], group["weight_decay"], group["eps"], group["amsgrad"]
    dtype = params[0].dtype
    states = [_adam_state(state, p, amsgrad) for p in params]
    steps = [s["step"] for s in states]
    exp_avgs = [s["exp_avg"] for s in states]
    exp_avg_sqs = [s["exp_avg_sq"] for s in states]
    grads = [p.grad for p in params]
    if not amsgrad and _compiled_adam_update(group, params, grads, exp_avgs, exp_avg_sqs, steps):
        return
    for step_t in steps:  # torch's step_t += 1
        # fill_ with the sum taken in Python: a double holds a float32 counter plus one exactly (or, past
        # 2**53, rounds it to the counter itself, as float32 addition does), and fill_ rounds it once to
        # the counter's dtype, as the addition would; a fill costs half an add with its wrapped scalar
        step_t.fill_(step_t.item() + 1)
    if weight_decay != 0:
        if group["decoupled_weight_decay"]:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
        else:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, _operand(beta2, dtype))
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    step_sizes, bias_corrections2_sqrt = [], []
    for step_t in steps:
        step_value = step_t.item()
        step_sizes.append(-(lr / (1 - beta1 ** step_value)))
        bias_corrections2_sqrt.append((1 - beta2 ** step_value) ** 0.5)
    if amsgrad:
        second_moments = [s["max_exp_avg_sq"] for s in states]
        for max_exp_avg_sq, exp_avg_sq in zip(second_moments, exp_avg_sqs):
            torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
    else:
        second_moments = exp_avg_sqs
    denoms = torch._foreach_sqrt(second_moments)
    torch._foreach_div_(denoms, bias_corrections2_sqrt)
    torch._foreach_add_(denoms, _operand(eps, dtype))
    torch._foreach_addcdiv_(params, exp_avgs, denoms, step_sizes)


def _compiled_adam_update(group: Group, params: list[torch.Tensor], grads: list[torch.Tensor],
                          exp_avgs: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor], steps: list[torch.Tensor]) -> bool:
    """The update below (amsgrad off) in one compiled call where the tensors fit it; False, having
    changed nothing, where they do not (or torch's step would raise)."""
    beta1, beta2 = group["betas"]
    update = adam_step_function() if USE_COMPILED else None
    if update is None or not (0 < beta1 < 1 and 0 < beta2 < 1):  # pow(beta, step) as Python's ** computes it
        return False
    if not (_contiguous_like(params, [params, grads, exp_avgs, exp_avg_sqs]) and _step_counters(steps)):
        return False
    if not update(params, grads, exp_avgs, exp_avg_sqs, steps, group["lr"], beta1, beta2,
                  group["weight_decay"], group["eps"], group["decoupled_weight_decay"]):
        return False
    increment_version([*params, *exp_avgs, *exp_avg_sqs, *steps])  # as torch's in-place operations would
    return True


def _contiguous_like(params: list[torch.Tensor], lists: list[list[torch.Tensor]]) -> bool:
    """Every tensor of ``lists`` dense, contiguous, of the parameters' dtype and of its parameter's size."""
    dtype = params[0].dtype
    for i, p in enumerate(params):
        if not 0 < p.numel() <= MAX_ELEMENTS:
            return False
        for tensors in lists:
            t = tensors[i]
            if t.layout != torch.strided or t.dtype != dtype or not t.is_contiguous() or t.numel() != p.numel():
                return False
    return True


def _step_counters(steps: list[torch.Tensor]) -> bool:
    """One-element CPU step counters of one dtype, float32 or float64."""
    dtype = steps[0].dtype
    return dtype in _FLOAT_TYPES and all(s.dtype == dtype and s.numel() == 1 and s.is_cpu for s in steps)


def _adam_state(state: State, p: torch.Tensor, amsgrad: bool) -> dict[str, Any]:
    """The parameter's Adam state, created on its first step as Adam._init_group creates it."""
    p_state = state[p]
    if len(p_state) == 0:
        # a CPU step counter in the default scalar dtype (torch's _get_scalar_dtype)
        scalar_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        p_state["step"] = torch.tensor(0.0, dtype=scalar_dtype, device="cpu")
        p_state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        p_state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if amsgrad:
            p_state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return p_state


def _sgd_update(state: State, group: Group) -> None:
    """torch 2.13's ``_single_tensor_sgd`` on one group; momentum buffers kept in the state as SGD.step keeps them."""
    params = group["params"]
    lr, weight_decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
    grads = [p.grad for p in params]
    if _compiled_sgd_update(state, group, params, grads):
        return
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    if momentum != 0:
        grads = _momentum(state, params, grads, group)
    torch._foreach_add_(params, grads, alpha=-lr)


def _compiled_sgd_update(state: State, group: Group, params: list[torch.Tensor], grads: list[torch.Tensor]) -> bool:
    """The update above in one compiled call where the tensors fit it and every momentum buffer
    exists (a first step makes them: torch's path); False, having changed nothing, where not."""
    update = sgd_step_function() if USE_COMPILED else None
    if update is None:
        return False
    momentum = group["momentum"]
    buffers = [state[p].get("momentum_buffer") for p in params] if momentum != 0 else []
    if any(buffer is None for buffer in buffers):
        return False
    if not _contiguous_like(params, [params, grads, *([buffers] if buffers else [])]):
        return False
    update(params, grads, buffers, group["lr"], group["weight_decay"], momentum, group["dampening"], group["nesterov"])
    increment_version([*params, *buffers])  # as torch's in-place operations would
    return True


def _momentum(state: State, params: list[torch.Tensor], grads: list[torch.Tensor], group: Group) -> list[torch.Tensor]:
    """The momentum buffers updated with ``grads`` (a first step copies them); the directions SGD steps along."""
    momentum, dampening = group["momentum"], group["dampening"]
    states = [state[p] for p in params]
    buffers = [s.get("momentum_buffer") for s in states]
    running = [i for i, buffer in enumerate(buffers) if buffer is not None]
    if running:
        torch._foreach_mul_([buffers[i] for i in running], _operand(momentum, params[0].dtype))
        torch._foreach_add_([buffers[i] for i in running], [grads[i] for i in running], alpha=1 - dampening)
    for i, buffer in enumerate(buffers):
        if buffer is None:
            buffers[i] = states[i]["momentum_buffer"] = grads[i].detach().clone()
    if group["nesterov"]:
        return torch._foreach_add(grads, buffers, alpha=momentum)
    return buffers


_PLAIN_UPDATES: dict[type, tuple[Callable[[Group], bool], Callable[[State, Group], None]]] = {
    torch.optim.Adam: (_plain_adam_group, _adam_update),
    torch.optim.AdamW: (_plain_adam_group, _adam_update),  # Adam's step with decoupled weight decay
    torch.optim.SGD: (_plain_group, _sgd_update),
}
