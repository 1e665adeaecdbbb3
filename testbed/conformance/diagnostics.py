"""The checks of a diagnostic: it builds with its declared options, returns records of the kinds its
plots declare at its due steps, survives a ``state_dict`` round trip, leaves the training trajectory
bitwise unchanged and never modifies what its probe hands it.

A check run is a tiny training run (plain momentum descent on the core's reference task) with the
engine's own ``DiagnosticRunner`` calling the diagnostic as a run does, at every step unless its
``check_options`` set another schedule; every record it logs is kept in order."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from testbed.conformance.harness import (BATCH, CLIP, LR, SEED, STEPS, Fault, data_stream, declared_variants,
                                         eval_batch, first_difference, parameters_of, reference_task, round_trip,
                                         same_tensors, tiny_model)
from testbed.conformance.subject import Check, Subject
from testbed.diagnostics import Diagnostic, Record, Schedule
from testbed.engine.build import build_diagnostic
from testbed.engine.diagnostic_runner import DiagnosticRunner
from testbed.engine.loop import training_step
from testbed.engine.probe import Probe
from testbed.engine.run import RunResult
from testbed.engine.specs import DiagnosticSpec
from testbed.model.transformer import mse_loss
from testbed.tasks import checked_task

Logged = tuple[str, str, int, Any]  # (record kind, tag, step, value)


class RecordLog:
    """Where a check run's DiagnosticRunner logs: every record in order, as (kind, tag, step, value)."""

    def __init__(self) -> None:
        self.records: list[Logged] = []

    def scalar(self, tag: str, value: float, step: int) -> None:
        """Keep a scalar."""
        self.records.append(("Scalar", tag, step, float(value)))

    def histogram(self, tag: str, values: torch.Tensor, step: int, bins: Any = None) -> None:
        """Keep a histogram's samples."""
        self.records.append(("Histogram", tag, step, tuple(torch.as_tensor(values).flatten().tolist())))

    def figure(self, tag: str, figure: Any, step: int) -> None:
        """Note a figure and close it (as the engine does once logged)."""
        import matplotlib.pyplot as plt

        plt.close(figure)
        self.records.append(("Figure", tag, step, None))

    def text(self, tag: str, text: str, step: int) -> None:
        """Keep a text."""
        self.records.append(("Text", tag, step, text))


def _probe_view(probe: Probe) -> dict[str, list[torch.Tensor]]:
    """Copies of what a probe hands a diagnostic, by the name a fault message gives it."""
    view = {"probe.params": [probe.params], "probe.eval_batch": [probe.eval_batch.x, probe.eval_batch.y],
            "probe.model's parameters": list(probe.model.parameters())}
    for name in ("next_params", "train_gradient"):
        if getattr(probe, name) is not None:
            view[f"probe.{name}"] = [getattr(probe, name)]
    return {name: [t.detach().clone() for t in tensors] for name, tensors in view.items()}


class Watched(Diagnostic):
    """A diagnostic as the runner sees it, with every call checked: whatever the probe hands it
    must be bitwise the same after the call (``faults`` says what changed, and where)."""

    def __init__(self, inner: Diagnostic) -> None:
        self.inner = inner
        self.faults: list[str] = []

    @property
    def schedule(self) -> Schedule:  # the host set it on the diagnostic itself
        """The watched diagnostic's schedule."""
        return self.inner.schedule

    @property
    def needs_update(self) -> bool:
        """Whether the watched diagnostic is measured after the update."""
        return bool(self.inner.needs_update)

    def measure(self, probe: Probe, step: int) -> list[Record]:
        """The diagnostic's measurement, watched."""
        return self._watched(f"measure(probe, {step})", probe, lambda: self.inner.measure(probe, step))

    def finish(self, probe: Probe, step: int) -> list[Record]:
        """The diagnostic's final records, watched."""
        return self._watched(f"finish(probe, {step})", probe, lambda: self.inner.finish(probe, step))

    def state_dict(self) -> dict[str, Any]:
        """The diagnostic's own state."""
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the diagnostic's own state."""
        self.inner.load_state_dict(state)

    def _watched(self, call: str, probe: Probe, run: Callable[[], list[Record]]) -> list[Record]:
        before = _probe_view(probe)
        records = run()
        after = _probe_view(probe)
        changed = [name for name in before if name not in after or not same_tensors(before[name], after[name])]
        if changed:
            self.faults.append(f"{call} modified {', '.join(changed)}")
        return records


