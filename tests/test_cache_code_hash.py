"""Cached runs and a plugin's code: a plugin from a working tree (named in $TESTBED_PLUGINS, or
pip-installed from a directory, editable or not) has its source in its runs' ids, so editing its
update rule runs them again, and says why; a released plugin's ids are what they always were."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import testbed_std.optimizers
import testbed_std.tasks
from testbed.experiment.cache import identity
from testbed.experiment.config import parse_config
from testbed.experiment.runner import plan_runs
from testbed.engine.run import RunPlan
from testbed.plugins import Plugins, load_plugins
from testbed.plugins.source import installed_from_directory, source_hash

PACKAGE = "signum_dev"
# The update rule lives in a helper module, not in the module the entry point names: editing it
# changes the runs all the same.
RULE = '''
    import torch

    SCALE = {scale}


    def direction(grad: torch.Tensor) -> torch.Tensor:
        return torch.sign(grad) * SCALE
'''
PLUGIN = '''
    import torch

    from testbed import hookimpl
    from signum_dev.rule import direction


    class Signum(torch.optim.Optimizer):
        def __init__(self, params, lr):
            super().__init__(params, {"lr": lr})

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.add_(direction(p.grad), alpha=-group["lr"])


    @hookimpl
    def register_optimizers(register):
        register("signum", lambda params, lr: Signum(params, lr), doc="sign descent, from a working tree")
'''
PYPROJECT = '''
    [build-system]
    requires = ["setuptools>=77"]
    build-backend = "setuptools.build_meta"

    [project]
    name = "signum-dev"
    version = "0.1.0"

    [project.entry-points.testbed]
    signum = "signum_dev.plugin"
'''
CHANGED = "the plugin's code changed since the cached runs; running them again"
# What a run id hashed before source hashes existed: a released plugin's identity must hold no more.
RELEASED_KEYS = {"task", "model", "train", "eval", "optimizer", "diagnostics", "seed", "pilot", "versions"}


def write_plugin(tree: Path, scale: float = 1.0) -> None:
    """The plugin's working tree: its package (plugin module and rule helper) and a pyproject."""
    package = tree / PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text('"""Sign descent, being written."""\n')
    (package / "plugin.py").write_text(textwrap.dedent(PLUGIN))
    edit_rule(tree, scale)
    (tree / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))


def edit_rule(tree: Path, scale: float) -> None:
    """What the author does between two runs: change the update rule."""
    (tree / PACKAGE / "rule.py").write_text(textwrap.dedent(RULE.format(scale=scale)))


def write_config(tmp_path: Path, tiny_raw: dict) -> Path:
    """The tiny experiment with the plugin's optimizer beside sgd, one seed."""
    tiny_raw["train"]["seeds"] = 1
    tiny_raw["optimizers"] = [{"name": "signum", "lr": 0.01}, {"name": "sgd", "lr": 0.01}]
    path = tmp_path / "signum.yaml"
    path.write_text(yaml.safe_dump(tiny_raw, sort_keys=False))
    return path


def run(config: Path, logdir: Path, env: dict[str, str], python: Path | str = sys.executable) -> str:
    """`testbed run CONFIG` in a fresh process of ``python``, which hashes the plugin's source anew."""
    completed = subprocess.run([str(python), "-m", "testbed.cli", "run", str(config), "--logdir", str(logdir)],
                               env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


def runs(logdir: Path) -> dict[str, dict]:
    """The experiment's runs by optimizer label, as results.json records them."""
    results = json.loads((logdir / "tiny" / "results.json").read_text())
    return {r["label"]: r for r in results["runs"]}


def assert_edits_rerun(config: Path, logdir: Path, tree: Path, plugin: str, env: dict[str, str],
                       python: Path | str = sys.executable) -> None:
    """Run, run again (cached), edit the rule, run again: only the plugin's run is redone, with other
    losses, and the console says why, naming the plugin."""
    first = run(config, logdir, env, python)
    assert "(2 runs executed" in first and CHANGED not in first
    before = runs(logdir)
    again = run(config, logdir, env, python)
    assert "nothing to run: all 2 runs are already done" in again and CHANGED not in again
    assert runs(logdir)["signum"]["eval_losses"] == before["signum"]["eval_losses"]

    edit_rule(tree, scale=0.5)
    edited = run(config, logdir, env, python)
    assert f"{plugin}: {CHANGED}" in edited.splitlines()
    assert "(1 runs executed, 0 of them resumed; 1 already done)" in edited  # sgd's run stays cached
    after = runs(logdir)
    assert after["signum"]["run_id"] != before["signum"]["run_id"]
    assert after["signum"]["eval_losses"][0] == before["signum"]["eval_losses"][0]  # same init, same data
    assert after["signum"]["eval_losses"][1:] != before["signum"]["eval_losses"][1:]
    assert after["signum"]["plugin_code"][plugin] != before["signum"]["plugin_code"][plugin]
    assert after["sgd"] == before["sgd"]


def plugin_env(**extra: str) -> dict[str, str]:
    """This environment without the caller's $TESTBED_PLUGINS, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "TESTBED_PLUGINS"}
    return {**env, **extra}


def test_editing_a_testbed_plugins_module_reruns_its_runs(tmp_path, tiny_raw):
    tree = tmp_path / "src"
    write_plugin(tree)
    path = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
    env = plugin_env(PYTHONPATH=path, TESTBED_PLUGINS=f"{PACKAGE}.plugin")
    assert_edits_rerun(write_config(tmp_path, tiny_raw), tmp_path / "runs", tree, f"{PACKAGE}.plugin", env)


def venv_seeing_this_one(directory: Path) -> tuple[Path, Path]:
    """A fresh virtual environment whose site-packages adds this environment's (a .pth line, so
    testbed, torch, pip and setuptools are there without an install): its python and site-packages.
    Editable installs need a real site directory: their .pth files are not read from PYTHONPATH."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(directory)], check=True)
    python = directory / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    lines = [f"import site; site.addsitedir({path!r})\n" for path in site.getsitepackages()]
    (Path(purelib) / "this_environment.pth").write_text("".join(lines))
    return python, Path(purelib)


