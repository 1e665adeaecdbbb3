"""The progress display of `testbed run`, `reproduce` and `score`: runs done, ETA, and the latest eval
loss of each run, one display per phase of an experiment."""

from __future__ import annotations

import shutil
import sys
import time
from typing import Any, Callable, TextIO

import click

from testbed.experiment.runner import Phase
from testbed.experiment.tuning import describe_tuning


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class Progress:
    """Consumes engine events; on a terminal it redraws one status line, elsewhere it prints a
    line when a run ends and a status line every ``interval`` seconds."""

    def __init__(self, total_runs: int, steps_per_run: int, stream: TextIO | None = None,
                 interval: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.stream = stream or sys.stderr
        self.total_runs, self.steps_per_run = total_runs, steps_per_run
        self.interval, self.clock = interval, clock
        self.started = clock()
        self.last_print = self.started
        self.steps: dict[str, int] = {}
        self.evals: dict[str, float] = {}
        self.ended: dict[str, str] = {}
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __call__(self, event: dict[str, Any]) -> None:
        key = event["key"]
        if event["event"] == "start":
            self.steps[key] = 0
        elif event["event"] == "eval":
            self.steps[key], self.evals[key] = event["step"], event["loss"]
        elif event["event"] == "end":
            self.ended[key] = event["status"]
            if not self.tty:
                self._write(f"run {key} {event['status']}" + self._eval_text(key) + f"  [{self.status_line()}]")
        self._refresh()

    def _eval_text(self, key: str) -> str:
        return f", eval loss {self.evals[key]:.3e}" if key in self.evals else ""

    def eta(self) -> float | None:
        """Seconds left at the speed so far, over all runs; None before any step is done."""
        done = sum(self.steps_per_run if k in self.ended else s for k, s in self.steps.items())
        total = self.total_runs * self.steps_per_run
        elapsed = self.clock() - self.started
        if done == 0 or elapsed <= 0:
            return None
        return (total - done) * elapsed / done

    def status_line(self) -> str:
        """One line: runs done, the ETA, and each running run's step and last eval loss."""
        eta = self.eta()
        running = [k for k in self.steps if k not in self.ended]
        parts = [f"{len(self.ended)}/{self.total_runs} runs done",
                 f"ETA {_duration(eta)}" if eta is not None else "ETA -"]
        parts += [f"{k} {self.steps[k]}/{self.steps_per_run}{self._eval_text(k)}" for k in running]
        return " | ".join(parts)

    def _refresh(self) -> None:
        now = self.clock()
        if self.tty:
            width = shutil.get_terminal_size((120, 20)).columns - 1
            self.stream.write("\r" + self.status_line()[:width].ljust(width))
            self.stream.flush()
        elif now - self.last_print >= self.interval:
            self._write(self.status_line())

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()
        self.last_print = self.clock()

    def close(self) -> None:
        """End the live status line on a terminal (elsewhere nothing is pending)."""
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


class PhaseProgress:
    """A progress display per phase of an experiment (learning-rate pilots, then the main runs)."""

    def __init__(self) -> None:
        self.display: Progress | None = None
        self.code_changed: set[str] = set()  # plugins already said to have changed (once, not per phase)

    def start(self, phase: Phase) -> None:
        """Close the previous phase's display, say what the phase tuned, which plugins' edited code it
        runs again, what it cached and resumes, and show a bar over its runs (none when every run of
        the phase is already done)."""
        self.close()
        for tuning in phase.tuning:
            click.echo(describe_tuning(tuning))
        for plugin in sorted(set(phase.code_changed) - self.code_changed):
            click.echo(f"{plugin}: the plugin's code changed since the cached runs; running them again")
        self.code_changed.update(phase.code_changed)
        if phase.cached or phase.resumed:
            click.echo(f"{phase.name}: {phase.cached} runs already done (not run again), "
                       f"{phase.resumed} resume from a checkpoint")
        self.display = Progress(len(phase.plans), phase.steps_per_run) if phase.plans else None

    def __call__(self, event: dict) -> None:
        if self.display is not None:
            self.display(event)

    def close(self) -> None:
        """End the current phase's display, if any; safe to call again."""
        if self.display is not None:
            self.display.close()
            self.display = None
