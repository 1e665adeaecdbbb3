"""Faults of the runs' processes and signals to the driver (issue 11, defects 6, 7 and 9).

A worker process that dies takes only its own run down; a lifecycle hook that raises fails its run,
and every record of that run says so; SIGTERM (what `timeout`, `kill` and schedulers send) stops an
experiment exactly as the first Ctrl-C does. Every test drives the real CLI or the real executor,
with real worker processes."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from testbed import hookimpl
from testbed.files.layout import CHECKPOINT_FILE, EVENT_FILE_PREFIX
from testbed.experiment.config import parse_config
from testbed.experiment.runner import run_sweep
from testbed.plugins import load_plugins
from testbed.experiment.sweep import Sweep

from shared_fixtures import TINY

# ------------------------------------------------------------------ helpers


def write_config(tmp_path: Path, name: str = "config.yaml", **train: Any) -> Path:
    raw = copy.deepcopy(TINY)
    raw["train"].update(train)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def cli_command(path: Path, logdir: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "testbed.cli", "run", str(path), "--logdir", str(logdir), "--workers", str(workers)]


def cli_env(**extra: str) -> dict[str, str]:
    """This process's environment, with its sys.path (a plugin_module's directory included)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), **extra}


def run_cli(path: Path, logdir: Path, workers: int, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(path, logdir, workers), env=cli_env(**env), capture_output=True, text=True,
                          timeout=300)


def results(logdir: Path) -> dict[str, Any]:
    return json.loads((logdir / "tiny" / "results.json").read_text())


def runs_by_key(logdir: Path) -> dict[str, dict[str, Any]]:
    return {run["key"]: run for run in results(logdir)["runs"]}


