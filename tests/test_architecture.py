"""The shape of the core, checked on its source: no import cycles, no private names imported from
another module, layers that import only downward, and no standard plugin named outside testbed/paper/,
testbed/score/ and testbed/testing/.

The import graph is read with ``ast`` from testbed/**/*.py, imports inside functions included (a lazy
import is still a dependency), imports under ``if TYPE_CHECKING:`` excluded (annotations only, never
executed). Imports by a computed name are not seen: the package's lazy exports (``testbed.Probe`` is
loaded from testbed.engine.probe on first use, see testbed/__init__.py) are the one such case.
"""

from __future__ import annotations

import ast
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed.plugins import load_plugins

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "testbed"

# The layers, bottom to top: a module may import from its own layer and those below it, never from
# one above. A layer is a list of module prefixes ("testbed" alone is the package's __init__). The
# public plugin API and testbed.text (plain-text formatting that every layer prints with) form the
# bottom; files/ (safe reading and writing of log directories) sits on it; the rest stack up to the CLI.
LAYERS: list[tuple[str, list[str]]] = [
    ("native", ["testbed.native"]),
    ("api", ["testbed", "testbed.hookspecs", "testbed.options", "testbed.errors", "testbed.tasks",
             "testbed.diagnostics", "testbed.text"]),
    ("files", ["testbed.files"]),
    ("plugins", ["testbed.plugins"]),
    ("model", ["testbed.model"]),
    ("engine", ["testbed.engine"]),
    ("experiment", ["testbed.experiment"]),
    ("testing", ["testbed.testing"]),
    ("report", ["testbed.report"]),
    ("paper", ["testbed.paper"]),
    ("score", ["testbed.score"]),
    ("scaffold", ["testbed.scaffold"]),
    ("conformance", ["testbed.conformance"]),
    ("cli", ["testbed.cli"]),
]
# The layers of the core that may name standard plugins: the paper's vocabulary, and the benchmark
# (its baselines are standard optimizers).
# The plugin author's kit names them too: its tiny experiment runs on a standard task and optimizer,
# which every install has (they ship with testbed), so a plugin's test needs to name only its own.
NAMING_LAYERS = (PACKAGE / "paper", PACKAGE / "score", PACKAGE / "testing")
# Standard plugin names that are also the names of what the core is built on: "torch" (the optimizer
# that wraps any torch.optim class) is the library everywhere in the core.
NOT_PLUGIN_WORDS = {"torch"}


@dataclass(frozen=True)
class Import:
    """One import statement's use of a testbed module: who imports what, and where."""

    importer: str
    target: str
    names: tuple[str, ...]  # the names taken by ``from target import ...`` (empty for ``import``)
    line: int
    type_checking: bool  # under ``if TYPE_CHECKING:``

    @property
    def where(self) -> str:
        return f"{module_path(self.importer)}:{self.line}"


def module_name(path: Path) -> str:
    """``testbed/engine/run.py`` -> ``testbed.engine.run``; a package's __init__ is the package."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_path(module: str) -> str:
    """The file of a testbed module, relative to the repository."""
    path = ROOT.joinpath(*module.split("."))
    return str((path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).relative_to(ROOT))


def source_files() -> dict[str, Path]:
    """Every module of the testbed package, by name."""
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class ImportCollector(ast.NodeVisitor):
    """The testbed imports of one module, each marked whether it sits under ``if TYPE_CHECKING:``."""

    def __init__(self, importer: str, is_package: bool, modules: set[str]) -> None:
        self.importer, self.modules = importer, modules
        self.package = importer if is_package else importer.rpartition(".")[0]
        self.type_checking = False
        self.found: list[Import] = []

    def visit_If(self, node: ast.If) -> None:
        if not is_type_checking(node.test):
            self.generic_visit(node)
            return
        outer, self.type_checking = self.type_checking, True
        for child in node.body:
            self.visit(child)
        self.type_checking = outer
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            target = self.nearest_module(alias.name)
            if target is not None:
                self.found.append(Import(self.importer, target, (), node.lineno, self.type_checking))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        source = self.absolute(node)
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            if submodule in self.modules:  # from testbed.engine import checkpoint: the module itself
                self.found.append(Import(self.importer, submodule, (), node.lineno, self.type_checking))
            elif source in self.modules:
                self.found.append(Import(self.importer, source, (alias.name,), node.lineno, self.type_checking))

    def absolute(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = self.package.split(".")
        base = base[:len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))

    def nearest_module(self, dotted: str) -> str | None:
        parts = dotted.split(".")
        while parts and ".".join(parts) not in self.modules:
            parts.pop()
        return ".".join(parts) or None


def collect_imports() -> list[Import]:
    """Every import of a testbed module by a testbed module."""
    files = source_files()
    modules = set(files)
    found = []
    for name, path in files.items():
        collector = ImportCollector(name, path.name == "__init__.py", modules)
        collector.visit(ast.parse(path.read_text(), str(path)))
        found += collector.found
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (depth-first search with a path stack)."""
    state: dict[str, str] = {}  # "open" while on the path, "done" once every successor is explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for successor in sorted(graph.get(node, ())):
            if state.get(successor) == "open":
                return path[path.index(successor):] + [successor]
            if successor not in state:
                cycle = visit(successor)
                if cycle:
                    return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def runtime_graph(imports: list[Import]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if not imp.type_checking and imp.target != imp.importer:
            graph.setdefault(imp.importer, set()).add(imp.target)
    return graph


def layer_of(module: str) -> int:
    """The index in LAYERS of the layer holding ``module`` (the longest matching prefix)."""
    best, length = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            exact_only = prefix == "testbed"  # the package __init__, not everything below it
            matches = module == prefix or (not exact_only and module.startswith(prefix + "."))
            if matches and len(prefix) > length:
                best, length = index, len(prefix)
    if best is None:
        raise AssertionError(f"{module_path(module)} is in no layer: add it to LAYERS in {Path(__file__).name}")
    return best


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


# ------------------------------------------------------------------ the graph reader itself
def test_the_reader_sees_lazy_imports_and_skips_type_checking_ones():
    source = ("from typing import TYPE_CHECKING\n"
              "if TYPE_CHECKING:\n    from testbed.engine.run import RunContext\n"
              "def f():\n    from testbed.engine import checkpoint\n    import testbed.files.lock\n")
    collector = ImportCollector("testbed.x", False, set(source_files()))
    collector.visit(ast.parse(source))
    assert [(i.target, i.type_checking) for i in collector.found] == [
        ("testbed.engine.run", True), ("testbed.engine.checkpoint", False), ("testbed.files.lock", False)]


def test_find_cycle_names_the_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "d": {"a", "c"}}) is None


