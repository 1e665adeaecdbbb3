"""What a task plugin is: a sampler of in-context regression prompts.

A task states its dimension ``d`` and number of context examples ``n`` and samples batches only from
the ``torch.Generator`` it is handed (never the global RNG), so the engine controls every stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
        return self.y[:, -1]

    def __len__(self) -> int:
        return self.x.shape[0]


class Task:
    """Base class for task plugins. Subclasses set ``d`` and ``n`` and implement ``sample``."""

    d: int
    n: int

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        raise NotImplementedError


class InDtype(Task):
    """A task's prompts cast to another floating-point type (``train.dtype``). They are drawn as the
    task draws them, so a seed gives the same prompts in every dtype."""

    def __init__(self, task: Task, dtype: torch.dtype) -> None:
        self.task, self.dtype, self.d, self.n = task, dtype, task.d, task.n

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        batch = self.task.sample(batch_size, generator)
        return Batch(batch.x.to(self.dtype), batch.y.to(self.dtype))

    def __getattr__(self, name: str):  # the wrapped task's own attributes (a teacher, a covariance)
        return getattr(self.__dict__["task"], name)