@pytest.mark.slow  # a real pip install
def test_editing_an_editable_install_reruns_its_runs(tmp_path, tiny_raw):
    tree = tmp_path / "tree"
    write_plugin(tree)
    python, purelib = venv_seeing_this_one(tmp_path / "venv")
    completed = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-input",
         "--disable-pip-version-check", "--no-cache-dir", "-e", str(tree)],
        capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert installed_from_directory(md.PathDistribution(purelib / "signum_dev-0.1.0.dist-info"))
    assert_edits_rerun(write_config(tmp_path, tiny_raw), tmp_path / "runs", tree, "signum", plugin_env(), python)


def dist_info(tmp_path: Path, direct_url: dict | None) -> md.Distribution:
    """A distribution's metadata directory, with ``direct_url.json`` as pip writes it (PEP 610)."""
    path = tmp_path / "example-1.0.dist-info"
    path.mkdir()
    (path / "METADATA").write_text("Metadata-Version: 2.1\nName: example\nVersion: 1.0\n")
    if direct_url is not None:
        (path / "direct_url.json").write_text(json.dumps(direct_url))
    return md.PathDistribution(path)


@pytest.mark.parametrize("direct_url, from_directory", [
    ({"url": "file:///src/example", "dir_info": {"editable": True}}, True),
    ({"url": "file:///src/example", "dir_info": {}}, True),  # a copy of a directory: still being written
    ({"url": "file:///dist/example-1.0-py3-none-any.whl", "archive_info": {}}, False),  # CI's wheel
    ({"url": "https://github.com/x/example", "vcs_info": {"vcs": "git", "commit_id": "0" * 40}}, False),
    (None, False),  # from an index
])
def test_a_directory_install_is_a_working_tree_and_a_release_is_not(tmp_path, direct_url, from_directory):
    assert installed_from_directory(dist_info(tmp_path, direct_url)) is from_directory


def test_the_source_hash_covers_every_file_of_the_package(tmp_path, monkeypatch):
    tree = tmp_path / "src"
    write_plugin(tree)
    monkeypatch.syspath_prepend(str(tree))
    monkeypatch.delitem(sys.modules, PACKAGE, raising=False)
    first = source_hash(f"{PACKAGE}.plugin:register_optimizers")
    assert first == source_hash(PACKAGE) and len(first) == 16
    (tree / PACKAGE / "sub").mkdir()
    (tree / PACKAGE / "sub" / "helper.py").write_text("X = 1\n")
    second = source_hash(PACKAGE)
    assert second != first
    (tree / PACKAGE / "notes.txt").write_text("not code\n")
    assert source_hash(PACKAGE) == second
    (tree / PACKAGE / "tests").mkdir()
    (tree / PACKAGE / "tests" / "test_plugin.py").write_text("def test(): pass\n")
    assert source_hash(PACKAGE) == second  # a test changes no run


def tiny_plan(tiny_raw: dict, tmp_path: Path, plugins: Plugins) -> RunPlan:
    """The tiny experiment's first run (sgd, seed 0)."""
    return plan_runs(parse_config(tiny_raw, plugins.registry), tmp_path)[0]


def test_a_released_plugin_adds_nothing_to_the_identity(tiny_raw, tmp_path):
    # Plugins handed in as objects stand for released ones here: no source to hash.
    released = load_plugins(extra={"optimizers": testbed_std.optimizers, "tasks": testbed_std.tasks},
                            entry_points=False)
    assert set(identity(tiny_plan(tiny_raw, tmp_path, released), released)) == RELEASED_KEYS


def test_the_standard_plugins_hash_their_source_only_in_a_working_tree(tiny_raw, tmp_path):
    # CI installs the wheel: there the standard plugins' ids must be what they always were. In an
    # editable checkout they cover the code, as a third party's do.
    plugins = load_plugins()
    found = identity(tiny_plan(tiny_raw, tmp_path, plugins), plugins)
    if installed_from_directory(md.distribution("testbed")):
        assert found["code"] == {"optimizers": source_hash("testbed_std"), "tasks": source_hash("testbed_std")}
    else:
        assert set(found) == RELEASED_KEYS


def test_a_source_trees_own_metadata_found_first_does_not_hide_a_directory_install(tmp_path, monkeypatch):
    # Run from a source tree (`python -m testbed.cli` in a checkout installed with `pip install .`),
    # Python finds the tree's build metadata (no direct_url.json) before the installed copy: the
    # install is still one from a directory, so the run ids stay those of the same install elsewhere.
    tree, site = tmp_path / "tree", tmp_path / "site"
    tree.mkdir(), site.mkdir()
    (tree / "example.egg-info").mkdir()
    (tree / "example.egg-info" / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: example\nVersion: 1.0\n")
    installed = dist_info(site, {"url": "file:///src/example", "dir_info": {}})
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(tree))
    first = md.distribution("example")
    assert first.read_text("direct_url.json") is None  # the tree's copy is the one found
    assert installed_from_directory(first) and installed_from_directory(installed)