# ------------------------------------------------------------------ the rules
def test_no_import_cycles():
    cycle = find_cycle(runtime_graph(collect_imports()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_a_private_name_of_another():
    offences = [f"{imp.where}: {name} from {imp.target}" for imp in collect_imports()
                if imp.target != imp.importer for name in imp.names if is_private(name)]
    offences += private_attribute_uses()
    assert not offences, "private names used across modules:\n" + "\n".join(offences)


def private_attribute_uses() -> list[str]:
    """``module._name`` where ``module`` is a testbed module bound by an import."""
    files = source_files()
    offences = []
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        bound = {}  # local name -> testbed module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                bound |= {alias.asname or alias.name: f"{node.module}.{alias.name}" for alias in node.names
                          if f"{node.module}.{alias.name}" in files}
            elif isinstance(node, ast.Import):
                bound |= {alias.asname: alias.name for alias in node.names if alias.asname and alias.name in files}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                    and bound[node.value.id] != name and is_private(node.attr)):
                offences.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}")
    return offences


def test_layers_import_only_downward():
    offences = dict.fromkeys(f"{imp.where}: {imp.importer} ({LAYERS[layer_of(imp.importer)][0]}) imports "
                             f"{imp.target} ({LAYERS[layer_of(imp.target)][0]})"
                             for imp in collect_imports()
                             if not imp.type_checking and layer_of(imp.target) > layer_of(imp.importer))
    assert not offences, "imports from a higher layer:\n" + "\n".join(offences)


def test_every_module_is_in_a_layer():
    for module in source_files():
        layer_of(module)


def standard_plugin_names() -> set[str]:
    """What the standard plugins register (plugins/testbed_std's entry points) and the example plugins
    (testbed_lion's, testbed_mixture's)."""
    plugins = set()
    examples = [ROOT / "plugins" / name / "pyproject.toml" for name in ("testbed_lion", "testbed_mixture")]
    for pyproject in (ROOT / "pyproject.toml", *examples):
        entry_points = tomllib.loads(pyproject.read_text())["project"]["entry-points"]["testbed"]
        # the root's entry points also register the core's own parts (its executors): not plugins
        plugins |= {name for name, module in entry_points.items()
                    if module.startswith(("testbed_std.", "testbed_lion.", "testbed_mixture."))}
    registry = load_plugins().registry
    names = {entry.name for kind in registry.entries.values() for entry in kind.values() if entry.plugin in plugins}
    assert {"sgd", "adam", "gaussian", "gradient_noise", "lion", "update_cosine"} <= names  # the scan means something
    return names - NOT_PLUGIN_WORDS


def word_pattern(names: set[str]) -> re.Pattern:
    """Any of ``names`` as a whole identifier-like word (``sgd`` in ``"sgd"`` or ``sgd.lr``, not in ``my_sgd``)."""
    return re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(sorted(map(re.escape, names))) + r")(?![A-Za-z0-9_])")


def test_the_core_names_no_standard_plugin_outside_the_naming_layers():
    """Code, strings, docstrings and comments alike: an example in an error message or a docstring
    names a plugin too, and would be wrong the day that plugin is uninstalled."""
    words = word_pattern(standard_plugin_names())
    offences = []
    for path in source_files().values():
        if any(layer in path.parents for layer in NAMING_LAYERS):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            offences += [f"{path.relative_to(ROOT)}:{number}: {match.group(1)}" for match in words.finditer(line)]
    assert not offences, "standard plugins named outside testbed/paper/, score/ and testing/:\n" + "\n".join(offences)


@pytest.mark.parametrize("name", ["sgd", "gradient_noise"])
def test_the_name_scan_finds_a_name_as_a_word_only(name):
    words = word_pattern({name, "adam"})
    assert words.search(f'x = "{name}"') and words.search(f"# e.g. {name}: ...") and words.search(f"{name}.lr=1")
    assert not words.search(f"my_{name}_thing = 1") and not words.search(f"{name}2")
