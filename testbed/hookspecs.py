"""The hooks a testbed plugin can implement (pluggy project "testbed"). One line of doc each."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from testbed.plugins.registry import Register
    from testbed.engine.run import RunContext

hookspec = pluggy.HookspecMarker("testbed")


@hookspec
def register_optimizers(register: "Register") -> None:
    """Register optimizers: ``register(name, factory, options=..., doc=..., needs_closure=...)``."""


@hookspec
def register_tasks(register: "Register") -> None:
    """Register tasks: ``register(name, factory, options=..., doc=...)``; factory(d, n, **options)."""


@hookspec
def register_diagnostics(register: "Register") -> None:
    """Register diagnostics: ``register(name, factory, options=..., doc=..., schedule=..., plots=...)``."""


@hookspec
def register_executors(register: "Register") -> None:
    """Register executors: ``register(name, factory, doc=..., takes_address=False)``; factory(workers, address)."""


@hookspec
def register_commands(cli: "click.Group") -> None:
    """Add ``testbed`` subcommands to the click group ``cli``; a plugin that raises or reuses a name adds none."""


@hookspec
def on_run_start(run: "RunContext") -> None:
    """Called once a run's model, optimizer and logger exist, before its first step."""


@hookspec
def on_step_end(run: "RunContext", step: int, metrics: "dict[str, Any]") -> None:
    """Called after every optimizer step with the step number (1-based) and that step's metrics: loss,
    grad_norm (before clipping) and gradient_evaluations (1, or a closure optimizer's calls)."""


@hookspec
def on_run_end(run: "RunContext", status: str) -> None:
    """Always called when a run ends; status is completed, diverged, failed or interrupted."""
