"""What plugins registered: optimizers, tasks and diagnostics, with their provenance.

The host hands each plugin a ``register`` callback bound to that plugin, so it owns validation,
provenance and name clashes (an error naming both plugins, never a silent rename).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

from testbed.diagnostics import Plot
from testbed.errors import ConfigError, PluginError
from testbed.options import Option

KINDS = ("optimizer", "task", "diagnostic")
_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")
# Extra metadata each kind accepts at registration, with its default.
_METADATA: dict[str, dict[str, Any]] = {
    "optimizer": {"needs_closure": False},
    "task": {},
    "diagnostic": {"plots": ()},  # testbed.Plot declarations: the report's figures, TensorBoard's charts
}


class Register(Protocol):
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
    """One registered optimizer, task or diagnostic."""

    kind: str
    name: str
    factory: Callable[..., Any]
    options: Mapping[str, Option]
    doc: str
    plugin: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Registry:
    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})

    def binder(self, kind: str, plugin: str) -> Register:
        """The ``register`` callback handed to ``plugin`` for ``kind``."""

        def register(name, factory, options=None, doc="", **metadata):
            self.add(kind, plugin, name, factory, options or {}, doc, metadata)

        return register

    def add(self, kind, plugin, name, factory, options, doc, metadata) -> None:
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
        self.entries[kind][name] = Entry(kind, name, factory, dict(options), doc.strip(), plugin, full_metadata)

    def get(self, kind: str, name: str, where: str) -> Entry:
        """Look up a registered name; an unknown one is a ConfigError listing what is available."""
        entry = self.entries[kind].get(name)
        if entry is None:
            available = ", ".join(f"{e.name} ({e.plugin})" for e in self.list(kind)) or "none"
            raise ConfigError(f"{where}: unknown {kind} {name!r}; available: {available}")
        return entry

    def list(self, kind: str) -> list[Entry]:
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
