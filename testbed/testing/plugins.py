"""Plugins under test in a fresh registry: load them, look up what they registered, validate options
and build optimizers, tasks and diagnostics exactly as the host does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from testbed.engine.build import build_diagnostic, build_optimizer, build_task, needs_closure
from testbed.engine.specs import DiagnosticSpec, OptimizerSpec, TaskSpec
from testbed.options import Option, validate_options
from testbed.plugins import Plugins, load_plugins as load_host_plugins
from testbed.plugins.registry import Entry

BUILTIN_DISTRIBUTION = "testbed"  # the distribution whose entry points are the built-in plugins
KINDS = ("optimizer", "task", "diagnostic", "executor")
# Where a config's options are validated for a one-entry config: the places a user's error names.
OPTIONS_WHERE = {"optimizer": "optimizers[0].options", "task": "task.options",
                 "diagnostic": "diagnostics[0].options", "executor": "executor.options"}


@dataclass(frozen=True)
class Registration:
    """What one plugin registered under one name, as the host recorded it.

    ``options`` are the declared options (``testbed.Option`` by name); ``needs_closure`` is an
    optimizer's flag (a bool, or a function of its options), None for other kinds; ``schedule`` and
    ``plots`` are a diagnostic's default schedule and declared figures (None and () for other kinds).
    """

    kind: str
    name: str
    plugin: str
    doc: str
    options: Mapping[str, Option]
    factory: Callable[..., Any]
    needs_closure: Any = None
    schedule: Any = None
    plots: tuple = ()

    @classmethod
    def of(cls, entry: Entry) -> "Registration":
        """The registration recorded in a host registry entry."""
        metadata = entry.metadata
        return cls(entry.kind, entry.name, entry.plugin, entry.doc, dict(entry.options), entry.factory,
                   metadata.get("needs_closure"), metadata.get("schedule"), tuple(metadata.get("plots", ())))


class PluginSet:
    """A fresh registry holding the plugins under test (and, if asked, the built-in ones).

    Made by ``load_plugins``. Every lookup, validation and build goes through the host's own code,
    so a test sees the errors (``testbed.ConfigError``, ``testbed.PluginError``) a user would see.
    """

    def __init__(self, plugins: Plugins) -> None:
        self.host = plugins  # the host's loaded plugin set: what run_tiny hands the engine

    def names(self, kind: str) -> list[str]:
        """The registered names of ``kind`` (optimizer, task, diagnostic, executor), sorted."""
        return [entry.name for entry in self.host.registry.list(kind)]

    def get(self, kind: str, name: str) -> Registration:
        """The registration of ``name``; a ConfigError listing what is available if there is none."""
        return Registration.of(self.host.registry.get(kind, name, f"{kind} {name!r}"))

    def optimizer(self, name: str) -> Registration:
        """The registered optimizer ``name``."""
        return self.get("optimizer", name)

    def task(self, name: str) -> Registration:
        """The registered task ``name``."""
        return self.get("task", name)

    def diagnostic(self, name: str) -> Registration:
        """The registered diagnostic ``name``."""
        return self.get("diagnostic", name)

    def validate(self, kind: str, name: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``options`` validated as a config's are: typed, defaults filled in, or the ConfigError a
        user would get (for a diagnostic, its schedule options every/steps/start/stop are accepted too)."""
        entry = self.host.registry.get(kind, name, f"{kind} {name!r}")
        return validate_options(entry.config_options, options, OPTIONS_WHERE[kind])

    def build_optimizer(self, name: str, params: Iterable[Any], lr: float = 1e-3,
                        options: Mapping[str, Any] | None = None) -> Any:
        """The optimizer ``name`` over ``params``, built as a run builds it: options validated, then
        ``factory(params, lr=lr, **options)``, which must return a torch.optim.Optimizer."""
        spec = OptimizerSpec(name, name, lr, self.validate("optimizer", name, options))
        return build_optimizer(spec, self.host.registry, params)

    def needs_closure(self, name: str, options: Mapping[str, Any] | None = None) -> bool:
        """Whether a run hands the optimizer ``name`` (with these options) a closure."""
        spec = OptimizerSpec(name, name, 1e-3, self.validate("optimizer", name, options))
        return needs_closure(spec, self.host.registry)

    def build_task(self, name: str, d: int = 3, n: int = 6, options: Mapping[str, Any] | None = None) -> Any:
        """The task ``name`` of dimension ``d`` and ``n`` context tokens, built as a run builds it:
        options validated, then ``factory(d=d, n=n, **options)``."""
        return build_task(TaskSpec(name, d, n, self.validate("task", name, options)), self.host.registry)

    def build_diagnostic(self, name: str, options: Mapping[str, Any] | None = None) -> Any:
        """The diagnostic ``name``, built as a run builds it: options validated, ``factory(**own
        options)``, then its ``schedule`` set by the host (from every/steps/start/stop, else the
        declared default)."""
        spec = DiagnosticSpec(name, self.validate("diagnostic", name, options))
        return build_diagnostic(spec, self.host.registry)


def load_plugins(*plugins: object, builtins: bool = True, named: Mapping[str, object] | None = None) -> PluginSet:
    """A fresh registry with ``plugins`` (modules or objects with ``@testbed.hookimpl`` functions)
    loaded the way the host loads any plugin, and the built-in plugins (those of testbed's own
    distribution) unless ``builtins`` is false. No other installed plugin and nothing named in
    $TESTBED_PLUGINS is loaded. A plugin is named by its module's ``__name__`` (an object: its class
    name) unless given in ``named`` ({name: plugin}). A plugin whose registration fails raises the
    host's PluginError."""
    extra = {_plugin_name(plugin): plugin for plugin in plugins}
    extra.update(named or {})
    host = load_host_plugins(extra=extra, entry_points=builtins, distributions=(BUILTIN_DISTRIBUTION,),
                             environment=False)
    host.require_healthy()
    return PluginSet(host)


def _plugin_name(plugin: object) -> str:
    name = getattr(plugin, "__name__", None)
    return name if isinstance(name, str) else type(plugin).__name__
