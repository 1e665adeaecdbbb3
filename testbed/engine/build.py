"""Build a run's parts from its specs through the plugin registry: the task (its batches checked), the
model, the optimizer and the diagnostics. A plugin factory whose signature does not take the host's call
is a PluginError naming its signature and the call; one that rejects its options is a ConfigError."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

from testbed.engine.specs import DiagnosticSpec, ExperimentConfig, OptimizerSpec, TaskSpec
from testbed.diagnostics import Diagnostic, schedule_from
from testbed.errors import ConfigError, PluginError, TestbedError
from testbed.model.transformer import LinearTransformer
from testbed.plugins.registry import Entry, Registry
from testbed.tasks import Task, checked_task, use_stream

_NO_PARAMS = object()  # an optimizer's factory takes the parameters first; the others take keywords only


def build_diagnostic(spec: DiagnosticSpec, registry: Registry, where: str = "diagnostic") -> Diagnostic:
    """The diagnostic of ``spec``. Its factory gets its own options only; the host sets its schedule
    from the schedule options of ``spec`` (what they leave out: the schedule it declared)."""
    entry = registry.get("diagnostic", spec.name, f"{where}.name")
    own = {name: value for name, value in spec.options.items() if name in entry.options}
    diagnostic = _call_factory(entry, where, own)
    schedule = schedule_from(spec.options, entry.metadata["schedule"])
    # an older diagnostic builds the same schedule from the same options; any other is a conflict
    its_own = getattr(diagnostic, "schedule", Diagnostic.schedule)
    if its_own not in (Diagnostic.schedule, schedule):
        raise PluginError(f"{where}: diagnostic {entry.name!r} (plugin {entry.plugin!r}) sets its own schedule "
                          f"{its_own}; the host sets it from the config's every/steps/start/stop and the "
                          "schedule declared with register(..., schedule=...)")
    diagnostic.schedule = schedule
    return diagnostic


def build_task(spec: TaskSpec, registry: Registry):
    """The task of ``spec``: its factory gets d, n and its options."""
    entry = registry.get("task", spec.name, "task.name")
    return _call_factory(entry, "task", {"d": spec.d, "n": spec.n, **spec.options})


def build_optimizer(spec: OptimizerSpec, registry: Registry, params, where: str = "optimizer"):
    """The optimizer of ``spec`` over ``params``: its factory gets the learning rate and its options,
    and must return a torch.optim.Optimizer."""
    entry = registry.get("optimizer", spec.name, f"{where}.name")
    optimizer = _call_factory(entry, where, {"lr": spec.lr, **spec.options}, params=params)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"{where}: plugin {entry.plugin!r} returned {type(optimizer).__name__}, "
                          "not a torch.optim.Optimizer")
    return optimizer


def needs_closure(spec: OptimizerSpec, registry: Registry) -> bool:
    """Whether the optimizer's step takes a closure (its registered needs_closure, a flag or a
    function of its options)."""
    flag = registry.get("optimizer", spec.name, "optimizer").metadata["needs_closure"]
    return bool(flag(spec.options) if callable(flag) else flag)


def _call_factory(entry: Entry, where: str, keywords: dict[str, Any], params: Any = _NO_PARAMS):
    """``entry.factory([params, ]**keywords)``. A factory whose signature cannot take that call is the
    plugin's bug (a PluginError naming its signature and the call); one that raises ValueError or
    TypeError once called rejected the options (a ConfigError)."""
    args = () if params is _NO_PARAMS else (params,)
    mismatch = _signature_mismatch(entry.factory, args, keywords)
    if mismatch is not None:
        call = ", ".join([*(["params"] if args else []), *(f"{name}=..." for name in keywords)])
        raise PluginError(f"{where}: {entry.kind} {entry.name!r} (plugin {entry.plugin!r}): its factory "
                          f"{_named_signature(entry.factory)} cannot be called as the host calls it, "
                          f"factory({call}): {mismatch}")
    try:
        return entry.factory(*args, **keywords)
    except TestbedError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {entry.kind} {entry.name!r} rejected its options: {exc}") from None


def _signature_mismatch(factory: Callable[..., Any], args: tuple, keywords: dict[str, Any]) -> str | None:
    """Why ``factory(*args, **keywords)`` does not fit the factory's signature; None if it does or
    the signature is unknown (a builtin's)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature to check against
        return None
    try:
        signature.bind(*args, **keywords)
    except TypeError as exc:
        return str(exc)
    return None


def _named_signature(factory: Callable[..., Any]) -> str:
    """``make_sam(params, lr, rho=0.05)``: the factory's name and signature, as its author wrote them."""
    name = getattr(factory, "__qualname__", type(factory).__name__)
    try:
        return f"{name}{inspect.signature(factory)}"
    except (TypeError, ValueError):
        return name


def run_task(config: ExperimentConfig, registry: Registry) -> Task:
    """The experiment's task, its prompts drawn from ``train.stream`` in ``train.dtype``; every batch
    it returns (training, eval, a diagnostic's) is checked before it reaches the model."""
    task = use_stream(build_task(config.task, registry), config.train.stream)
    return checked_task(task, config.task.name, getattr(torch, config.train.dtype))


def run_model(config: ExperimentConfig, task: Task, init: torch.Generator) -> LinearTransformer:
    """The model, initialized in float32 (the same weights in every dtype), then in ``train.dtype``."""
    return LinearTransformer(config.model, task.d, task.n, init).to(getattr(torch, config.train.dtype))
