"""What every executor shares: the ``Executor`` protocol a ``register_executors`` factory returns,
the lookup by name, and the one loop (``collect``) that waits for runs, passes their progress on,
stops them on a signal and gathers their results, over a small ``Batch`` interface each executor
implements (see the package's docstring)."""

from __future__ import annotations

from typing import Callable, Protocol

from testbed.engine.loop import Report
from testbed.engine.run import RunPlan, RunResult
from testbed.errors import ConfigError
from testbed.experiment.signals import stop_on_signals
from testbed.plugins import Plugins
from testbed.plugins.registry import Registry

POLL_SECONDS = 0.5  # the longest the loop waits before it looks at a stop request again


class Executor(Protocol):
    """Where runs execute: what a ``register_executors`` factory returns."""

    name: str

    def capacity(self) -> int:
        """How many runs execute at once."""

    def execute(self, plans: list[RunPlan], plugins: Plugins, report: Report) -> tuple[list[RunResult], bool]:
        """Run ``plans``; return their results in order and whether the user interrupted."""

    def close(self) -> None:
        """Release what the executor started (a local Ray instance)."""


ExecutorFactory = Callable[[int | None, str | None], Executor]  # factory(workers, address)


def make_executor(registry: Registry, name: str, workers: int | None = None,
                  address: str | None = None) -> Executor:
    """The executor registered as ``name``; an unknown name, or an address for an executor that
    takes none, is a ConfigError naming what is registered."""
    entry = registry.get("executor", name, "executor")
    if address is not None and not entry.metadata["takes_address"]:
        takers = [e.name for e in registry.list("executor") if e.metadata["takes_address"]]
        raise ConfigError(f"executor {name!r} takes no address (those that do: {', '.join(takers) or 'none'})")
    return entry.factory(workers, address)


class Batch(Protocol):
    """The runs of one ``Executor.execute`` call, as ``collect`` drives them."""

    def start(self, report: Report) -> None:
        """Queue or submit the runs; their progress events go to ``report``."""

    def pending(self) -> bool:
        """Whether a run is running, or waiting and still allowed to start."""

    def poll(self, timeout: float) -> list[RunResult]:
        """Start what may start, wait up to ``timeout`` seconds; the results of the runs that ended."""

    def request_stop(self) -> None:
        """The first stop signal: running runs stop at their next step, with a checkpoint, and no
        other run starts. Called in the signal handler: set a flag, nothing that can fail."""

    def request_stop_at_once(self) -> None:
        """The second stop signal, in the handler too; ``stop_at_once`` follows at the loop's next turn."""

    def stop_at_once(self) -> list[RunResult]:
        """End the running runs now; their results (interrupted, as their last checkpoint left them)."""

    def close(self) -> None:
        """Release what the batch holds (worker processes, an actor); called however the loop ends."""


class _StopRequests:
    """The stop signals received while ``collect`` runs, passed on to the batch."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.requested = False
        self.at_once = False

    def first(self) -> None:
        self.requested = True
        self.batch.request_stop()

    def second(self) -> None:
        self.at_once = True
        self.batch.request_stop_at_once()


def collect(batch: Batch, plans: list[RunPlan], report: Report) -> tuple[list[RunResult], bool]:
    """Drive ``batch`` until its runs ended or were stopped; every plan's result in plan order (a run
    that never ran: ``not_run``) and whether the user interrupted."""
    stop = _StopRequests(batch)
    finished: dict[str, RunResult] = {}  # by run_dir: unique in a sweep
    # The signal handlers only set flags: an exception raised between two reads of a pipe would
    # leave half a message in it.
    with stop_on_signals(stop.first, stop.second):
        try:
            batch.start(report)
            while batch.pending():
                finished.update((result.run_dir, result) for result in batch.poll(POLL_SECONDS))
                if stop.at_once:
                    finished.update((result.run_dir, result) for result in batch.stop_at_once())
                    break
        finally:
            batch.close()
    results = [finished.get(plan.run_dir) or not_run(plan) for plan in plans]
    return results, stop.requested or any(r.status == "interrupted" for r in results)


def longest_first(plans: list[RunPlan]) -> list[RunPlan]:
    """Runs with more diagnostics start first, so that no worker is left with a long run at the end
    while the others idle (a stable sort: otherwise the plan's order)."""
    def diagnostics(plan: RunPlan) -> int:
        return sum(spec.applies_to(plan.optimizer.label, plan.seed) for spec in plan.config.diagnostics)

    return sorted(plans, key=diagnostics, reverse=True)


def not_run(plan: RunPlan) -> RunResult:
    """The result of a run that never started."""
    return unfinished(plan, "interrupted", "not started")


def failed(plan: RunPlan, error: str) -> RunResult:
    """The result of a run that failed outside the engine (its executor says why)."""
    return unfinished(plan, "failed", error)


def unfinished(plan: RunPlan, status: str, error: str, steps_done: int = 0) -> RunResult:
    """A result for ``plan`` that the engine did not return: ``status`` after ``steps_done`` steps."""
    return RunResult(plan.key, plan.optimizer.label, plan.optimizer.name, plan.seed, status, steps_done,
                     plan.run_dir, 0.0, lr=plan.optimizer.lr, error=error, run_id=plan.run_id or None)
