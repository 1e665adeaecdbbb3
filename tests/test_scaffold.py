"""`testbed new optimizer|task|diagnostic NAME`: the generated distribution is complete and valid
(pyproject with the entry point, Python that compiles, an example config the registry accepts once the
plugin is loaded, a README that says how to install, test, check and run it), bad input is one error
line, an existing directory is never touched; and, marked slow, the issue's acceptance end to end: the
distribution pip-installed into a fresh virtual environment passes its own tests and `testbed check`,
and its example runs."""

from __future__ import annotations

import ast
import glob
import importlib
import json
import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

import testbed
from testbed.cli.commands import main
from testbed.experiment.sweep import expand
from testbed.plugins import load_plugins
from testbed.scaffold.generate import IMPORTED_CLASS_NAMES

KINDS = ("optimizer", "task", "diagnostic")
PACKAGE = Path(testbed.__file__).resolve().parent
TEMPLATES = PACKAGE / "scaffold" / "templates"
ROOT = Path(__file__).resolve().parents[1]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_error(result: Result, *fragments: str) -> str:
    """Exit 1, exactly one 'Error:' line (on stderr) holding every fragment, no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def generate(kind: str, name: str, parent: Path) -> Path:
    result = invoke("new", kind, name, "--dir", parent)
    assert result.exit_code == 0, result.output
    target = parent / f"testbed-{name.replace('_', '-')}"
    assert str(target) in result.output and f"testbed check {name}" in result.output
    return target


@pytest.fixture
def plugin_module(monkeypatch):
    """Import a generated plugin's module from its source tree; forgotten after the test."""
    loaded: list[str] = []

    def load(target: Path, package: str):
        monkeypatch.syspath_prepend(str(target / "src"))
        module = importlib.import_module(f"{package}.plugin")
        loaded.extend(name for name in sys.modules if name == package or name.startswith(package + "."))
        return module

    yield load
    for name in loaded:
        sys.modules.pop(name, None)


