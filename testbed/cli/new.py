"""`testbed new optimizer|task|diagnostic NAME`: generate a plugin distribution to start from (testbed.scaffold)."""

from __future__ import annotations

from pathlib import Path

import click

from testbed.errors import TestbedError
from testbed.plugins import load_plugins
from testbed.scaffold import KINDS, create_plugin, plugin_names


def registered_names(kind: str) -> set[str]:
    """The names of ``kind`` that the installed plugins register (none if the plugins cannot load:
    a broken plugin elsewhere should not stop a new one from being started)."""
    try:
        return set(load_plugins().registry.entries[kind])
    except TestbedError:
        return set()


@click.command("new")
@click.argument("kind", type=click.Choice(KINDS))
@click.argument("name")
@click.option("--dir", "directory", default=".", show_default=True, metavar="DIR",
              help="Where to create the distribution's directory, DIR/testbed-NAME (with _ as -); created if missing.")
def new(kind: str, name: str, directory: str) -> None:
    """Generate a complete plugin distribution for a new optimizer, task or diagnostic registered as NAME
    (lower-case letters, digits and _): pyproject.toml with the testbed entry point, the plugin under
    src/, tests using testbed.testing, an example config comparing it with the standard optimizers, and
    a README. It installs and passes its own tests and `testbed check NAME` as generated. An existing
    directory is never overwritten."""
    plugin_names(kind, name)  # a bad name is reported before the plugins load
    target = create_plugin(kind, name, Path(directory), taken=registered_names(kind))
    click.echo(f"created {target} (the {kind} {name!r}). Next:")
    for line in (f"cd {target}", "pip install -e '.[test]'", "pytest", f"testbed check {name}",
                 f"testbed run examples/{name}.yaml --set train.steps=200"):
        click.echo(f"  {line}")
