"""Subcommands that plugins add through ``register_commands(cli)``.

They are loaded only when the command line needs them (``testbed --help``, or a command name that is
not built in), so the built-in commands never wait for them. Each plugin adds its commands alone, to
a copy of the group: a plugin whose ``register_commands`` raises, or that adds a command whose name
exists already, adds none, and ``testbed`` works on without them; the problem is one line in
``testbed --help`` and in the error for a command that is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import click

from testbed.errors import TestbedError
from testbed.plugins import Plugins, load_plugins

_LOADED = "testbed.plugin_commands"  # where a command line keeps what it loaded (click's ctx.meta)


@dataclass
class PluginCommands:
    """The commands the plugins added, and one line per plugin whose commands were not added."""

    commands: dict[str, click.Command] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def collect_commands(plugins: Plugins, group: click.Group) -> PluginCommands:
    """Call each plugin's ``register_commands`` alone, on a copy of ``group``; keep what it added
    unless it raised or replaced a command (a built-in one or another plugin's)."""
    found = PluginCommands()
    manager = plugins.manager
    everyone = manager.get_plugins()
    for plugin in everyone:
        name = manager.get_name(plugin)
        others = [p for p in everyone if p is not plugin]
        caller = manager.subset_hook_caller("register_commands", remove_plugins=others)
        before = {**group.commands, **found.commands}
        scratch = click.Group(group.name, commands=dict(before))
        try:
            caller(cli=scratch)
        except Exception as exc:  # third-party code: whatever it raises
            found.problems.append(f"plugin {name!r} failed in register_commands: {type(exc).__name__}: {exc}")
            continue
        replaced = sorted(n for n, command in before.items() if scratch.commands.get(n) is not command)
        if replaced:
            found.problems.append(f"plugin {name!r} adds command {replaced[0]!r}, which exists already")
            continue
        found.commands.update((n, c) for n, c in scratch.commands.items() if n not in before)
    return found


def plugin_commands(ctx: click.Context, group: click.Group) -> PluginCommands:
    """What the plugins add to ``group``, loaded once per command line."""
    meta = ctx.find_root().meta
    if _LOADED not in meta:
        try:
            meta[_LOADED] = collect_commands(load_plugins(), group)
        except TestbedError as exc:  # a plugin failed in another hook: the commands that need it say so
            meta[_LOADED] = PluginCommands(problems=[f"plugin commands not loaded: {exc}"])
    return meta[_LOADED]


class PluginCommandsGroup(click.Group):
    """A click group that also offers the commands plugins add (``register_commands``)."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """A built-in command, else a plugin's (loading the plugins' commands only then)."""
        return super().get_command(ctx, cmd_name) or plugin_commands(ctx, self).commands.get(cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        """The built-in commands and the plugins'."""
        return sorted({*super().list_commands(ctx), *plugin_commands(ctx, self).commands})

    def resolve_command(self, ctx: click.Context, args: list[str]):
        """As click's, but a missing command's error also names the plugins whose commands were not added."""
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            problems = plugin_commands(ctx, self).problems
            if problems:
                ctx.fail(f"No such command {name!r}; {'; '.join(problems)}")
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands, then why some plugins' commands were not added."""
        super().format_commands(ctx, formatter)
        problems = plugin_commands(ctx, self).problems
        if problems:
            with formatter.section("Plugin commands not added"):
                for problem in problems:
                    formatter.write_text(problem)
