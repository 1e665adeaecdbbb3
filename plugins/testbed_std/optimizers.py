"""Standard optimizers: sgd, adam, adamw, and any torch.optim class by name (``torch``)."""

from __future__ import annotations

import inspect
import math
import reprlib
from typing import Any

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


def _number(value: Any, where: str) -> int | float:
    """A finite number; a numeric text is its number (YAML 1.1 reads 1e-4, without a dot, as text)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{where}: expected a number, got {reprlib.repr(value)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: expected a number, got {reprlib.repr(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: expected a finite number, got {reprlib.repr(value)}")
    return value


def _typed_keyword(value: Any, default: Any, where: str) -> Any:
    """``value`` as the keyword's default says torch expects it: true/false for a flag, a number for
    a number, a tuple of as many numbers for a tuple (betas, etas); where the default is None or text,
    a scalar or a list of numbers. Never a mapping or a nested list, which no torch.optim keyword takes."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {reprlib.repr(value)}")
        return value
    if isinstance(default, (int, float)):
        number = _number(value, where)
        if isinstance(default, int) and isinstance(value, str) and float(number).is_integer():
            return int(number)  # "1e3" for a count such as LBFGS's max_iter
        return number
    if isinstance(default, tuple):  # YAML lists become the tuples torch expects
        if not isinstance(value, list) or len(value) != len(default):
            raise ValueError(f"{where}: expected a list of {len(default)} numbers, got {reprlib.repr(value)}")
        return tuple(None if v is None and d is None else _number(v, f"{where}[{i}]")
                     for i, (v, d) in enumerate(zip(value, default)))
    if isinstance(value, list):
        return tuple(_number(v, f"{where}[{i}]") for i, v in enumerate(value))
    if _is_numeric(value):
        return _number(value, where)
    if value is None or isinstance(value, (bool, str)):
        return value
    raise ValueError(f"{where}: expected a number, true/false, a text or a list of numbers, got {reprlib.repr(value)}")


def _is_numeric(value: Any) -> bool:
    """A number, or a text that reads as one."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return False
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _typed_kwargs(cls: type, kwargs: dict) -> dict:
    """Every keyword typed by its default in the signature of ``cls`` (checked by ``_check_kwargs``)."""
    defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()}
    return {name: _typed_keyword(value, defaults[name], f"kwargs.{name}") for name, value in kwargs.items()}


def make_torch(params, lr: float, kwargs: dict, **options):
    cls = _torch_class(options["class"])
    _check_kwargs(cls, kwargs)
    return cls(params, lr=lr, **_typed_kwargs(cls, kwargs))


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
        needs_closure=lambda options: options["class"] == "LBFGS",
        check_options={"class": "RMSprop"})  # `testbed check` needs one class to build
