"""What a diagnostic plugin is: a measurement of the loss landscape along a run.

A diagnostic declares its default ``Schedule`` when it registers (``register(..., schedule=...)``);
the host adds the schedule options (every, steps, start, stop) to the diagnostic's own, so a config
may change when it runs. Its factory takes its own validated options and returns a ``Diagnostic``,
whose ``measure(probe, step)`` returns records (scalars, histograms, figures, text) that the engine
logs under ``diag/<name>/<tag>``. A diagnostic that ``needs_update`` is measured
after the optimizer step leaving the point of ``step``, so it sees the update actually taken.

A diagnostic sees the run only through a ``Probe``: a copy of the parameters and pure functions of
them. It never touches the model, the optimizer or the training stream, so turning diagnostics on
or off leaves the training trajectory bitwise unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence


from testbed.options import Option

if TYPE_CHECKING:  # the probe needs the model; a diagnostic only receives one
    from testbed.engine.probe import Probe


# ------------------------------------------------------------------ records
@dataclass(frozen=True)
class Scalar:
    """One number, logged as the TensorBoard scalar ``diag/<name>/<tag>`` and kept in the run's results."""

    tag: str
    value: float


@dataclass(frozen=True)
class Histogram:
    """Samples logged as a TensorBoard histogram (non-finite ones are left out)."""

    tag: str
    values: Any  # a tensor or array of samples
    bins: Any = "tensorflow"


@dataclass(frozen=True)
class Figure:
    """A matplotlib figure logged as a TensorBoard image."""

    tag: str
    figure: Any  # a matplotlib Figure; the engine closes it after logging


@dataclass(frozen=True)
class Text:
    """Markdown logged as TensorBoard text."""

    tag: str
    text: str


Record = Scalar | Histogram | Figure | Text


# ------------------------------------------------------------------ declared plots
PLOT_KINDS = ("curve", "histogram", "scatter")


@dataclass(frozen=True)
class Plot:
    """A figure a diagnostic asks for, declared when it registers (``register(..., plots=[...])``):
    `testbed report` draws it for every experiment that measured the diagnostic, and TensorBoard's
    custom-scalar layout gives each scalar it names a chart of its own.

    ``tag`` is one of the diagnostic's own tags (``proxy`` for ``diag/<name>/proxy``). ``kind``:
    ``"curve"``: the scalar along training, one line per optimizer label, mean over seeds with a band
    (the range over seeds); ``"histogram"``: the first histogram logged under ``tag`` by the first run
    that measured the diagnostic, as a density; ``"scatter"``: the scalar ``tag`` against the scalar
    ``x`` at the steps both were measured, coloured by step (first run with 3 points or more).
    ``log``: log-scale values (a curve's y axis; a scatter plots the logarithms of both).
    ``title`` names the quantity (a curve's y label by default); ``caption`` is printed under the
    figure in the report. ``subtitle``: a second title line, a ``str.format`` template filled with the
    diagnostic's scalars at the histogram's step (histograms only), e.g. ``"skewness {skewness:.2f}"``.
    """

    tag: str
    title: str
    caption: str = ""
    kind: str = "curve"
    log: bool = False
    x: str | None = None  # scatter: the tag on the x axis
    xlabel: str | None = None  # default: "step" for a curve, the x tag for a scatter, the tag for a histogram
    ylabel: str | None = None  # default: the title for a curve, the tag for a scatter, "density" for a histogram
    subtitle: str | None = None

    def problem(self) -> str | None:
        """Why this declaration cannot be drawn, or None."""
        for name in ("tag", "title", "caption"):
            if not isinstance(getattr(self, name), str):
                return f"{name} must be a string"
        if not self.tag or not self.title:
            return "tag and title must not be empty"
        if self.kind not in PLOT_KINDS:
            return f"kind {self.kind!r} is not one of {', '.join(PLOT_KINDS)}"
        if (self.kind == "scatter") != isinstance(self.x, str):
            return "a scatter needs the tag of its x axis (x=...), and only a scatter has one"
        return None

    @property
    def scalars(self) -> tuple[str, ...]:
        """The scalar tags this plot draws (none for a histogram)."""
        if self.kind == "histogram":
            return ()
        return (self.tag,) if self.x is None else (self.x, self.tag)


