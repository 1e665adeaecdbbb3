"""Runs one run's diagnostics at their scheduled steps and logs their records."""

from __future__ import annotations

import contextlib
import math
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from testbed.diagnostics import Diagnostic, Figure, Histogram, Record, Scalar, Text
from testbed.engine.probe import Probe, flat_gradient, flatten
from testbed.errors import StorageError

FAILED_AT = " failed at step "  # in a raising diagnostic's message, right after its name


class DiagnosticRunner:
    """Runs one run's diagnostics at their steps and logs their records under diag/<name>/.
    A diagnostic that raises is reported (TensorBoard text, the run's results, its traceback appended
    to ``error_file``) and disabled for the rest of the run; the run itself goes on."""

    def __init__(self, diagnostics: list[tuple[str, Diagnostic]], probe: Probe, logger,
                 error_file: Path | None = None) -> None:
        self.diagnostics, self.probe, self.logger = diagnostics, probe, logger
        self.error_file = error_file
        self.disabled: set[str] = set()

    def state_dict(self) -> dict[str, Any]:
        """For a checkpoint: which diagnostics are disabled, and each diagnostic's own state."""
        return {"disabled": sorted(self.disabled), "diagnostics": {n: d.state_dict() for n, d in self.diagnostics}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (on resume from a checkpoint)."""
        self.disabled = set(state["disabled"])
        for name, diagnostic in self.diagnostics:
            diagnostic.load_state_dict(state["diagnostics"][name])

    def _due(self, step: int, update: bool) -> list[tuple[str, Diagnostic]]:
        return [(name, d) for name, d in self.diagnostics
                if d.needs_update == update and name not in self.disabled and d.schedule.due(step)]

    def at_point(self, model: torch.nn.Module, step: int, result) -> None:
        """Measure the point diagnostics due at ``step`` on the parameters after that step
        (step 0: the initial ones)."""
        due = self._due(step, update=False)
        if due:
            self.probe.params = flatten(model)
            self._measure(due, step, result)

    def before_update(self, model: torch.nn.Module, point: int) -> torch.Tensor | None:
        """The parameters before the update from ``point``, if an update diagnostic is due there."""
        return flatten(model) if self._due(point, update=True) else None

    def after_update(self, model: torch.nn.Module, point: int, before: torch.Tensor | None, result) -> None:
        """Measure the update diagnostics due at ``point``, given ``before_update``'s parameters
        (nothing when it returned None); the probe sees the update and its minibatch gradient."""
        if before is None:
            return
        self.probe.params, self.probe.next_params = before, flatten(model)
        self.probe.train_gradient = flat_gradient(model)
        try:
            self._measure(self._due(point, update=True), point, result)
        finally:
            self.probe.next_params = self.probe.train_gradient = None

    def finish(self, model: torch.nn.Module, step: int, result) -> None:
        """At the end of the run (``step``: steps done): each diagnostic still enabled logs its final records."""
        self.probe.params = flatten(model)
        for name, diagnostic in self.diagnostics:
            if name not in self.disabled:
                self._call(name, lambda: diagnostic.finish(self.probe, step), step, result)

    def _measure(self, due: list[tuple[str, Diagnostic]], step: int, result) -> None:
        for name, diagnostic in due:
            self._call(name, lambda: diagnostic.measure(self.probe, step), step, result)

    def _call(self, name: str, measure: Callable[[], list[Record]], step: int, result) -> None:
        started = time.perf_counter()
        try:
            for record in measure():
                self._log(name, record, step, result)
        except StorageError:  # the log directory failed, not the diagnostic: the run stops
            raise
        except Exception as exc:  # a diagnostic's bug must not stop the run
            message = f"{name}{FAILED_AT}{step} and is disabled for this run: {type(exc).__name__}: {exc}"
            result.diagnostic_errors.append(message)
            self.logger.text(f"diag/{name}/error", message, step)
            self.disabled.add(name)
            self._keep_traceback(f"diagnostic {message}")
        finally:  # what the run's time went to: `testbed bench --flagship` splits it
            seconds = result.diagnostic_seconds
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started

    def _keep_traceback(self, heading: str) -> None:
        """Append the traceback being handled to ``error_file``, under ``heading``: where the author looks."""
        if self.error_file is None:
            return
        with contextlib.suppress(OSError):  # a full disk: the message is in the results all the same
            with open(self.error_file, "a") as handle:
                handle.write(f"{heading}\n{traceback.format_exc()}\n")

    def _log(self, name: str, record: Record, step: int, result) -> None:
        if not isinstance(record, (Scalar, Histogram, Figure, Text)):
            raise TypeError(f"a diagnostic returned {type(record).__name__}, not a record")
        tag = f"diag/{name}/{record.tag}"
        if isinstance(record, Scalar):
            value = float(record.value)
            self.logger.scalar(tag, value, step)
            result.diagnostics.setdefault(f"{name}/{record.tag}", []).append([step, value])
            if not math.isfinite(value):
                result.diagnostic_errors.append(f"{name}: {record.tag} is {value} at step {step}")
        elif isinstance(record, Histogram):
            values = torch.as_tensor(record.values, dtype=torch.float64)
            finite = values[torch.isfinite(values)]
            if finite.numel():
                self.logger.histogram(tag, finite, step, bins=record.bins)
        elif isinstance(record, Figure):
            self.logger.figure(tag, record.figure, step)
        else:
            self.logger.text(tag, record.text, step)


def problems_by_diagnostic(errors: list[str]) -> dict[str, list[str]]:
    """A run's ``diagnostic_errors`` grouped by diagnostic, in order. Every message starts with the
    diagnostic's name (a registered name: no spaces, no colon)."""
    grouped: dict[str, list[str]] = {}
    for message in errors:
        name = message.split(" ", 1)[0].rstrip(":")
        grouped.setdefault(name, []).append(message)
    return grouped


def raised(message: str) -> bool:
    """Whether a ``diagnostic_errors`` message is a diagnostic that raised (not a non-finite value)."""
    return message.partition(" ")[2].startswith(FAILED_AT.lstrip())
