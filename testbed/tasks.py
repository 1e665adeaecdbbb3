"""What a task plugin is: a sampler of in-context regression prompts.

A task states its dimension ``d`` and number of context examples ``n`` and samples batches only from
the ``torch.Generator`` it is handed (never the global RNG), so the engine controls every stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from testbed.errors import BatchError


@dataclass(frozen=True)
class Batch:
    """A batch of prompts.

    ``x``: covariates, shape ``(B, n+1, d)``; the last token is the query.
    ``y``: labels, shape ``(B, n+1)``; ``y[:, -1]`` is the query's true label, which the model never
    sees (the model hides it when it builds the prompt matrix).
    """

    x: torch.Tensor
    y: torch.Tensor

    @property
    def target(self) -> torch.Tensor:
        """The query labels ``y[:, -1]``: what the model predicts and the loss compares with."""
        return self.y[:, -1]

    def __len__(self) -> int:
        return self.x.shape[0]


class Task:
    """Base class for task plugins. Subclasses set ``d`` and ``n`` and implement ``sample``, which
    returns a ``Batch`` of exactly ``batch_size`` prompts in float32 on the CPU (a run checks every
    batch and fails on a wrong one: see ``CheckedTask``)."""

    d: int
    n: int

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """``batch_size`` prompts drawn from ``generator`` alone (never the global RNG)."""
        raise NotImplementedError


class InDtype(Task):
    """A task's prompts cast to another floating-point type (``train.dtype``). They are drawn as the
    task draws them, so a seed gives the same prompts in every dtype."""

    def __init__(self, task: Task, dtype: torch.dtype) -> None:
        self.task, self.dtype, self.d, self.n = task, dtype, task.d, task.n

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """The wrapped task's prompts, cast to this dtype."""
        batch = self.task.sample(batch_size, generator)
        if not isinstance(batch, Batch) or not all(isinstance(t, torch.Tensor) for t in (batch.x, batch.y)):
            return batch  # not prompts at all: CheckedTask names what it is
        return Batch(batch.x.to(self.dtype), batch.y.to(self.dtype))

    def __getattr__(self, name: str):  # the wrapped task's own attributes (a teacher, a covariance)
        return getattr(self.__dict__["task"], name)


class CheckedTask(Task):
    """A task whose every batch is checked before it reaches the model. The compiled kernel trusts
    the sizes it is given: prompts of the wrong shape would make it read or write out of bounds (an
    abort) or compute a plausible but meaningless loss. The check compares shapes, dtypes and devices
    only, never entries: it runs on every step (and NaN labels are a divergence, not a wrong batch)."""

    def __init__(self, task: Task, name: str, dtype: torch.dtype) -> None:
        self.task, self.name, self.dtype, self.d, self.n = task, name, dtype, task.d, task.n

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """The wrapped task's prompts, or a BatchError naming what is wrong with them."""
        batch = self.task.sample(batch_size, generator)
        problem = batch_problem(batch, batch_size, self.n, self.d, self.dtype)
        if problem is not None:
            raise BatchError(f"task {self.name!r} returned {problem}")
        return batch

    def __getattr__(self, name: str):  # the wrapped task's own attributes (a teacher, a covariance)
        return getattr(self.__dict__["task"], name)


def checked_task(task: Task, name: str, dtype: torch.dtype) -> Task:
    """``task`` (registered as ``name``) as a run samples it: its prompts in ``dtype`` (train.dtype;
    tasks draw float32, so only another dtype casts them) and every batch checked."""
    return CheckedTask(task if dtype == torch.float32 else InDtype(task, dtype), name, dtype)


def batch_problem(batch: object, batch_size: int, n: int, d: int, dtype: torch.dtype) -> str | None:
    """What makes ``batch`` unfit for a model of ``n`` context tokens and ``d`` features in ``dtype``
    (on the CPU), e.g. "x of shape (64, 7, 6), expected (64, 7, 3) = (batch, n+1, d)"; None if fit."""
    if not isinstance(batch, Batch):
        return f"a {type(batch).__name__}, not a Batch"
    tensors = (("x", batch.x), ("y", batch.y))
    for name, value in tensors:
        if not isinstance(value, torch.Tensor):
            return f"{name} of type {type(value).__name__}, not a torch.Tensor"
    problem = shape_problem(batch.x, batch.y, batch_size, n, d)
    if problem is not None:
        return problem
    for name, value in tensors:
        if value.dtype != dtype:
            return f"{name} of dtype {_dtype_name(value.dtype)}, expected {_dtype_name(dtype)} (train.dtype)"
        if not value.is_cpu:
            return f"{name} on device {value.device}, expected cpu"
    return None


def shape_problem(x: torch.Tensor, y: torch.Tensor, batch_size: int, n: int, d: int) -> str | None:
    """What is wrong with the shapes of covariates ``x`` and labels ``y`` for ``batch_size`` prompts
    of ``n`` context tokens and ``d`` features (see ``Batch``), or None."""
    expected = (batch_size, n + 1, d)
    if x.shape != expected:
        return f"x of shape {tuple(x.shape)}, expected {expected} = (batch, n+1, d)"
    if y.shape != expected[:2]:
        return f"y of shape {tuple(y.shape)}, expected {expected[:2]} = (batch, n+1)"
    return None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
