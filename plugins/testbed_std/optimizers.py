"""Standard optimizers: sgd, adam, adamw, and any torch.optim class by name (``torch``)."""

from __future__ import annotations

import inspect

import torch

from testbed import Option, hookimpl


def _check_betas(betas: list[float]) -> None:
    if not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must lie in [0, 1), got {betas}")


WEIGHT_DECAY = Option(0.0, "L2 penalty (coupled, as torch applies it)", min=0.0)
ADAM_OPTIONS = {
    "betas": Option([0.9, 0.999], "(beta1, beta2); the paper uses (0.9, 0.9)", type=list, item=float,
                    length=2, check=_check_betas),
    "eps": Option(1e-8, "added to the denominator", min=0.0, min_exclusive=True),
    "weight_decay": WEIGHT_DECAY,
    "amsgrad": Option(False, "use the AMSGrad variant"),
}


def make_sgd(params, lr: float, momentum: float, dampening: float, nesterov: bool, weight_decay: float):
    return torch.optim.SGD(params, lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                           weight_decay=weight_decay)


def make_adam(params, lr: float, betas: list[float], eps: float, weight_decay: float, amsgrad: bool):
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


def make_adamw(params, lr: float, betas: list[float], eps: float, weight_decay: float, amsgrad: bool):
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


def _torch_class(name: str) -> type[torch.optim.Optimizer]:
    cls = getattr(torch.optim, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer)) or cls is torch.optim.Optimizer:
        available = sorted(
            n for n, c in vars(torch.optim).items()
            if inspect.isclass(c) and issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer
        )
        raise ValueError(f"torch.optim has no optimizer {name!r}; available: {', '.join(available)}")
    return cls


def _check_kwargs(cls: type, kwargs: dict) -> None:
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "params", "lr"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"{cls.__name__} takes no keyword {unknown[0]!r} (it takes: {', '.join(sorted(accepted))})")


def make_torch(params, lr: float, kwargs: dict, **options):
    cls = _torch_class(options["class"])
    _check_kwargs(cls, kwargs)
    # YAML lists become tuples where torch expects them (betas, etas, step_sizes).
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return cls(params, lr=lr, **kwargs)


@hookimpl
def register_optimizers(register) -> None:
    register("sgd", make_sgd, options={
        "momentum": Option(0.0, "heavy-ball momentum; the paper's SGDM uses 0.9", min=0.0),
        "dampening": Option(0.0, "momentum dampening", min=0.0),
        "nesterov": Option(False, "Nesterov momentum"),
        "weight_decay": WEIGHT_DECAY,
    }, doc="Stochastic gradient descent with (heavy-ball or Nesterov) momentum, torch.optim.SGD")
    register("adam", make_adam, options=ADAM_OPTIONS, doc="Adam (Kingma & Ba 2015), torch.optim.Adam")
    register("adamw", make_adamw, options={**ADAM_OPTIONS, "weight_decay": Option(
        0.01, "decoupled weight decay", min=0.0)}, doc="AdamW, decoupled weight decay, torch.optim.AdamW")
    register("torch", make_torch, options={
        "class": Option(type=str, doc="a torch.optim class name, e.g. RMSprop"),
        "kwargs": Option({}, "keyword arguments of that class, besides params and lr"),
    }, doc="Any torch.optim optimizer by class name, with its keyword options",
        needs_closure=lambda options: options["class"] == "LBFGS")
