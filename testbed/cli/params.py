"""Command-line values whose choices come from what the plugins registered (``--executor``), and the
options several commands share (``--set``, ``--address``)."""

from __future__ import annotations

from typing import Any

import click

from testbed.errors import TestbedError
from testbed.plugins import Plugins, load_plugins
from testbed.plugins.registry import Registry

_PLUGINS = "testbed.plugins"  # where a command line keeps the plugins it loaded (click's ctx.meta)


def plugins_of(ctx: click.Context | None) -> Plugins:
    """The plugins, loaded once per command line (its options and its command share them); loaded
    afresh without a context."""
    if ctx is None:
        return load_plugins()
    meta = ctx.find_root().meta
    if _PLUGINS not in meta:
        meta[_PLUGINS] = load_plugins()
    return meta[_PLUGINS]


def registry_of(ctx: click.Context | None) -> Registry:
    """The plugins' registry, loaded once per command line (a fresh one without a context)."""
    return plugins_of(ctx).registry


class RegisteredName(click.ParamType):
    """The name of a registered ``kind`` (e.g. an executor): the help shows the registered names, and
    an unknown name is one error line naming each with its plugin."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.name = kind

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        """``[name|name|...]``, the registered names, for the help."""
        try:
            names = [entry.name for entry in registry_of(ctx).list(self.kind)]
        except TestbedError:  # a broken plugin: the command itself will say so
            return "NAME"
        return f"[{'|'.join(names)}]" if names else "NAME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        """``value`` if it is registered; otherwise a usage error naming what is."""
        registry = registry_of(ctx)
        if value not in registry.entries[self.kind]:
            self.fail(f"unknown {self.kind} {value!r}; registered: {registry.available(self.kind)}", param, ctx)
        return value


def check_address(registry: Registry, executor: str, address: str | None) -> None:
    """``--address`` goes only with an executor registered with ``takes_address=True``."""
    if address is None or registry.get("executor", executor, "--executor").metadata["takes_address"]:
        return
    takers = [entry.name for entry in registry.list("executor") if entry.metadata["takes_address"]]
    raise click.BadParameter(f"only with --executor {' or '.join(takers) or '(none registered takes one)'}",
                             param_hint="--address")


SET_OPTION = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="Override a config value, e.g. --set train.steps=500 (repeatable).")
EXECUTOR_HELP = "Where the runs execute: an executor a plugin registered (`testbed list executors` describes them)."
ADDRESS_OPTION = click.option("--address", default=None, metavar="HOST:PORT",
                              help="For an executor that joins a cluster (ray): its address ('auto': the one on "
                                   "this machine); default: start one.")