@dataclass
class CheckRun:
    """A tiny training run with (or without) the diagnostic under check, step by step as the engine's
    loop goes: point diagnostics after each step, update diagnostics with the update they describe."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    stream: torch.Generator
    runner: DiagnosticRunner
    watched: Watched | None
    log: RecordLog
    result: RunResult
    losses: list[float] = field(default_factory=list)  # each step's train loss, then its eval loss

    def advance(self, first: int, last: int) -> None:
        """Steps ``first`` to ``last`` (from 1: the initial point is measured first)."""
        task, runner, probe = self.runner.probe.task, self.runner, self.runner.probe
        if first == 1:
            runner.at_point(self.model, 0, self.result)
        for step in range(first, last + 1):
            batch = task.sample(BATCH, self.stream)
            before = runner.before_update(self.model, step - 1)
            measured = training_step(self.model, self.optimizer, batch, CLIP)
            runner.after_update(self.model, step - 1, before, self.result)
            runner.at_point(self.model, step, self.result)
            with torch.no_grad():
                evaluated = mse_loss(self.model(probe.eval_batch.x, probe.eval_batch.y), probe.eval_batch.target)
            self.losses += [measured["loss"], evaluated.item()]

    def finish(self) -> None:
        """The run's end: finish() of each diagnostic still enabled."""
        self.runner.finish(self.model, STEPS, self.result)

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the run, through a checkpoint's round trip."""
        diagnostics = round_trip(self.runner.state_dict(), "its state_dict()")
        rest = round_trip({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}, "the run")
        return {**rest, "diagnostics": diagnostics, "stream": self.stream.get_state()}

    def restore(self, state: dict[str, Any]) -> None:
        """Put the run where ``state`` (from ``state()``) left another."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.stream.set_state(state["stream"])
        self.runner.load_state_dict(state["diagnostics"])


def check_run(subject: Subject, measured: bool = True) -> CheckRun:
    """A fresh check run: the same weights, prompts and eval batch every time; the diagnostic built
    by the engine from the checked options (none when ``measured`` is false)."""
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)  # momentum: state to checkpoint
    task = checked_task(reference_task(), "reference", torch.float32)
    probe = Probe.of(model, task, eval_batch(), BATCH, SEED)
    log, watched = RecordLog(), None
    if measured:
        spec = DiagnosticSpec(subject.entry.name, dict(subject.options))
        watched = Watched(build_diagnostic(spec, subject.registry))
    runner = DiagnosticRunner([] if watched is None else [(subject.entry.name, watched)], probe, log)
    result = RunResult("check", "check", "check", SEED, "completed", 0, "", 0.0)
    return CheckRun(model, optimizer, data_stream(), runner, watched, log, result)


@dataclass
class MeasuredRun:
    """The check run every diagnostic check reads (made once per subject): finished, with where its
    records stood after half its steps and its state there, through a checkpoint's round trip (or
    the Fault that round trip raised)."""

    run: CheckRun
    half: int
    mark: int  # len(run.log.records) after step ``half``
    half_state: dict[str, Any] | Fault


def measured_run(subject: Subject) -> MeasuredRun:
    """The subject's measured run: every step, state taken after half of them, finished."""

    def make() -> MeasuredRun:
        run, half = check_run(subject), STEPS // 2
        run.advance(1, half)
        mark = len(run.log.records)
        try:
            state: dict[str, Any] | Fault = run.state()
        except Fault as fault:
            state = fault
        run.advance(half + 1, STEPS)
        run.finish()
        return MeasuredRun(run, half, mark, state)

    return subject.once("measured run", make)


# ------------------------------------------------------------------ the checks
def builds_with_declared_options(subject: Subject) -> str:
    """The factory accepts its defaults and every bound and choice its options declare."""
    variants = declared_variants(subject)
    for label, options in variants:
        try:
            build_diagnostic(DiagnosticSpec(subject.entry.name, options), subject.registry)
        except Exception as exc:
            raise Fault(f"the factory fails with {label}, a value its options declare valid: "
                        f"{type(exc).__name__}: {exc}") from None
    return f"{len(variants)} option settings"


