"""The seams a capability arrives through as a plugin, not a core edit: an executor registered with
``register_executors`` runs a sweep from `testbed run --executor <name>`, and a command added with
``register_commands`` is part of `testbed`; a plugin whose commands are broken costs only its own
commands. Every test drives the real CLI in a subprocess, with the plugin module on $TESTBED_PLUGINS."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from testbed import hookimpl
from testbed.errors import ConfigError
from testbed.experiment.executors.base import make_executor
from testbed.plugins import load_plugins

from shared_fixtures import TINY

# Runs every plan one after the other in the driver's process and writes each run directory it ran
# into $TOY_MARKER: proof that the runs went through this executor, not the local one.
TOY_EXECUTOR = """
import os
from testbed import hookimpl
from testbed.engine.loop import train


class ToyExecutor:
    name = "toy"

    def __init__(self, workers):
        self.workers = workers

    def capacity(self):
        return 1

    def execute(self, plans, plugins, report):
        results = []
        for plan in plans:
            results.append(train(plan, plugins, should_stop=lambda: False, report=report))
            with open(os.environ["TOY_MARKER"], "a") as marker:
                marker.write(plan.run_dir + "\\n")
        return results, False

    def close(self):
        pass


@hookimpl
def register_executors(register):
    register("toy", lambda workers, address: ToyExecutor(workers), doc="every run in this process, in order")
"""

HELLO_COMMAND = """
import click
from testbed import hookimpl


@hookimpl
def register_commands(cli):
    @cli.command()
    @click.option("--name", default="world")
    def hello(name):
        "Say hello from a plugin."
        click.echo(f"hello {name}")
"""

RAISING_COMMANDS = """
import click
from testbed import hookimpl


@hookimpl
def register_commands(cli):
    @cli.command()
    def half():
        "Added before the plugin raised: not added."
    raise RuntimeError("commands are broken")
"""

CLASHING_COMMAND = """
import click
from testbed import hookimpl


@hookimpl
def register_commands(cli):
    @cli.command()
    def extra():
        "Would come with the clashing one: not added."

    @cli.command()
    def run():
        "Would replace the built-in run."
        click.echo("not the real run")
"""


def run_testbed(tmp_path: Path, *args: str, modules: dict[str, str], **env: str) -> subprocess.CompletedProcess:
    """`testbed ARGS` in a subprocess, with ``modules`` ({name: source}) written into tmp_path/plugins,
    on PYTHONPATH and named in $TESTBED_PLUGINS."""
    directory = tmp_path / "plugins"
    directory.mkdir(exist_ok=True)
    for name, source in modules.items():
        (directory / f"{name}.py").write_text(textwrap.dedent(source))
    path = os.pathsep.join(filter(None, [str(directory), os.environ.get("PYTHONPATH")]))
    environment = {**os.environ, "PYTHONPATH": path, "TESTBED_PLUGINS": ",".join(modules), **env}
    return subprocess.run([sys.executable, "-m", "testbed.cli", *args], capture_output=True, text=True,
                          timeout=300, env=environment, cwd=tmp_path)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


def write_sweep(tmp_path: Path) -> Path:
    """Two points over sgd's learning rate, one seed: sgd runs at each point, adam (the same run
    at both) once."""
    raw = copy.deepcopy(TINY)
    raw["train"]["seeds"] = 1
    raw["sweep"] = {"grid": {"optimizers.sgd.lr": [0.01, 0.02]}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# ------------------------------------------------------------------ register_executors
def test_an_executor_from_a_plugin_runs_a_sweep(tmp_path):
    marker, logdir = tmp_path / "toy-ran.txt", tmp_path / "runs"
    done = run_testbed(tmp_path, "run", str(write_sweep(tmp_path)), "--logdir", str(logdir), "--executor", "toy",
                       modules={"toy_executor": TOY_EXECUTOR}, TOY_MARKER=str(marker))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 runs executed" in done.stdout

    sweep = json.loads((logdir / "tiny" / "sweep.json").read_text())
    assert sweep["status"] == "complete" and len(sweep["points"]) == 2
    run_dirs = set()
    for point in sweep["points"]:
        results = json.loads((logdir / "tiny" / point["directory"] / "results.json").read_text())
        assert results["status"] == "complete"
        assert sorted(run["label"] for run in results["runs"]) == ["adam", "sgd"]
        for run in results["runs"]:
            assert run["status"] == "completed" and run["steps_done"] == TINY["train"]["steps"], run
            assert json.loads((Path(run["run_dir"]) / "summary.json").read_text())["run_id"] == run["run_id"]
        run_dirs |= {run["run_dir"] for run in results["runs"] if run["label"] == "sgd"}
    ran = marker.read_text().splitlines()
    assert len(ran) == 3 and run_dirs < set(ran)  # both sgd runs, and the one adam run both points share


def test_an_unknown_executor_is_one_line_naming_the_registered_ones(tmp_path):
    done = run_testbed(tmp_path, "run", str(write_sweep(tmp_path)), "--logdir", str(tmp_path / "runs"),
                       "--executor", "nosuch", modules={"toy_executor": TOY_EXECUTOR})
    assert done.returncode == 1, done.stdout + done.stderr
    (line,) = error_lines(done.stderr)
    assert "'nosuch'" in line
    for name, plugin in (("local", "executors"), ("ray", "executors"), ("toy", "toy_executor")):
        assert f"{name} ({plugin})" in line
    assert "Traceback" not in done.stderr and not (tmp_path / "runs").exists()


def test_reproduce_runs_its_suite_on_a_plugin_executor_too(tmp_path):
    suite, marker, out = tmp_path / "suite", tmp_path / "toy-ran.txt", tmp_path / "out"
    suite.mkdir()
    (suite / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    done = run_testbed(tmp_path, "reproduce", "--quick", "--suite", str(suite), "--out", str(out), "--executor", "toy",
                       modules={"toy_executor": TOY_EXECUTOR}, TOY_MARKER=str(marker))
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((out / "runs" / "tiny" / "results.json").read_text())
    assert {run["status"] for run in results["runs"]} == {"completed"}
    assert sorted(marker.read_text().splitlines()) == sorted(run["run_dir"] for run in results["runs"])
    assert (out / "report" / "report.md").exists()


def test_the_executor_choices_come_from_the_registry(tmp_path):
    done = run_testbed(tmp_path, "run", "--help", modules={"toy_executor": TOY_EXECUTOR})
    assert done.returncode == 0, done.stderr
    assert "--executor [local|ray|toy]" in done.stdout


class ToyPlugin:
    """A registration seen in this process: a factory that records what it was called with."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    @hookimpl
    def register_executors(self, register):
        register("toy", self.make)

    def make(self, workers, address):
        self.calls.append((workers, address))
        return self


