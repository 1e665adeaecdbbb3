"""A real ``testbed.Probe`` on a tiny model and task, for unit tests of a diagnostic's ``measure``."""

from __future__ import annotations

import dataclasses

import torch

from testbed.engine.probe import Probe
from testbed.engine.seeds import generator, stream_seed
from testbed.model.config import ModelConfig
from testbed.model.transformer import LinearTransformer
from testbed.tasks import LinearRegressionTask, Task, checked_task

EVAL_SEED = 99  # the eval batch's seed, as a run's default eval.seed


class StandardNormalPrompts(LinearRegressionTask):
    """x ~ N(0, I_d) per token: the probe's task when none is given (the paper's settings 1 and 2)."""

    def covariates(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Standard normal covariates, shape ``(B, n+1, d)``."""
        return self.randn(batch_size, self.n + 1, self.d, generator=generator)


def tiny_probe(task: Task | None = None, d: int = 3, n: int = 6, layers: int = 2, batch_size: int = 64,
               seed: int = 0, init_std: float = 0.05, dtype: torch.dtype = torch.float32) -> Probe:
    """A real Probe, built as a run builds it, at the initial parameters of a tiny linear Transformer.

    ``task``: a task object (e.g. ``PluginSet.build_task``; its own ``d`` and ``n`` then win), else
    standard normal prompts of ``d`` features and ``n`` context tokens. The model is initialized from
    run seed ``seed``'s init stream (N(0, init_std^2) weights) and cast to ``dtype``; the eval batch has
    ``batch_size`` prompts drawn with seed 99; ``probe.sample`` and ``probe.generator`` behave as in a
    run. The probe has no update: see ``with_update``."""
    task = StandardNormalPrompts(d, n) if task is None else task
    prompts = checked_task(task, type(task).__name__, dtype)  # what a run samples: cast and checked
    model = LinearTransformer(ModelConfig(layers=layers, init_std=init_std), task.d, task.n,
                              generator(stream_seed(seed, "init"))).to(dtype)
    eval_batch = prompts.sample(batch_size, generator(EVAL_SEED))
    return Probe.of(model, prompts, eval_batch, batch_size, seed)


def with_update(probe: Probe, lr: float = 0.1) -> Probe:
    """A copy of ``probe`` as an update diagnostic (``needs_update = True``) sees it: one plain gradient
    step of size ``lr`` on a fresh training minibatch taken from the probed point, with
    ``next_params`` and that minibatch's ``train_gradient`` set."""
    batch = probe.sample(probe.train_batch_size, probe.generator("testbed.testing:update"))
    gradient = probe.gradient(batch=batch)
    return dataclasses.replace(probe, next_params=probe.params - lr * gradient, train_gradient=gradient)