def returns_declared_records(subject: Subject) -> str:
    """Every call returns records (finite scalars), and each plot it declares finds its records."""
    run = measured_run(subject).run
    if run.result.diagnostic_errors:
        raise Fault(run.result.diagnostic_errors[0])
    if not run.log.records:
        raise Fault(f"returned no records in a {STEPS}-step run (schedule {run.watched.schedule})")
    prefix = f"diag/{subject.entry.name}/"
    logged = {(kind, tag.removeprefix(prefix)) for kind, tag, _, _ in run.log.records}
    for plot in subject.entry.metadata.get("plots", ()):
        wanted = [("Histogram", plot.tag)] if plot.kind == "histogram" else [("Scalar", tag) for tag in plot.scalars]
        for kind, tag in wanted:
            if (kind, tag) not in logged:
                raise Fault(f"declares the {plot.kind} plot {plot.tag!r}, but returned no {kind} {tag!r} in a "
                            f"{STEPS}-step run (schedule {run.watched.schedule})")
    return f"{len(run.log.records)} records in {STEPS} steps"


def survives_a_state_round_trip(subject: Subject) -> str:
    """Stopped after half the steps, its state_dict through a checkpoint, a fresh diagnostic loads it
    and goes on: it returns bitwise the records of the unbroken run."""
    measured = measured_run(subject)
    if isinstance(measured.half_state, Fault):
        raise measured.half_state
    half = measured.half
    resumed = check_run(subject)
    resumed.restore(measured.half_state)
    resumed.advance(half + 1, STEPS)
    resumed.finish()
    expected, got = measured.run.log.records[measured.mark:], resumed.log.records
    index = _first_different_record(expected, got)
    if index is not None:
        raise Fault(f"resumed from its state_dict() after step {half}, it returned {_describe(got, index)}, the "
                    f"unbroken run {_describe(expected, index)}: state_dict() drops part of its state (or "
                    "load_state_dict() does not restore it)")
    return f"resumed after step {half} of {STEPS}: {len(got)} records alike"


def _first_different_record(a: list[Logged], b: list[Logged]) -> int | None:
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y and not _both_nan(x, y):
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def _both_nan(x: Logged, y: Logged) -> bool:
    return (x[:3] == y[:3] and isinstance(x[3], float) and isinstance(y[3], float)
            and math.isnan(x[3]) and math.isnan(y[3]))


def _describe(records: list[Logged], index: int) -> str:
    if index >= len(records):
        return "no record"
    kind, tag, step, value = records[index]
    shown = f" = {value!r}" if kind == "Scalar" else ""
    return f"{kind} {tag!r}{shown} at step {step}"


def leaves_the_trajectory_unchanged(subject: Subject) -> str:
    """Trained with it measuring and without it: bitwise the same train and eval losses, and weights."""
    with_it = measured_run(subject).run
    without = check_run(subject, measured=False)
    without.advance(1, STEPS)
    index = first_difference(with_it.losses, without.losses)
    if index is not None or not same_tensors(parameters_of(with_it.model), parameters_of(without.model)):
        where = (f"{'eval' if index % 2 else 'train'} loss of step {index // 2 + 1}" if index is not None
                 else "final weights")
        raise Fault(f"the run it measures differs from the same run without it in the {where}: it changes "
                    "what training computes (the eval batch, the task, or other state reached through the probe)")
    return f"{STEPS} steps alike"


def leaves_its_probe_unchanged(subject: Subject) -> str:
    """No call changes the parameters (or anything else) its probe hands it."""
    run = measured_run(subject).run
    if run.watched.faults:
        raise Fault(f"{run.watched.faults[0]}: a diagnostic works on copies (e.g. probe.params.clone()), since "
                    "the probe is shared by every diagnostic measured at that step")
    return f"every call of a {STEPS}-step run left parameters, update, gradient, eval batch and model as handed"


CHECKS = (
    Check("options", "builds with its declared options (defaults, bounds, choices)", builds_with_declared_options),
    Check("records", "returns records of its declared kinds at its due steps", returns_declared_records),
    Check("resume", "survives a state_dict() round trip", survives_a_state_round_trip),
    Check("trajectory", "leaves the training trajectory bitwise unchanged", leaves_the_trajectory_unchanged),
    Check("parameters", "does not modify the parameters it is handed", leaves_its_probe_unchanged),
)
