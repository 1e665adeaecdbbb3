"""A log directory is written by one `testbed run` at a time, never through a symbolic link, and a
disk that fills up (or refuses writes) stops the experiment with one clear error, keeping what was
done (issue 11, defects 8, 2 and 13). The lock tests use real processes: the kernel's flock is what
makes two writers exclude each other."""

from __future__ import annotations

import copy
import errno
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import torch
import yaml
from click.testing import CliRunner, Result
from tensorboard.backend.event_processing.event_accumulator import (
    STORE_EVERYTHING_SIZE_GUIDANCE,
    EventAccumulator,
)

from testbed.engine import checkpoint
from testbed.cli.commands import main
from testbed.files.json_io import write_json
from testbed.errors import StorageError, TestbedError
from testbed.files.layout import CHECKPOINT_FILE, LOCK_FILE
from testbed.files.lock import directory_lock

from shared_fixtures import TINY

# Holds the first run at its first step until the test creates $GATE/go; $GATE/started says it got there.
GATE = """
import os, time
from pathlib import Path
from testbed import hookimpl

@hookimpl
def on_step_end(run, step, metrics):
    gate = Path(os.environ["GATE"])
    if step == 1 and run.label == "sgd":
        (gate / "started").touch()
        deadline = time.monotonic() + 120
        while not (gate / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
"""


def tiny_config(tmp_path: Path, name: str = "tiny", **train) -> Path:
    raw = copy.deepcopy(TINY)
    raw["name"] = name
    raw["train"].update({"seeds": 1, **train})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_error(output: str, returncode: int, *fragments: str) -> str:
    """Exit 1 and exactly one 'Error:' line containing every fragment; no traceback."""
    assert returncode == 1, output
    assert "Traceback" not in output, output
    (line,) = [line for line in output.splitlines() if line.startswith("Error:")]
    for fragment in fragments:
        assert fragment in line, line
    return line


def event_steps(run_dir: Path, tag: str) -> list[int]:
    accumulator = EventAccumulator(str(run_dir), size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    accumulator.Reload()
    return [event.step for event in accumulator.Scalars(tag)]


# ------------------------------------------------------------------ defect 8: one writer at a time
@pytest.mark.slow
def test_a_second_run_of_a_running_experiment_is_refused_naming_the_first(tmp_path):
    gate = tmp_path / "gate"
    gate.mkdir()
    (gate / "gate_plugin.py").write_text(textwrap.dedent(GATE))
    config, logdir = tiny_config(tmp_path), tmp_path / "runs"
    command = [sys.executable, "-m", "testbed.cli", "run", str(config), "--logdir", str(logdir), "--workers", "1"]
    env = {**os.environ, "GATE": str(gate), "TESTBED_PLUGINS": "gate_plugin",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(gate), os.environ.get("PYTHONPATH")]))}
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (gate / "started").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (gate / "started").exists(), first.communicate()[0]

        second = subprocess.run(command, capture_output=True, text=True, timeout=120)  # no gate plugin
        line = assert_one_error(second.stderr, second.returncode, f"{logdir / 'tiny'} is in use by pid {first.pid}",
                                socket.gethostname(), f"testbed.cli run {config}")
        assert "since" in line
    finally:
        (gate / "go").touch()
        output = first.communicate(timeout=120)[0]
    assert first.returncode == 0, output
    for label in ("sgd", "adam"):
        run_dir = logdir / "tiny" / label / "seed-0"
        assert event_steps(run_dir, "train/loss") == list(range(1, 21)), label  # each step once
        assert event_steps(run_dir, "eval/loss") == [0, 10, 20], label
    data = json.loads((logdir / "tiny" / "results.json").read_text())
    assert [r["status"] for r in data["runs"]] == ["completed", "completed"]
    assert not (logdir / "tiny" / LOCK_FILE).exists()  # released at the end


def test_the_lock_of_a_dead_process_is_taken_over(tmp_path):
    logdir = tmp_path / "runs"
    (logdir / "tiny").mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (logdir / "tiny" / LOCK_FILE).write_text(json.dumps(
        {"pid": dead.pid, "host": socket.gethostname(), "command": "testbed run old.yaml", "since": "yesterday"}))
    result = cli("run", tiny_config(tmp_path, steps=5), "--logdir", logdir, "--workers", "1")
    assert result.exit_code == 0, result.output
    assert json.loads((logdir / "tiny" / "results.json").read_text())["status"] == "complete"
    assert not (logdir / "tiny" / LOCK_FILE).exists()


