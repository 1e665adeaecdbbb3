"""Optimizers built only to be checked, without importing torch._dynamo.

``torch.optim.Optimizer.add_param_group`` is wrapped by ``torch._disable_dynamo``, which imports
torch._dynamo (1.5-2 s of a command's start) the first time an optimizer is built, only to mark the
method as not traceable by ``torch.compile``. A config check builds each optimizer once and throws it
away, untraced: the wrapper's cache slot is given the plain method for that while, so the check costs
no import. Outside the check (training) nothing changes; nothing at all changes if torch has moved the
wrapper or torch._dynamo is already imported.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

import torch

# Where torch._disable_dynamo's wrapper caches the disabled function (torch/_compile.py).
_CACHE_SLOT = "__dynamo_disable"


@contextmanager
def optimizers_without_dynamo() -> Iterator[None]:
    """Within: building a torch optimizer does not import torch._dynamo (its methods are not traced)."""
    method = getattr(torch.optim.Optimizer.add_param_group, "__wrapped__", None)
    if method is None or "torch._dynamo" in sys.modules or hasattr(method, _CACHE_SLOT):
        yield
        return
    setattr(method, _CACHE_SLOT, method)
    try:
        yield
    finally:
        delattr(method, _CACHE_SLOT)
