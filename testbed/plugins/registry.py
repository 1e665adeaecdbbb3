"""What plugins registered: optimizers, tasks, diagnostics and executors, with their provenance.

The host hands each plugin a ``register`` callback bound to that plugin, so it owns validation,
provenance and name clashes (an error naming both plugins, never a silent rename).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

from testbed.diagnostics import SCHEDULE_OPTIONS, Plot, Schedule, schedule_from
from testbed.errors import ConfigError, PluginError
from testbed.options import Option, validate_options

KINDS = ("optimizer", "task", "diagnostic", "executor")
_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")
# Extra metadata each kind accepts at registration, with its default. check_options: the options
# `testbed check` builds it with for its behavioural checks, over the defaults (a value for a required
# option; a cheaper setting of an expensive one); a config never sees them.
_METADATA: dict[str, dict[str, Any]] = {
    "optimizer": {"needs_closure": False, "check_options": {}},
    "task": {"check_options": {}},
    # plots: testbed.Plot declarations (the report's figures, TensorBoard's charts); schedule: when it
    # runs unless the config says otherwise (every/steps/start/stop)
    "diagnostic": {"plots": (), "schedule": Schedule(), "check_options": {}},
    "executor": {"takes_address": False},  # whether it joins a cluster at an address (ray)
}


class Register(Protocol):
    """The ``register`` callback a registration hook receives (bound to its plugin and kind)."""

    def __call__(
        self,
        name: str,
        factory: Callable[..., Any],
        options: Mapping[str, Option] | None = None,
        doc: str = "",
        **metadata: Any,
    ) -> None: ...


@dataclass(frozen=True)
class Entry:
    """One registered optimizer, task, diagnostic or executor."""

    kind: str
    name: str
    factory: Callable[..., Any]
    options: Mapping[str, Option]
    doc: str
    plugin: str
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def config_options(self) -> dict[str, Option]:
        """What a config may set for this entry: its own options and, for a diagnostic, the host's
        schedule options (defaults: its declared schedule)."""
        if self.kind != "diagnostic":
            return dict(self.options)
        return {**self.options, **self.metadata["schedule"].options()}


@dataclass
class Registry:
    """Every registered optimizer, task, diagnostic and executor, by kind and name."""

    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})

    def binder(self, kind: str, plugin: str) -> Register:
        """The ``register`` callback handed to ``plugin`` for ``kind``."""

        def register(name, factory, options=None, doc="", **metadata):
            self.add(kind, plugin, name, factory, options or {}, doc, metadata)

        return register

    def add(self, kind, plugin, name, factory, options, doc, metadata) -> None:
        """Validate one registration and record it; anything invalid or clashing is a PluginError."""
        where = f"plugin {plugin!r} registering {kind} {name!r}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise PluginError(f"{where}: names are lower-case identifiers (letters, digits, _ and -)")
        if not callable(factory):
            raise PluginError(f"{where}: factory is not callable")
        if not isinstance(options, Mapping) or not all(isinstance(o, Option) for o in options.values()):
            raise PluginError(f"{where}: options must map names to testbed.Option")
        unknown = set(metadata) - set(_METADATA[kind])
        if unknown:
            raise PluginError(f"{where}: unknown metadata {sorted(unknown)}")
        existing = self.entries[kind].get(name)
        if existing is not None:
            raise PluginError(
                f"{kind} {name!r} is registered by two plugins: {existing.plugin!r} and {plugin!r}"
            )
        full_metadata = {**_METADATA[kind], **metadata}
        if kind == "diagnostic":
            full_metadata["plots"] = checked_plots(full_metadata["plots"], where)
            full_metadata["schedule"] = checked_schedule(metadata, options, where)
        self.entries[kind][name] = Entry(kind, name, factory, dict(options), doc.strip(), plugin, full_metadata)

    def get(self, kind: str, name: str, where: str) -> Entry:
        """Look up a registered name; an unknown one is a ConfigError listing what is available."""
        entry = self.entries[kind].get(name)
        if entry is None:
            raise ConfigError(f"{where}: unknown {kind} {name!r}; available: {self.available(kind)}")
        return entry

    def available(self, kind: str) -> str:
        """``"local (executors), ray (executors)"``: every registered name of ``kind`` with its plugin."""
        return ", ".join(f"{e.name} ({e.plugin})" for e in self.list(kind)) or "none"

    def list(self, kind: str) -> list[Entry]:
        """The entries of ``kind``, by name."""
        return sorted(self.entries[kind].values(), key=lambda e: e.name)


def checked_plots(plots: Any, where: str) -> tuple[Plot, ...]:
    """A diagnostic's ``plots=`` metadata as a tuple of valid testbed.Plot; a PluginError otherwise."""
    if isinstance(plots, (str, bytes)) or not isinstance(plots, (list, tuple)):
        raise PluginError(f"{where}: plots must be a list of testbed.Plot, not {type(plots).__name__}")
    for index, plot in enumerate(plots):
        if not isinstance(plot, Plot):
            raise PluginError(f"{where}: plots[{index}] is of type {type(plot).__name__}, not testbed.Plot")
        problem = plot.problem()
        if problem is not None:
            raise PluginError(f"{where}: plots[{index}] ({plot.tag!r}): {problem}")
    return tuple(plots)


def checked_schedule(metadata: Mapping[str, Any], options: Mapping[str, Option], where: str) -> Schedule:
    """A diagnostic's default schedule: its ``schedule=`` metadata or, for a diagnostic written before
    the host owned schedules, the defaults of the schedule options it declares itself. A PluginError
    if it is not a valid testbed.Schedule, or if the diagnostic's own options take a schedule option's
    name for something else."""
    declared = [name for name in SCHEDULE_OPTIONS if name in options]
    if declared and (len(declared) < len(SCHEDULE_OPTIONS) or "schedule" in metadata):
        raise PluginError(f"{where}: option {declared[0]!r} is a schedule option, which the host adds to "
                          "every diagnostic; declare the default schedule with schedule=testbed.Schedule(...)")
    if declared:  # the older way: **schedule_options(...) among its own options
        schedule = schedule_from({name: options[name].default for name in SCHEDULE_OPTIONS})
    else:
        schedule = metadata.get("schedule", Schedule())
    if not isinstance(schedule, Schedule):
        raise PluginError(f"{where}: schedule must be a testbed.Schedule, not {type(schedule).__name__}")
    given = {"every": schedule.every, "steps": schedule.steps, "start": schedule.start, "stop": schedule.stop}
    try:
        return schedule_from(validate_options(Schedule().options(), given, "schedule"))
    except ConfigError as exc:
        raise PluginError(f"{where}: {exc}") from None