def summary(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


# ------------------------------------------------------------------ 6: a worker process dies

# Kills its own process in the middle of run adam/seed-0, as a crashing extension or the OOM killer would.
DIES = """
import os, signal
from testbed import hookimpl

@hookimpl
def on_step_end(run, step, metrics):
    if (run.label, run.seed, step) == ("adam", 0, 5):
        if os.environ["HOW"] == "exit":
            os._exit(1)
        os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
@pytest.mark.parametrize("workers, how, cause", [
    (1, "exit", "exit code 1"),
    (2, "exit", "exit code 1"),
    (2, "sigkill", "killed by signal SIGKILL"),
])
def test_a_run_whose_process_dies_fails_alone_and_the_others_finish(tmp_path, plugin_module, workers, how, cause):
    plugin_module("dies", DIES)
    path, logdir = write_config(tmp_path), tmp_path / "runs"
    done = run_cli(path, logdir, workers, HOW=how)

    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    message = f"worker process died ({cause})"
    assert error_lines(done.stderr) == [f"Error: run adam/seed-0 failed: {message}"]
    runs = runs_by_key(logdir)
    assert runs["adam/seed-0"]["status"] == "failed" and runs["adam/seed-0"]["error"] == message
    assert summary(runs["adam/seed-0"]["run_dir"])["status"] == "failed"  # the run directory agrees
    for key in ("sgd/seed-0", "sgd/seed-1", "adam/seed-1"):  # seed 1 ran after the death (a new worker)
        assert runs[key]["status"] == "completed", runs[key]
        assert runs[key]["steps_done"] == TINY["train"]["steps"]
        assert runs[key]["eval_steps"] == [0, 10, 20]
    assert results(logdir)["status"] == "complete"


# ------------------------------------------------------------------ 7: a lifecycle hook raises


class RaisesIn:
    """Raises in one lifecycle hook, for run adam/seed-0 only."""

    def __init__(self, hook: str):
        self.hook = hook

    def _maybe_raise(self, hook: str, run) -> None:
        if hook == self.hook and (run.label, run.seed) == ("adam", 0):
            raise RuntimeError(f"{hook} broke")

    @hookimpl
    def on_run_start(self, run):
        self._maybe_raise("on_run_start", run)

    @hookimpl
    def on_step_end(self, run, step, metrics):
        self._maybe_raise("on_step_end", run)

    @hookimpl
    def on_run_end(self, run, status):
        self._maybe_raise("on_run_end", run)


def assert_one_truth(outcome, failed_key: str, error: str) -> None:
    """results.json, summary.json and the returned results say the same of every run."""
    written = {run["key"]: run for run in json.loads((outcome.experiments[0].directory / "results.json").read_text())["runs"]}
    for result in outcome.results:
        on_disk = summary(result.run_dir)
        assert result.status == written[result.key]["status"] == on_disk["status"], result.key
        assert result.error == written[result.key]["error"] == on_disk["error"], result.key
        if result.key == failed_key:
            assert (result.status, result.error) == ("failed", error)
            assert f"RuntimeError: {error.split(': ')[-1]}" in (Path(result.run_dir) / "error.txt").read_text()
        else:
            assert result.status == "completed" and result.steps_done == TINY["train"]["steps"], result.key


@pytest.mark.parametrize("hook", ["on_run_start", "on_run_end"])
def test_a_raising_lifecycle_hook_fails_its_run_in_process(tmp_path, hook):
    plugins = load_plugins(extra={"raises": RaisesIn(hook)})
    config = parse_config(copy.deepcopy(TINY), plugins.registry)
    outcome = run_sweep(Sweep.of(config), plugins, tmp_path, workers=1)
    assert outcome.status == "complete"  # the experiment went on past the failing run
    error = "RuntimeError: on_run_start broke" if hook == "on_run_start" else "RuntimeError in on_run_end: on_run_end broke"
    assert_one_truth(outcome, "adam/seed-0", error)


RAISES_ON_RUN_END = """
from testbed import hookimpl

@hookimpl
def on_run_end(run, status):
    if (run.label, run.seed) == ("adam", 0):
        raise RuntimeError("on_run_end broke")
"""


def test_a_raising_on_run_end_fails_its_run_in_worker_processes_and_a_rerun_runs_it_again(tmp_path, plugin_module):
    plugin_module("raises_on_run_end", RAISES_ON_RUN_END)
    plugins = load_plugins()
    config = parse_config(copy.deepcopy(TINY), plugins.registry)
    outcome = run_sweep(Sweep.of(config), plugins, tmp_path, workers=2)
    assert_one_truth(outcome, "adam/seed-0", "RuntimeError in on_run_end: on_run_end broke")

    again = run_sweep(Sweep.of(config), plugins, tmp_path, workers=2)
    assert (again.executed, again.cached) == (1, 3)  # a failed run is not a finished one


# ------------------------------------------------------------------ 9: SIGTERM is Ctrl-C

LONG = {"steps": 1000, "seeds": 1, "checkpoint_every": None}  # long enough to be stopped mid-way


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, list[float]]:
    """The eval losses of each run of the same experiment, never interrupted."""
    plugins = load_plugins()
    raw = copy.deepcopy(TINY)
    raw["train"].update(LONG)
    outcome = run_sweep(Sweep.of(parse_config(raw, plugins.registry)), plugins, tmp_path_factory.mktemp("uninterrupted"))
    assert [r.status for r in outcome.results] == ["completed", "completed"]
    return {r.key: r.eval_losses for r in outcome.results}


def start_cli(command: list[str], tmp_path: Path, background: bool) -> tuple[subprocess.Popen, int]:
    """Start `testbed run`; return the process to wait for and the pid to signal. ``background``: as a
    background job of a non-interactive shell script, which starts it with SIGINT ignored (POSIX)."""
    if not background:
        process = subprocess.Popen(command, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return process, process.pid
    pid_file = tmp_path / "pid"
    script = '"$@" & echo $! > "$PID_FILE.tmp" && mv "$PID_FILE.tmp" "$PID_FILE"; wait $!'
    process = subprocess.Popen(["sh", "-c", script, "sh", *command], env=cli_env(PID_FILE=str(pid_file)),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return process, int(pid_file.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("workers, background", [(1, False), (2, True)], ids=["one-worker", "two-workers-background-job"])
def test_sigterm_stops_like_ctrl_c_and_the_rerun_resumes_exactly(tmp_path, uninterrupted, workers, background):
    path, logdir = write_config(tmp_path, **LONG), tmp_path / "runs"
    process, pid = start_cli(cli_command(path, logdir, workers), tmp_path, background)
    running = [logdir / "tiny" / label / "seed-0" for label in ("sgd", "adam")[:workers]]
    deadline = time.monotonic() + 120
    while not all(list(d.glob(EVENT_FILE_PREFIX + "*")) for d in running) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(pid, signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)

    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "leaked" not in stderr, stderr
    data = results(logdir)
    assert data["status"] == "interrupted"
    stopped = {run["key"]: run for run in data["runs"]}
    for run_dir in running:
        run = stopped[f"{run_dir.parent.name}/seed-0"]
        assert run["status"] == "interrupted" and 0 < run["steps_done"] < LONG["steps"], run
        assert (run_dir / CHECKPOINT_FILE).exists()

    resumed = run_cli(path, logdir, workers)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{workers} resume from a checkpoint" in resumed.stdout
    got = runs_by_key(logdir)
    for key, eval_losses in uninterrupted.items():
        assert got[key]["status"] == "completed"
        assert got[key]["eval_losses"] == eval_losses, key  # bitwise
    for run_dir in running:
        assert got[f"{run_dir.parent.name}/seed-0"]["resumed_from"] == [stopped[f"{run_dir.parent.name}/seed-0"]["steps_done"]]


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.3])
def test_a_second_signal_while_stopping_still_ends_with_the_results_and_130(tmp_path, delay):
    """Ctrl-C, then SIGTERM (a user pressing twice, a scheduler after a Ctrl-C): the second one
    stops at once or finds nothing left to stop, but never costs results.json or the exit code."""
    path, logdir = write_config(tmp_path, **LONG), tmp_path / "runs"
    process, pid = start_cli(cli_command(path, logdir, workers=1), tmp_path, background=False)
    run_dir = logdir / "tiny" / "sgd" / "seed-0"
    deadline = time.monotonic() + 120
    while not list(run_dir.glob(EVENT_FILE_PREFIX + "*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(pid, signal.SIGINT)
    time.sleep(delay)
    os.kill(pid, signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)

    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert results(logdir)["status"] == "interrupted"
    assert {run["status"] for run in results(logdir)["runs"]} == {"interrupted"}
