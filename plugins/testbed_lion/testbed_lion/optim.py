"""Lion (EvoLved Sign Momentum), Chen et al. 2023, "Symbolic Discovery of Optimization
Algorithms", Algorithm 2, written from the published update rule:

    c      = b1 * m + (1 - b1) * g
    theta <- theta - lr * (sign(c) + wd * theta)
    m     <- b2 * m + (1 - b2) * g
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch


class Lion(torch.optim.Optimizer):
    """Lion optimizer. Each parameter moves by exactly ``lr`` per coordinate (plus decoupled weight
    decay), so ``lr`` is typically 3-10x smaller than AdamW's and ``weight_decay`` 3-10x larger."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
    ) -> None:
        if not 0.0 <= lr:
            raise ValueError(f"invalid learning rate: {lr}")
        if len(betas) != 2:
            raise ValueError(f"betas must be two numbers, got {betas!r}")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"invalid beta at index {i}: {beta} (need 0 <= beta < 1)")
        if not 0.0 <= weight_decay:
            raise ValueError(f"invalid weight_decay: {weight_decay}")
        defaults = dict(lr=lr, betas=(float(betas[0]), float(betas[1])), weight_decay=weight_decay)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one update; ``closure`` (torch convention) re-evaluates the loss with grads."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr: float = group["lr"]
            beta1, beta2 = group["betas"]
            weight_decay: float = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("Lion does not support sparse gradients")
                state = self.state[p]
                if len(state) == 0:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                exp_avg = state["exp_avg"]

                # Decoupled weight decay: scale theta before the sign step, as in AdamW.
                if weight_decay != 0.0:
                    p.mul_(1.0 - lr * weight_decay)
                # c = b1*m + (1-b1)*g; only its sign is used, so the step size is exactly lr.
                update = exp_avg.mul(beta1).add_(grad, alpha=1.0 - beta1).sign_()
                p.add_(update, alpha=-lr)
                # The momentum tracks g with the slower beta2, after the update (Algorithm 2).
                exp_avg.mul_(beta2).add_(grad, alpha=1.0 - beta2)
        return loss