def test_a_held_lock_refuses_in_this_process_too_and_dry_run_only_reads(tmp_path):
    """flock excludes another open file of the same process as well; --dry-run takes no lock."""
    config, logdir = tiny_config(tmp_path, steps=5), tmp_path / "runs"
    with directory_lock(logdir / "tiny"):
        result = cli("run", config, "--logdir", logdir, "--workers", "1")
        assert_one_error(result.output, result.exit_code, f"is in use by pid {os.getpid()}")
        assert not (logdir / "tiny" / "config.yaml").exists()  # nothing written or removed
        planned = cli("run", config, "--logdir", logdir, "--dry-run")
        assert planned.exit_code == 0, planned.output
    assert cli("run", config, "--logdir", logdir, "--workers", "1").exit_code == 0


def test_two_experiments_in_one_log_directory_do_not_block_each_other(tmp_path):
    logdir = tmp_path / "runs"
    with directory_lock(logdir / "other"):
        result = cli("run", tiny_config(tmp_path, steps=5), "--logdir", logdir, "--workers", "1")
    assert result.exit_code == 0, result.output


def test_reproduce_locks_its_output_directory(tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    tiny_config(suite, steps=5)
    with directory_lock(tmp_path / "out"):
        result = cli("reproduce", "--quick", "--suite", suite, "--out", tmp_path / "out", "--workers", "1")
    assert_one_error(result.output, result.exit_code, f"{tmp_path / 'out'} is in use by pid {os.getpid()}")
    assert not (tmp_path / "out" / "runs").exists()


# ------------------------------------------------------------------ defect 2: no writing through links
def test_a_symlinked_run_directory_is_refused_and_nothing_is_written_through_it(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "seed-0").mkdir(parents=True)
    (elsewhere / "seed-0" / "precious.txt").write_text("keep me")
    logdir = tmp_path / "runs"
    (logdir / "tiny").mkdir(parents=True)
    (logdir / "tiny" / "sgd").symlink_to(elsewhere, target_is_directory=True)
    result = cli("run", tiny_config(tmp_path, steps=5), "--logdir", logdir, "--workers", "1")
    assert_one_error(result.output, result.exit_code, str(logdir / "tiny" / "sgd"), "symbolic link")
    assert sorted(p.name for p in elsewhere.rglob("*")) == ["precious.txt", "seed-0"]  # not removed, not written
    assert not (logdir / "tiny" / "adam").exists()


def test_a_symlinked_experiment_directory_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    logdir = tmp_path / "runs"
    logdir.mkdir()
    (logdir / "tiny").symlink_to(elsewhere, target_is_directory=True)
    result = cli("run", tiny_config(tmp_path, steps=5), "--logdir", logdir, "--workers", "1")
    assert_one_error(result.output, result.exit_code, str(logdir / "tiny"), "symbolic link")
    assert not any(elsewhere.iterdir())  # not even a lock file


def test_a_stale_pilot_behind_a_link_is_not_removed(tmp_path):
    """Pruning the pilots of an earlier attempt must not follow a link out of the log directory."""
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "lr-0.5" / "seed-0").mkdir(parents=True)
    (elsewhere / "lr-0.5" / "seed-0" / "precious.txt").write_text("keep me")
    logdir = tmp_path / "runs"
    (logdir / "tiny" / "tuning").mkdir(parents=True)
    (logdir / "tiny" / "tuning" / "dropped").symlink_to(elsewhere, target_is_directory=True)  # a label no longer tuned
    raw = yaml.safe_load(tiny_config(tmp_path, steps=5).read_text())
    raw["optimizers"][0]["tune"] = {"lr": [0.01, 0.02], "steps": 5}
    config = tmp_path / "tuned.yaml"
    config.write_text(yaml.safe_dump(raw))
    result = cli("run", config, "--logdir", logdir, "--workers", "1")
    assert_one_error(result.output, result.exit_code, str(logdir / "tiny" / "tuning" / "dropped"), "symbolic link")
    assert (elsewhere / "lr-0.5" / "seed-0" / "precious.txt").exists()


def test_a_symlinked_log_directory_itself_is_fine(tmp_path):
    """The root given as --logdir may be a link (runs -> /data/runs is common); only what is below it is guarded."""
    (tmp_path / "data").mkdir()
    (tmp_path / "runs").symlink_to(tmp_path / "data", target_is_directory=True)
    result = cli("run", tiny_config(tmp_path, steps=5), "--logdir", tmp_path / "runs", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "tiny" / "results.json").exists()


# ------------------------------------------------------------------ defect 13: a disk that fills up
# From step $FILL_STEP of the sgd run on, no file of the process executing it may grow past $FILL_BYTES:
# a write beyond fails with EFBIG, as one on a full disk fails with ENOSPC (SIGXFSZ is ignored, so that
# the write fails instead of the signal killing the process). The driver, writing results.json, is not limited.
FILL = """
import os, resource, signal
from testbed import hookimpl

@hookimpl
def on_step_end(run, step, metrics):
    if run.label == "sgd" and step == int(os.environ["FILL_STEP"]):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limit = int(os.environ["FILL_BYTES"])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
"""


@contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes of this process past ``limit`` bytes fail with EFBIG while the block runs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def run_filling(tmp_path: Path, fill_step: int, fill_bytes: int, **train) -> tuple[subprocess.CompletedProcess, Path]:
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "fill_plugin.py").write_text(textwrap.dedent(FILL))
    env = {**os.environ, "FILL_STEP": str(fill_step), "FILL_BYTES": str(fill_bytes), "TESTBED_PLUGINS": "fill_plugin",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(plugin), os.environ.get("PYTHONPATH")]))}
    logdir = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-m", "testbed.cli", "run", str(tiny_config(tmp_path, **train)),
                           "--logdir", str(logdir), "--workers", "1"], env=env, capture_output=True, text=True,
                          timeout=300)
    return done, logdir / "tiny"


def assert_no_tmp_files(directory: Path) -> None:
    assert not [p for p in directory.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_an_event_file_that_cannot_grow_stops_the_experiment_with_one_error(tmp_path):
    done, experiment = run_filling(tmp_path, fill_step=3, fill_bytes=6000, steps=200, checkpoint_every=None)
    output = done.stdout + done.stderr
    line = assert_one_error(output, done.returncode, "cannot write", str(experiment / "sgd" / "seed-0"),
                            "events.out.tfevents.", "File too large")
    assert "Exception in thread" not in output  # tensorboard's writer thread does not print its own traceback
    data = json.loads((experiment / "results.json").read_text())
    assert data["status"] == "failed" and data["error"] in line
    sgd = {r["key"]: r for r in data["runs"]}["sgd/seed-0"]
    assert sgd["status"] == "failed" and "File too large" in sgd["error"] and 3 < sgd["steps_done"] < 200
    summary = json.loads((experiment / "sgd" / "seed-0" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == sgd["error"]
    assert_no_tmp_files(experiment)


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_written_keeps_the_last_good_one(tmp_path):
    # Checkpoints (~20 KB) at steps 5, 10, 15; from step 7 no file may pass 12 KB (the event file stays smaller).
    done, experiment = run_filling(tmp_path, fill_step=7, fill_bytes=12_000, steps=20, checkpoint_every=5)
    run_dir = experiment / "sgd" / "seed-0"
    assert_one_error(done.stdout + done.stderr, done.returncode,
                     f"cannot write {run_dir / CHECKPOINT_FILE}: File too large")
    assert_no_tmp_files(experiment)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["steps_done"] == 10
    assert checkpoint.has_checkpoint(run_dir, summary["run_id"]) == 5  # the last good one, intact

    again = cli("run", experiment.parent.parent / "tiny.yaml", "--logdir", experiment.parent, "--workers", "1")
    assert again.exit_code == 0, again.output  # room again: the run goes on from step 5
    data = json.loads((experiment / "results.json").read_text())
    runs = {r["key"]: r for r in data["runs"]}
    assert runs["sgd/seed-0"]["status"] == "completed" and runs["sgd/seed-0"]["resumed_from"] == [5]


def test_write_json_that_fails_leaves_the_old_file_and_no_tmp(tmp_path):
    path = tmp_path / "results.json"
    write_json(path, {"old": True})
    with file_size_limit(100), pytest.raises(StorageError, match=f"cannot write {path}: File too large"):
        write_json(path, {"runs": list(range(1000))})
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_checkpoint_save_that_fails_keeps_the_previous_checkpoint(tmp_path):
    def at(step: int) -> checkpoint.Checkpoint:
        return checkpoint.Checkpoint("id", step, {"w": torch.zeros(1000)}, {}, torch.zeros(4),
                                     checkpoint.global_random_state(), {}, {}, {})

    checkpoint.save(tmp_path, at(5))
    with file_size_limit(1000), pytest.raises(StorageError, match=f"cannot write {tmp_path / CHECKPOINT_FILE}"):
        checkpoint.save(tmp_path, at(10))
    assert checkpoint.has_checkpoint(tmp_path, "id") == 5
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]


def test_a_full_disk_is_named_as_such_and_other_write_errors_by_their_cause():
    full = StorageError.writing("runs/x/summary.json", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert str(full) == "disk full while writing runs/x/summary.json: No space left on device"
    read_only = StorageError.writing("runs/x", OSError(errno.EROFS, os.strerror(errno.EROFS)))
    assert str(read_only) == "cannot write runs/x: Read-only file system"
    assert isinstance(full, TestbedError) and isinstance(full, OSError)  # one CLI line; still a failed write
