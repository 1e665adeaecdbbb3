"""Every public definition under testbed/ says what it is for: each public module, class (record types
included), function and method has a docstring. Read from the source with ast, so nothing is imported.

Public means reachable without a leading underscore: a module whose name (and package path) has none,
a module-level class or function without one, and a method without one in such a class. Functions
nested inside functions are implementation details and are not counted."""

from __future__ import annotations

import ast
from pathlib import Path

import testbed

PACKAGE = Path(testbed.__file__).resolve().parent
Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def is_public(name: str) -> bool:
    """No leading underscore (dunders such as __init__ are private here: their class says it)."""
    return not name.startswith("_")


def public_modules(package: Path) -> list[Path]:
    """The package's modules whose dotted path has no private part (__init__.py opens its package)."""
    modules = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        if all(is_public(part) or part == "__init__" for part in parts):
            modules.append(path)
    return modules


def public_definitions(tree: ast.Module) -> list[tuple[str, Definition]]:
    """(qualified name, node) of each public module-level class or function and each public method
    of a public class, classes nested in public classes included."""
    found: list[tuple[str, Definition]] = []

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and is_public(node.name):
                found.append((prefix + node.name, node))
                if isinstance(node, ast.ClassDef):
                    visit(node.body, f"{prefix}{node.name}.")

    visit(tree.body, "")
    return found


def missing_docstrings(package: Path) -> tuple[int, list[str]]:
    """How many public definitions there are (modules included), and those without a docstring as
    `path:line name`."""
    total, missing = 0, []
    for path in public_modules(package):
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(package.parent)
        total += 1
        if not ast.get_docstring(tree):
            missing.append(f"{where}:1 (module)")
        for name, node in public_definitions(tree):
            total += 1
            if not ast.get_docstring(node):
                missing.append(f"{where}:{node.lineno} {name}")
    return total, missing


def test_every_public_definition_has_a_docstring():
    total, missing = missing_docstrings(PACKAGE)
    assert total > 300  # the walk found the package (else an empty pass would prove nothing)
    coverage = 1 - len(missing) / total
    assert not missing, (f"{len(missing)} of {total} public definitions have no docstring "
                         f"(coverage {coverage:.1%}):\n" + "\n".join(missing))


def test_the_walk_counts_what_it_should(tmp_path):
    """The checker itself: private names, nested functions and dunders are not counted; a missing
    docstring on a public method, class, function or module is."""
    package = tmp_path / "pkg"
    (package / "_private").mkdir(parents=True)
    (package / "__init__.py").write_text('"""The package."""\n')
    (package / "_private" / "hidden.py").write_text("def f(): pass\n")
    (package / "_helpers.py").write_text("def g(): pass\n")
    (package / "mod.py").write_text(
        "class Record:\n"
        "    '''A record.'''\n"
        "    def __init__(self): pass\n"
        "    def _inner(self): pass\n"
        "    def method(self): pass\n"
        "    @property\n"
        "    def size(self):\n"
        "        '''Its size.'''\n"
        "        return 1\n"
        "class _Hidden:\n"
        "    def method(self): pass\n"
        "def documented():\n"
        "    '''Yes.'''\n"
        "    def nested(): pass\n"
        "def bare(): pass\n"
    )
    total, missing = missing_docstrings(package)
    assert missing == ["pkg/mod.py:1 (module)", "pkg/mod.py:5 Record.method", "pkg/mod.py:15 bare"]
    assert total == 7  # two modules, Record, Record.method, Record.size, documented, bare
