"""Render a plugin distribution from the templates shipped in this package.

A template is a file under ``templates/common/`` (every kind) or ``templates/<kind>/`` whose name ends
in ``.tmpl``; its text is ``string.Template`` text (``$package``, ``$name``...), and ``PACKAGE`` and
``NAME`` in its path stand for the package and the plugin's name (no ``$`` in file names). The whole
distribution is written into a scratch directory beside the target and renamed into place at the
end, so a failure leaves no half-written plugin, and an existing target is never overwritten.
"""

from __future__ import annotations

import importlib.util
import keyword
import re
import shutil
import uuid
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from string import Template
from typing import Collection, Iterator

from testbed import __version__
from testbed.errors import ScaffoldError

KINDS = ("optimizer", "task", "diagnostic")
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
MAX_NAME_LENGTH = 40
SUFFIX = ".tmpl"
PATH_TOKENS = ("PACKAGE", "NAME")  # upper case: a valid name never contains them
FRAGMENT = "about.md.tmpl"  # a kind's part of the README, substituted as $about, not a file of its own
# The CamelCase names the generated modules import: a plugin class named like one would shadow it.
IMPORTED_CLASS_NAMES = frozenset({"Callable", "Diagnostic", "Iterable", "LinearRegressionTask", "Option", "Plot",
                                  "PluginSet", "Probe", "Scalar", "Schedule"})


@dataclass(frozen=True)
class PluginNames:
    """Every name a generated distribution uses, derived from the plugin's registered name."""

    kind: str
    name: str

    @property
    def distribution(self) -> str:
        """The pip distribution, also the directory it is generated in: ``testbed-my-opt``."""
        return "testbed-" + self.name.replace("_", "-")

    @property
    def package(self) -> str:
        """The Python package: ``testbed_my_opt``."""
        return "testbed_" + self.name

    @property
    def class_name(self) -> str:
        """The class the plugin defines: ``MyOpt``."""
        return "".join(part.capitalize() for part in self.name.split("_") if part)

    def substitutions(self) -> dict[str, str]:
        """What the templates' ``$placeholders`` stand for."""
        major_minor = ".".join(__version__.split(".")[:2])
        return {"name": self.name, "kind": self.kind, "package": self.package, "distribution": self.distribution,
                "class_name": self.class_name, "testbed_requirement": f"testbed>={major_minor}"}


def plugin_names(kind: str, name: str) -> PluginNames:
    """The names of a ``kind`` plugin registered as ``name``; a ScaffoldError if either is not valid."""
    if kind not in KINDS:
        raise ScaffoldError(f"unknown plugin kind {kind!r}; one of {', '.join(KINDS)}")
    if not NAME_PATTERN.match(name) or len(name) > MAX_NAME_LENGTH:
        raise ScaffoldError(f"invalid {kind} name {name!r}: lower-case letters, digits and _, starting with a "
                            f"letter, at most {MAX_NAME_LENGTH} characters (e.g. my_{kind})")
    if keyword.iskeyword(name):
        raise ScaffoldError(f"invalid {kind} name {name!r}: a Python keyword")
    names = PluginNames(kind, name)
    if names.class_name in IMPORTED_CLASS_NAMES:
        raise ScaffoldError(f"invalid {kind} name {name!r}: its class, {names.class_name}, would shadow the "
                            f"{names.class_name} the generated code imports")
    return names


def create_plugin(kind: str, name: str, parent: str | Path, taken: Collection[str] = ()) -> Path:
    """Generate the distribution of a ``kind`` plugin registered as ``name`` in ``parent``/testbed-NAME
    and return that directory. ``taken``: names of ``kind`` already registered (a plugin reusing one
    could not load beside it). A ScaffoldError for a bad or taken name or an existing target."""
    names = plugin_names(kind, name)
    if name in taken:
        raise ScaffoldError(f"{kind} {name!r} is registered already (testbed list {kind}s): choose another name")
    if importlib.util.find_spec(names.package) is not None:  # installing ours would overwrite it
        raise ScaffoldError(f"a package {names.package} is installed already: choose another name")
    parent = Path(parent)
    target = parent / names.distribution
    if target.exists() or target.is_symlink():
        raise ScaffoldError(f"{target} exists already; testbed new never overwrites: remove it or choose "
                            "another --dir")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        scratch = parent / f".{names.distribution}-{uuid.uuid4().hex[:12]}.tmp"
        scratch.mkdir()  # not mkdtemp: its mode 0700 would make the distribution private; mkdir keeps the umask's
    except OSError as exc:
        raise ScaffoldError(f"cannot write into {parent}: {exc.strerror or exc}") from None
    try:
        write_tree(names, scratch)
        scratch.rename(target)  # fails, never merges, if a target with anything in it appeared meanwhile
    except OSError as exc:
        raise ScaffoldError(f"cannot create {target}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def write_tree(names: PluginNames, root: Path) -> None:
    """Render every template of ``names.kind`` (and the common ones) into ``root``."""
    values = names.substitutions()
    kind_templates = templates_root() / names.kind
    values["about"] = render(kind_templates / FRAGMENT, values)
    for relative, template in templates(names.kind):
        path = root / fill_path(relative, values)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(template, values))


def fill_path(relative: str, values: dict[str, str]) -> str:
    """A template's path in the distribution: its path tokens replaced by their values."""
    for token in PATH_TOKENS:
        relative = relative.replace(token, values[token.lower()])
    return relative


def render(template: Traversable, values: dict[str, str]) -> str:
    """The text of ``template`` with its placeholders filled in."""
    return Template(template.read_text()).substitute(values)


def templates_root() -> Traversable:
    """Where the templates ship: package data of ``testbed.scaffold``."""
    return resources.files("testbed.scaffold") / "templates"


def templates(kind: str) -> list[tuple[str, Traversable]]:
    """(path in the distribution, with placeholders; template) of each file a ``kind`` plugin gets."""
    found = []
    for folder in (templates_root() / "common", templates_root() / kind):
        for relative, template in walk(folder, ""):
            if relative != FRAGMENT:
                found.append((relative.removesuffix(SUFFIX), template))
    return sorted(found, key=lambda pair: pair[0])


def walk(folder: Traversable, prefix: str) -> Iterator[tuple[str, Traversable]]:
    """(relative path, file) of every template below ``folder``."""
    for entry in folder.iterdir():
        if entry.is_dir():
            yield from walk(entry, f"{prefix}{entry.name}/")
        elif entry.name.endswith(SUFFIX):
            yield f"{prefix}{entry.name}", entry