def test_make_executor_calls_the_registered_factory_with_workers_and_address():
    plugin = ToyPlugin()
    registry = load_plugins(extra={"toy_plugin": plugin}).registry
    assert make_executor(registry, "toy", 3) is plugin and plugin.calls == [(3, None)]
    assert type(make_executor(registry, "local", 2)).__name__ == "LocalExecutor"
    with pytest.raises(ConfigError, match=r"unknown executor 'slurm'; available: local \(executors\), ray "
                                          r"\(executors\), toy \(toy_plugin\)"):
        make_executor(registry, "slurm")
    with pytest.raises(ConfigError, match="executor 'toy' takes no address"):
        make_executor(registry, "toy", address="127.0.0.1:6379")
    assert plugin.calls == [(3, None)]


# ------------------------------------------------------------------ register_commands
def test_a_command_from_a_plugin_is_listed_and_runs(tmp_path):
    modules = {"hello_command": HELLO_COMMAND}
    listed = run_testbed(tmp_path, "--help", modules=modules)
    assert listed.returncode == 0, listed.stderr
    assert "hello" in listed.stdout and "Say hello from a plugin." in listed.stdout
    said = run_testbed(tmp_path, "hello", "--name", "seams", modules=modules)
    assert said.returncode == 0, said.stderr
    assert said.stdout == "hello seams\n"


def test_a_plugin_whose_register_commands_raises_breaks_only_its_commands(tmp_path):
    modules = {"hello_command": HELLO_COMMAND, "raising_commands": RAISING_COMMANDS}
    helped = run_testbed(tmp_path, "--help", modules=modules)
    assert helped.returncode == 0, helped.stderr
    for command in ("run", "report", "hello"):
        assert f"  {command} " in helped.stdout
    assert "half" not in helped.stdout  # what it added before it raised is not added either
    assert "plugin 'raising_commands' failed in register_commands: RuntimeError: commands are broken" \
        in helped.stdout.replace("\n  ", " ")
    assert run_testbed(tmp_path, "hello", modules=modules).stdout == "hello world\n"

    missing = run_testbed(tmp_path, "half", modules=modules)
    assert missing.returncode == 1
    (line,) = error_lines(missing.stderr)
    assert "No such command 'half'" in line and "RuntimeError: commands are broken" in line
    assert "Traceback" not in missing.stderr


def test_a_plugin_command_cannot_replace_a_command(tmp_path, write_yaml, tiny_raw):
    modules = {"clashing_command": CLASHING_COMMAND}
    helped = run_testbed(tmp_path, "--help", modules=modules)
    assert helped.returncode == 0, helped.stderr
    assert "plugin 'clashing_command' adds command 'run', which exists already" in helped.stdout
    assert "extra" not in helped.stdout
    validated = run_testbed(tmp_path, "validate", str(write_yaml(tiny_raw)), modules=modules)
    assert validated.returncode == 0 and "valid" in validated.stdout
    assert "Run an experiment or a sweep" in run_testbed(tmp_path, "run", "--help", modules=modules).stdout