# ------------------------------------------------------------------ what is generated
@pytest.mark.parametrize("kind", KINDS)
def test_the_distribution_is_complete_and_valid(kind, tmp_path, plugin_module):
    name = f"my_{kind}"
    package = f"testbed_{name}"
    target = generate(kind, name, tmp_path)

    project = tomllib.loads((target / "pyproject.toml").read_text())
    assert project["project"]["name"] == f"testbed-my-{kind}"
    assert project["project"]["entry-points"]["testbed"] == {name: f"{package}.plugin"}
    assert any(req.startswith("testbed>=") for req in project["project"]["dependencies"])
    assert project["tool"]["setuptools"]["packages"]["find"]["where"] == ["src"]
    assert project["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]

    sources = sorted(target.rglob("*.py"))
    assert target / "src" / package / "plugin.py" in sources and target / "tests" / f"test_{name}.py" in sources
    for source in sources:
        text = source.read_text()
        compile(text, str(source), "exec")
        assert "$" not in text, f"{source}: a placeholder left unfilled"
    tests = (target / "tests" / f"test_{name}.py").read_text()
    assert "testbed.testing" in tests
    # The tests use only the public API: testbed, testbed.testing and the plugin's own package.
    imported = {line.split()[1] for line in tests.splitlines() if line.startswith(("import ", "from "))}
    assert {m for m in imported if m.split(".")[0] == "testbed"} <= {"testbed", "testbed.testing"}

    readme = (target / "README.md").read_text()
    for command in ("pip install", "pytest", f"testbed check {name}",
                    f"testbed run examples/{name}.yaml --set train.steps=200"):
        assert command in readme

    # The example config is valid once the plugin is loaded, and it uses the plugin.
    raw = yaml.safe_load((target / "examples" / f"{name}.yaml").read_text())
    plugins = load_plugins(extra={name: plugin_module(target, package)})
    assert not plugins.failed
    assert plugins.registry.entries[kind][name].plugin == name
    config = expand(raw, plugins.registry, default_name=name).points[0].config
    labels = [spec.name for spec in config.optimizers]
    assert {"adam", "sgd"} <= set(labels)
    used = {"optimizer": labels, "task": [config.task.name], "diagnostic": [s.name for s in config.diagnostics]}
    assert name in used[kind]


def test_names_derive_from_the_plugin_name(tmp_path):
    target = generate("optimizer", "two_words", tmp_path)
    assert target.name == "testbed-two-words"
    optim = (target / "src" / "testbed_two_words" / "optim.py").read_text()
    assert "class TwoWords(torch.optim.Optimizer)" in optim
    assert (target / "examples" / "two_words.yaml").is_file()


def test_the_default_directory_is_the_current_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert invoke("new", "task", "cubes").exit_code == 0
    assert (tmp_path / "testbed-cubes" / "src" / "testbed_cubes" / "task.py").is_file()


def test_the_distribution_is_as_readable_as_the_umask_makes_a_new_directory(tmp_path):
    previous = os.umask(0o022)
    try:
        target = generate("task", "shared", tmp_path)
    finally:
        os.umask(previous)
    assert target.stat().st_mode & 0o777 == 0o755
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # the scratch directory is gone


def test_a_missing_parent_directory_is_created(tmp_path):
    target = generate("diagnostic", "probe_thing", tmp_path / "a" / "b")
    assert target.parent == tmp_path / "a" / "b"


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("name", ["Signum", "1st", "my-opt", "sign um", "_private", "class", "x" * 41, "über"])
def test_a_bad_name_is_one_error_line_and_writes_nothing(name, tmp_path):
    assert_one_error(invoke("new", "optimizer", name, "--dir", tmp_path), "invalid optimizer name", repr(name))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("kind,name", [("diagnostic", "scalar"), ("optimizer", "option"), ("task", "linear_regression_task")])
def test_a_name_whose_class_would_shadow_an_import_is_refused(kind, name, tmp_path):
    assert_one_error(invoke("new", kind, name, "--dir", tmp_path), "would shadow")
    assert not any(tmp_path.iterdir())


def test_the_shadowing_rule_knows_every_class_the_templates_import():
    imported = set()
    for template in TEMPLATES.rglob("*.py.tmpl"):
        for node in ast.walk(ast.parse(template.read_text().replace("$", "_"))):
            if isinstance(node, ast.ImportFrom):
                imported |= {alias.name for alias in node.names if alias.name[:1].isupper()}
    assert imported - {"_class_name"} == IMPORTED_CLASS_NAMES


def test_an_installed_package_of_the_same_name_is_refused(tmp_path):
    # testbed_std holds the standard plugins: a distribution installing a package of that name would overwrite it.
    assert_one_error(invoke("new", "optimizer", "std", "--dir", tmp_path), "testbed_std is installed already")
    assert not any(tmp_path.iterdir())


def test_an_unknown_kind_is_one_error_line(tmp_path):
    assert_one_error(invoke("new", "executor", "mine", "--dir", tmp_path), "executor")
    assert not any(tmp_path.iterdir())


def test_a_registered_name_is_refused(tmp_path):
    # A plugin registering a taken name could not load beside the one that has it.
    assert_one_error(invoke("new", "optimizer", "adam", "--dir", tmp_path), "'adam' is registered already")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("existing", ["directory", "file"])
def test_an_existing_target_is_never_overwritten(existing, tmp_path):
    target = tmp_path / "testbed-signum"
    if existing == "directory":
        target.mkdir()
        (target / "mine.txt").write_text("keep me")
    else:
        target.write_text("keep me")
    assert_one_error(invoke("new", "optimizer", "signum", "--dir", tmp_path), str(target), "exists already")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["testbed-signum"]  # no scratch directory left
    kept = target / "mine.txt" if existing == "directory" else target
    assert kept.read_text() == "keep me"
    if existing == "directory":
        assert [p.name for p in target.iterdir()] == ["mine.txt"]


def test_a_parent_that_is_a_file_is_one_error_line(tmp_path):
    parent = tmp_path / "file"
    parent.write_text("")
    assert_one_error(invoke("new", "optimizer", "signum", "--dir", parent), "cannot write into")


# ------------------------------------------------------------------ the templates ship
def test_every_template_is_package_data():
    """The wheel holds what pyproject's package-data globs match: every file under templates/ must
    match one (a template that does not would be missing from an installed testbed)."""
    if not (ROOT / "pyproject.toml").is_file() or not (ROOT / "testbed" / "scaffold").is_dir():
        pytest.skip("not a checkout")
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["testbed"]
    source = ROOT / "testbed"
    shipped = {Path(p) for pattern in patterns for p in glob.glob(str(source / pattern), recursive=True)}
    files = {p for p in (source / "scaffold" / "templates").rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert files and files <= shipped, sorted(map(str, files - shipped))
    assert {p.parent.name for p in files if p.parent.parent.name == "templates"} == {"common", *KINDS}


# ------------------------------------------------------------------ the acceptance, end to end
# Names no other plugin takes (the example distributions may be installed beside testbed).
ACCEPTANCE = [("optimizer", "signum"), ("task", "uniform_cube"), ("diagnostic", "step_alignment")]


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    """The python of a fresh virtual environment that sees this one's packages (testbed, torch, pip,
    setuptools, pytest) through a .pth file: what it installs goes into its own site-packages, with no
    network (pip --no-deps --no-build-isolation)."""
    root = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    own_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    # addsitedir, not a bare path: it also runs this environment's .pth files (an editable testbed's)
    parent_site = sysconfig.get_paths()["purelib"]
    Path(own_site, "testbed_parent.pth").write_text(f"import site; site.addsitedir({parent_site!r})\n")
    return python


def in_venv(python: Path, *args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python ARGS`` in ``cwd``, with no plugin named in $TESTBED_PLUGINS and nothing on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("TESTBED_PLUGINS", "PYTHONPATH")}
    completed = subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True,
                               timeout=timeout)
    assert completed.returncode == 0, f"{' '.join(args)}:\n{completed.stdout}\n{completed.stderr}"
    return completed


@pytest.mark.slow
@pytest.mark.parametrize("kind,name", ACCEPTANCE)
def test_a_new_plugin_installs_passes_its_tests_and_check_and_runs(kind, name, fresh_venv, tmp_path):
    testbed_cli = ("-m", "testbed.cli")
    in_venv(fresh_venv, *testbed_cli, "new", kind, name, "--dir", str(tmp_path / "x"), cwd=tmp_path)
    target = tmp_path / "x" / f"testbed-{name.replace('_', '-')}"
    in_venv(fresh_venv, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-input",
            "--disable-pip-version-check", "--no-cache-dir", str(target), cwd=tmp_path)
    site = in_venv(fresh_venv, "-c", f"import testbed_{name}; print(testbed_{name}.__file__)", cwd=tmp_path)
    assert fresh_venv.parent.parent in Path(site.stdout.strip()).parents  # installed into the fresh venv

    tests = in_venv(fresh_venv, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=target)
    assert " passed" in tests.stdout

    checked = in_venv(fresh_venv, *testbed_cli, "check", name, cwd=tmp_path)
    assert f"PASS {kind} {name}" in checked.stdout and "FAIL" not in checked.stdout

    logdir = tmp_path / "runs"
    in_venv(fresh_venv, *testbed_cli, "run", str(target / "examples" / f"{name}.yaml"), "--set", "train.steps=200",
            "--logdir", str(logdir), cwd=tmp_path)
    results = json.loads((logdir / name / "results.json").read_text())
    assert results["status"] == "complete"
    assert {run["status"] for run in results["runs"]} == {"completed"}
    assert all(run["steps_done"] == 200 for run in results["runs"])
    assert results["versions"][name] == f"testbed-{name.replace('_', '-')} 0.1.0"
    if kind == "diagnostic":
        assert all(run["diagnostics"][f"{name}/cosine"] for run in results["runs"])
