"""The plugin host: loading plugins (every entry point of the group ``testbed``, through one path) and
the registry of what they registered (``registry``).

The standard plugins (in ``plugins/testbed_std``) are registered through the same entry-point group
as a third party's, so they get no special treatment here.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.metadata as md
import os
from dataclasses import dataclass, field
from functools import partial
from typing import Collection, Iterable

import pluggy

from testbed import hookspecs
from testbed.errors import PluginError
from testbed.plugins.registry import Registry
from testbed.plugins.source import installed_from_directory, source_hash

GROUP = "testbed"
ENV_VAR = "TESTBED_PLUGINS"
EXTRA = "local"  # the distribution recorded for plugins handed to load_plugins(extra=...) as objects
FROM_ENV = f"${ENV_VAR}"  # the distribution recorded for plugins named in $TESTBED_PLUGINS
_REGISTER_HOOKS = {"optimizer": "register_optimizers", "task": "register_tasks",
                   "diagnostic": "register_diagnostics", "executor": "register_executors"}


@dataclass(frozen=True)
class PluginInfo:
    """One loaded (or failed) plugin: its name, module, and the distribution and version that
    provide it, as `testbed plugins` lists them."""
    name: str
    module: str
    distribution: str
    version: str
    error: str | None = None  # set when the plugin failed to import
    # its code can change under its version (see testbed.plugins.source): run ids hash its source
    working_tree: bool = False


@dataclass
class Plugins:
    """A loaded plugin set: the pluggy manager, what each plugin is, and what they registered."""

    manager: pluggy.PluginManager
    infos: list[PluginInfo] = field(default_factory=list)
    registry: Registry = field(default_factory=Registry)
    _source_hashes: dict[str, str | None] = field(default_factory=dict, repr=False)  # hashed once each

    @property
    def failed(self) -> list[PluginInfo]:
        """The plugins that failed to import."""
        return [info for info in self.infos if info.error is not None]

    def require_healthy(self) -> None:
        """Raise a PluginError naming the first plugin that failed to import."""
        for info in self.failed:
            raise PluginError(
                f"plugin {info.name!r} (distribution {info.distribution} {info.version}) failed to load: "
                f"{info.error}. Fix or uninstall it; `testbed plugins` lists every plugin."
            )

    @property
    def in_this_process_only(self) -> bool:
        """Whether some plugins were handed in as objects (``load_plugins(extra=...)``), which a
        worker process loading its own plugins would not have."""
        return any(info.distribution == EXTRA for info in self.infos)

    def entry_point_modules(self) -> list[str]:
        """The modules of the plugins loaded, without error, through entry points: installed code
        that a process can import ahead of the workers it will start (see executors)."""
        return sorted({info.module.split(":")[0] for info in self.infos
                       if info.error is None and info.distribution not in (EXTRA, FROM_ENV)})

    def versions(self) -> dict[str, str]:
        """``{plugin name: 'distribution version'}`` of every loaded plugin, for provenance."""
        return {i.name: f"{i.distribution} {i.version}" for i in self.infos if i.error is None}

    def source_hashes(self, names: Iterable[str]) -> dict[str, str]:
        """``{plugin name: hash of its source}`` for those of ``names`` that come from a working tree
        (see testbed.plugins.source), each hashed the first time it is asked for."""
        infos = {info.name: info for info in self.infos if info.working_tree and info.error is None}
        wanted = sorted(set(names) & infos.keys())
        for name in wanted:
            if name not in self._source_hashes:
                self._source_hashes[name] = source_hash(infos[name].module)
        return {name: self._source_hashes[name] for name in wanted if self._source_hashes[name] is not None}


def new_manager() -> pluggy.PluginManager:
    """A fresh pluggy manager that knows testbed's hooks and has no plugins yet (one per load,
    never a module global)."""
    manager = pluggy.PluginManager("testbed")
    manager.add_hookspecs(hookspecs)
    return manager


def load_plugins(extra: dict[str, object] | None = None, entry_points: bool = True,
                 distributions: Collection[str] | None = None, environment: bool = True) -> Plugins:
    """Load every ``testbed`` entry point (only those of ``distributions``, when given), the modules
    named in $TESTBED_PLUGINS (comma-separated, for developing a plugin without installing it; unless
    ``environment`` is false) and ``extra`` ({name: module or object}), and collect their
    registrations. A plugin that fails to import is recorded with its error."""
    plugins = Plugins(new_manager())
    sources = []
    if entry_points:
        for ep in sorted(md.entry_points(group=GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else "unknown"
            version = ep.dist.version if ep.dist is not None else "unknown"
            if distributions is None or dist in distributions:
                info = PluginInfo(ep.name, ep.value, dist, version, working_tree=installed_from_directory(ep.dist))
                sources.append((info, ep.load))
    modules = os.environ.get(ENV_VAR, "") if environment else ""
    for module in filter(None, (m.strip() for m in modules.split(","))):
        info = PluginInfo(module, module, FROM_ENV, "-", working_tree=True)
        sources.append((info, partial(importlib.import_module, module)))
    for info, load in sources:
        try:
            obj = load()
        except Exception as exc:  # any import failure of third-party code
            plugins.infos.append(dataclasses.replace(info, error=_describe(exc)))
            continue
        _add(plugins, info.name, obj, info)
    for name, obj in (extra or {}).items():
        _add(plugins, name, obj, PluginInfo(name, getattr(obj, "__name__", repr(obj)), EXTRA, "-"))
    _collect_registrations(plugins)
    return plugins


def _add(plugins: Plugins, name: str, module: object, info: PluginInfo) -> None:
    if plugins.manager.has_plugin(name):
        raise PluginError(f"two plugins are named {name!r}; entry-point names must be unique")
    try:
        plugins.manager.register(module, name=name)
    except Exception as exc:  # pluggy validates hook signatures here
        plugins.infos.append(dataclasses.replace(info, error=_describe(exc)))
        return
    unknown = unknown_hooks(plugins.manager, module)
    if unknown:  # a misspelled hook would never be called: the plugin fails to load, as on an import error
        plugins.manager.unregister(module)
        known = [hook for hook, caller in vars(plugins.manager.hook).items() if caller.has_spec()]
        error = "; ".join(_unknown_hook_error(hook, known) for hook in unknown)
        plugins.infos.append(dataclasses.replace(info, error=error))
        return
    plugins.infos.append(info)


def unknown_hooks(manager: pluggy.PluginManager, plugin: object) -> list[str]:
    """The hooks ``plugin`` implements that testbed has no spec for (what pluggy's check_pending
    rejects), except those marked ``optionalhook=True``."""
    return sorted(caller.name for caller in manager.get_hookcallers(plugin) or []
                  if not caller.has_spec() and any(impl.plugin is plugin and not impl.optionalhook
                                                   for impl in caller.get_hookimpls()))


def _unknown_hook_error(hook: str, known: list[str]) -> str:
    close = difflib.get_close_matches(hook, known, n=1)
    suggestion = f" (did you mean {close[0]!r}?)" if close else f" (testbed's hooks: {', '.join(sorted(known))})"
    return f"unknown hook {hook!r}{suggestion}"


def _collect_registrations(plugins: Plugins) -> None:
    """Call each plugin's register hooks alone, so every entry records which plugin made it."""
    manager = plugins.manager
    everyone = manager.get_plugins()
    for plugin in everyone:
        name = manager.get_name(plugin)
        others = [p for p in everyone if p is not plugin]
        for kind, hook_name in _REGISTER_HOOKS.items():
            caller = manager.subset_hook_caller(hook_name, remove_plugins=others)
            try:
                caller(register=plugins.registry.binder(kind, name))
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(f"plugin {name!r} failed in {hook_name}: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
