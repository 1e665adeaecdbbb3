"""Planted optimizers for the scoring protocol's sanity tests (issue 13). A plugin module: load it with
``load_plugins(extra={"score_plugins": score_plugins})`` (runs then execute in this process) or name
it in $TESTBED_PLUGINS (tests/ is on the test path, so worker processes find it too).

- ``adam_alias``: torch's Adam under another name; it must score exactly as adam does.
- ``random_sign_adam``: Adam whose update gets a random sign per coordinate at every step, from its
  own generator seeded by its ``seed`` option (deterministic); no learning rate can rescue it.
- ``twice``: plain SGD that evaluates the closure twice per step (same batch, so the same gradient):
  a closure optimizer whose steps cost two gradient evaluations each.
"""

from __future__ import annotations

from typing import Callable

import torch

from testbed import Option, hookimpl

BETAS = Option([0.9, 0.999], "(beta1, beta2)", type=list, item=float, length=2)


class RandomSignAdam(torch.optim.Adam):
    """Adam, then each coordinate of the update flipped with probability 1/2 (its own generator)."""

    def __init__(self, params, lr: float, betas: list[float], seed: int):
        super().__init__(params, lr=lr, betas=tuple(betas))
        self.signs = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        """Adam's step, with a random sign on every coordinate of its update."""
        params = [p for group in self.param_groups for p in group["params"]]
        before = [p.detach().clone() for p in params]
        loss = super().step(closure)
        for p, old in zip(params, before):
            sign = torch.randint(0, 2, p.shape, generator=self.signs).to(p.dtype) * 2 - 1
            p.copy_(old + sign * (p - old))
        return loss


class Twice(torch.optim.SGD):
    """SGD that calls its closure twice per step: twice the gradient evaluations, the same steps."""

    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        """Evaluate the closure twice, then take SGD's step with the (same) gradient."""
        if closure is None:
            raise ValueError("twice needs a closure (it registers needs_closure=True)")
        with torch.enable_grad():
            closure()
            loss = closure()
        super().step()
        return loss


def make_adam_alias(params, lr: float, betas: list[float]):
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas))


def make_random_sign_adam(params, lr: float, betas: list[float], seed: int):
    return RandomSignAdam(params, lr, betas, seed)


def make_twice(params, lr: float):
    return Twice(params, lr=lr)


@hookimpl
def register_optimizers(register) -> None:
    register("adam_alias", make_adam_alias, options={"betas": BETAS}, doc="Adam under another name")
    register("random_sign_adam", make_random_sign_adam,
             options={"betas": BETAS, "seed": Option(0, "seed of the sign generator", min=0)},
             doc="Adam with a random sign per coordinate on every update: a planted bad optimizer")
    register("twice", make_twice, options={}, doc="SGD evaluating its closure twice per step",
             needs_closure=True)
