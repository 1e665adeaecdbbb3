"""Build a run's parts from its specs through the plugin registry: the task (its batches checked), the
model, the optimizer and the diagnostics. A plugin factory that rejects its options is a ConfigError
naming the plugin."""

from __future__ import annotations

import torch

from testbed.engine.specs import DiagnosticSpec, ExperimentConfig, OptimizerSpec, TaskSpec
from testbed.errors import ConfigError, TestbedError
from testbed.model.transformer import LinearTransformer
from testbed.plugins.registry import Entry, Registry
from testbed.tasks import Task, checked_task


def build_diagnostic(spec: DiagnosticSpec, registry: Registry, where: str = "diagnostic"):
    entry = registry.get("diagnostic", spec.name, f"{where}.name")
    return _call_factory(entry, where, lambda: entry.factory(**spec.options))


def build_task(spec: TaskSpec, registry: Registry):
    entry = registry.get("task", spec.name, "task.name")
    return _call_factory(entry, "task", lambda: entry.factory(d=spec.d, n=spec.n, **spec.options))


def build_optimizer(spec: OptimizerSpec, registry: Registry, params, where: str = "optimizer"):
    entry = registry.get("optimizer", spec.name, f"{where}.name")
    optimizer = _call_factory(entry, where, lambda: entry.factory(params, lr=spec.lr, **spec.options))
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"{where}: plugin {entry.plugin!r} returned {type(optimizer).__name__}, "
                          "not a torch.optim.Optimizer")
    return optimizer


def needs_closure(spec: OptimizerSpec, registry: Registry) -> bool:
    flag = registry.get("optimizer", spec.name, "optimizer").metadata["needs_closure"]
    return bool(flag(spec.options) if callable(flag) else flag)


def _call_factory(entry: Entry, where: str, build):
    try:
        return build()
    except TestbedError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {entry.kind} {entry.name!r} rejected its options: {exc}") from None


def run_task(config: ExperimentConfig, registry: Registry) -> Task:
    """The experiment's task, its prompts in ``train.dtype``; every batch it returns (training, eval,
    a diagnostic's) is checked before it reaches the model."""
    task = build_task(config.task, registry)
    return checked_task(task, config.task.name, getattr(torch, config.train.dtype))


def run_model(config: ExperimentConfig, task: Task, init: torch.Generator) -> LinearTransformer:
    """The model, initialized in float32 (the same weights in every dtype), then in ``train.dtype``."""
    return LinearTransformer(config.model, task.d, task.n, init).to(getattr(torch, config.train.dtype))
