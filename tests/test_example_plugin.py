"""The example third-party plugin (plugins/testbed_lion) the way a user gets it: pip-installed as its
own distribution, found through its entry point by a fresh `testbed` process, and used in a run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_SOURCE = ROOT / "plugins" / "testbed_lion"
DISTRIBUTION, VERSION = "testbed-lion", "0.1.0"

pytestmark = pytest.mark.slow  # a real pip install, and fresh `testbed` processes


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A directory holding a real pip install of the plugin distribution (no dependencies: testbed
    and torch are already in this environment)."""
    tmp = tmp_path_factory.mktemp("lion")
    # Build from a copy: a build writes build/ and *.egg-info next to the sources.
    source = tmp / "src"
    shutil.copytree(PLUGIN_SOURCE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = tmp / "site"
    completed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-input",
         "--disable-pip-version-check", "--no-cache-dir", "--target", str(target), str(source)],
        capture_output=True, text=True)
    assert completed.returncode == 0, (
        "pip could not install the example plugin (--no-build-isolation needs setuptools in this "
        f"environment):\n{completed.stdout}\n{completed.stderr}")
    assert (target / "testbed_lion" / "plugin.py").is_file()
    assert list(target.glob("testbed_lion-0.1.0.dist-info/entry_points.txt"))
    return target


def run_cli(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m testbed.cli ARGS` in a fresh process that sees the installed plugin."""
    env = {k: v for k, v in os.environ.items() if k != "TESTBED_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "testbed.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_installed_plugin_is_listed(site, tmp_path):
    completed = run_cli(site, "plugins", "--json", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    rows = {row["name"]: row for row in json.loads(completed.stdout)}
    lion = rows["lion"]
    assert lion["distribution"] == DISTRIBUTION
    assert lion["version"] == VERSION
    assert lion["module"] == "testbed_lion.plugin"
    assert lion["error"] is None
    assert lion["registers"] == {"optimizer": ["lion"], "task": [], "diagnostic": [], "executor": []}
    # The standard plugins sit next to it, unchanged.
    assert {"sgd", "adam"} <= set(rows["optimizers"]["registers"]["optimizer"])
    assert "lion" not in rows["optimizers"]["registers"]["optimizer"]


def test_the_installed_plugin_is_the_one_under_test(site, tmp_path):
    # Found (not imported: no torch start-up) from the pip target, even where the environment has
    # its own copy installed too: PYTHONPATH comes first.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    code = ("import importlib.util, importlib.metadata as md; "
            "print(importlib.util.find_spec('testbed_lion').origin); print(md.version('testbed-lion'))")
    completed = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    path, version = completed.stdout.split()
    assert Path(path).resolve().is_relative_to(site.resolve())
    assert version == VERSION


def test_an_experiment_runs_with_the_installed_plugin(site, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "name: lion-tiny\n"
        "task: {name: gaussian, d: 3, n: 10}\n"
        "model: {layers: 2}\n"
        "optimizers:\n"
        "  - {name: sgd, lr: 0.01}\n"
        "  - {name: adam, lr: 0.001}\n"
        "  - {name: lion, lr: 0.0003, options: {betas: [0.9, 0.99], weight_decay: 0.1}}\n"
        "train: {steps: 20, batch_size: 64, seeds: [0]}\n"
        "eval: {every: 10, batch_size: 128}\n"
    )
    logdir = tmp_path / "runs"
    completed = run_cli(site, "run", str(config), "--logdir", str(logdir), "--workers", "1", cwd=tmp_path)
    assert completed.returncode == 0, f"{completed.stdout}\n{completed.stderr}"
    results = json.loads((logdir / "lion-tiny" / "results.json").read_text())
    assert results["status"] == "complete"
    assert [(r["label"], r["status"]) for r in results["runs"]] == [
        ("sgd", "completed"), ("adam", "completed"), ("lion", "completed")]
    assert results["versions"]["lion"] == f"{DISTRIBUTION} {VERSION}"
    lion = next(r for r in results["runs"] if r["label"] == "lion")
    assert lion["optimizer"] == "lion" and lion["eval_steps"] == [0, 10, 20]
    assert lion["final_eval_loss"] < lion["eval_losses"][0]  # Lion trained the model
    # Common random numbers hold across plugins: same initial weights, same step-0 eval loss.
    assert len({r["eval_losses"][0] for r in results["runs"]}) == 1
    assert (logdir / "lion-tiny" / "lion" / "seed-0").is_dir()
    assert "lion" in completed.stdout  # the results table