# ------------------------------------------------------------------ schedules
@dataclass(frozen=True)
class Schedule:
    """Steps at which a diagnostic runs: every ``every`` steps from ``start`` (inclusive) to
    ``stop`` (exclusive; None = the end of the run), plus the explicit ``steps``. Step 0 is the
    initialization, step t the point after t optimizer steps."""

    every: int | None = None
    steps: tuple[int, ...] = ()
    start: int = 0
    stop: int | None = None

    def due(self, step: int) -> bool:
        """Whether the diagnostic runs at ``step``."""
        if step in self.steps:
            return True
        if self.every is None or step < self.start or (self.stop is not None and step >= self.stop):
            return False
        return (step - self.start) % self.every == 0

    def options(self) -> dict[str, Option]:
        """The schedule options the host adds to a diagnostic's own, with this schedule as defaults."""
        return schedule_options(self.every, self.steps, self.start, self.stop)

    def last(self, total_steps: int) -> int | None:
        """The last due step of a run of ``total_steps`` steps (None if never due)."""
        end = total_steps if self.stop is None else min(self.stop - 1, total_steps)
        candidates = [s for s in self.steps if s <= total_steps]
        if self.every is not None and end >= self.start:
            candidates.append(self.start + (end - self.start) // self.every * self.every)
        return max(candidates, default=None)


# The options the host adds to every diagnostic's own: a diagnostic's options may not use these names.
SCHEDULE_OPTIONS = ("every", "steps", "start", "stop")


def schedule_options(every: int | None = None, steps: Sequence[int] = (), start: int = 0,
                     stop: int | None = None) -> dict[str, Option]:
    """The schedule options every diagnostic offers, with the given defaults (the host adds them;
    a diagnostic declares its defaults with ``register(..., schedule=Schedule(...))``)."""
    return {
        "every": Option(every, "run every k steps (null: only at `steps`)", type=int, min=1, nullable=True),
        "steps": Option(list(steps), "explicit steps to run at (0 = initialization)", type=list, item=int, min=0),
        "start": Option(start, "first step of the `every` schedule", type=int, min=0),
        "stop": Option(stop, "no `every` runs from this step on (null: until the end)", type=int, min=1,
                       nullable=True),
    }


def schedule_from(options: Mapping[str, Any], default: Schedule = Schedule()) -> Schedule:
    """The schedule that ``options`` set (every, steps, start, stop; other keys are ignored); what
    they leave out is ``default``'s."""
    return Schedule(options.get("every", default.every), tuple(options.get("steps", default.steps)),
                    options.get("start", default.start), options.get("stop", default.stop))


class Diagnostic:
    """Base class of diagnostics. Subclasses implement ``measure`` (and ``finish`` for aggregates).

    The host owns the schedule: it builds it from the config's every/steps/start/stop (defaults: the
    schedule declared with ``register(..., schedule=Schedule(...))``) and sets ``self.schedule`` once
    the factory has returned, so ``measure`` may read it (e.g. to report at the end of its window);
    a diagnostic does not set it. Older diagnostics that declare ``**schedule_options(...)`` among
    their options and set ``self.schedule = schedule_from(options)`` in ``__init__`` keep working:
    those declared options are their default schedule, they still receive them, and the schedule
    they build is the host's. A diagnostic that sets any other schedule is a PluginError.
    """

    schedule: Schedule = Schedule()  # set by the host
    needs_update: bool = False

    def measure(self, probe: "Probe", step: int) -> list[Record]:
        """The records of one measurement at ``step`` (a due step of the schedule)."""
        raise NotImplementedError

    def finish(self, probe: "Probe", step: int) -> list[Record]:
        """Called once when the run ends (at its last step): emit anything aggregated."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint saves so that a resumed run measures as if never stopped: by default
        every attribute but the schedule (the host sets it again from the config). Its values
        must be tensors or plain values (numbers, strings, None, lists, tuples, dicts of them): a
        checkpoint is read with torch.load(weights_only=True), which refuses anything else, so a
        run holding other state is not checkpointed (override this to convert it)."""
        return {name: value for name, value in vars(self).items() if name != "schedule"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what ``state_dict`` returned (a resumed run)."""
        vars(self).update(state)


