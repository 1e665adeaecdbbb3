"""Checkpoints and exact resume: a `testbed run` killed with SIGKILL mid-way and started again ends
with exactly the eval losses, diagnostics and TensorBoard curves of a run never interrupted."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from testbed.files.layout import CHECKPOINT_FILE, EVENT_FILE_PREFIX

from shared_fixtures import TINY

pytestmark = pytest.mark.slow  # every test here kills or interrupts real runs and resumes them

STEPS, CHECKPOINT_EVERY, KILL_AT = 60, 20, 47

# A plugin that SIGKILLs its own process at step $KILL_AT of the first run, after making sure what was
# logged since the last checkpoint is on disk (so the resume must cut it away).
KILLER = """
import os, signal
from testbed import hookimpl

@hookimpl
def on_step_end(run, step, metrics):
    if str(step) == os.environ.get("KILL_AT") and run.label == "sgd" and run.seed == 0:
        run.logger.flush()
        os.kill(os.getpid(), signal.SIGKILL)
"""


def config(tmp_path: Path, **train) -> Path:
    raw = copy.deepcopy(TINY)
    raw["train"].update({"steps": STEPS, "checkpoint_every": CHECKPOINT_EVERY, "seeds": 1, **train})
    raw["eval"]["every"] = 5
    # Diagnostics with state across steps (generalized smoothness aggregates a window) must resume too.
    raw["diagnostics"] = [{"name": "generalized_smoothness", "options": {"every": 3, "stop": 55}},
                          {"name": "directional_smoothness", "options": {"every": 10}}]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run_testbed(path: Path, logdir: Path, plugin_dir: Path | None = None, kill_at: int | None = None,
            workers: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "KILL_AT": str(kill_at or "")}
    if plugin_dir is not None:
        env.update(TESTBED_PLUGINS="killer", PYTHONPATH=os.pathsep.join([str(plugin_dir), env.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "testbed.cli", "run", str(path), "--logdir", str(logdir),
                           "--workers", str(workers)], env=env, capture_output=True, text=True, timeout=300)


def results(logdir: Path) -> dict[str, dict]:
    data = json.loads((logdir / "tiny" / "results.json").read_text())
    return {r["key"]: r for r in data["runs"]}


def scalar_events(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a tag over every event file of the run, in file order (TensorBoard's)."""
    points = []
    for path in sorted(p for p in run_dir.iterdir() if p.name.startswith(EVENT_FILE_PREFIX)):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == tag:
                    points.append((event.step, value.tensor.float_val[0] if value.HasField("tensor") else value.simple_value))
    return points


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same experiment, never interrupted."""
    tmp = tmp_path_factory.mktemp("reference")
    done = run_testbed(config(tmp), tmp / "runs")
    assert done.returncode == 0, done.stderr
    return tmp / "runs"


def test_sigkill_then_resume_gives_exactly_the_uninterrupted_results(tmp_path, reference):
    plugin_dir = tmp_path / "plugin"
    plugin_dir.mkdir()
    (plugin_dir / "killer.py").write_text(textwrap.dedent(KILLER))
    path, logdir = config(tmp_path), tmp_path / "runs"

    killed = run_testbed(path, logdir, plugin_dir, kill_at=KILL_AT)
    # The run's worker process dies, not the experiment: that run failed, and kept its checkpoint.
    assert killed.returncode == 1 and "worker process died (killed by signal SIGKILL)" in killed.stderr
    run_dir = logdir / "tiny" / "sgd" / "seed-0"
    assert (run_dir / CHECKPOINT_FILE).exists() and results(logdir)["sgd/seed-0"]["status"] == "failed"
    logged = [step for step, _ in scalar_events(run_dir, "eval/loss")]
    assert max(logged) == 45 > 40  # logged past the checkpoint at step 40 before the kill

    resumed = run_testbed(path, logdir, plugin_dir)  # the same command again, no kill this time
    assert resumed.returncode == 0, resumed.stderr
    assert "1 resume from a checkpoint" in resumed.stdout
    got, want = results(logdir), results(reference)
    assert got["sgd/seed-0"]["resumed_from"] == [40] and got["adam/seed-0"]["resumed_from"] == []
    for key in want:
        assert got[key]["eval_steps"] == want[key]["eval_steps"]
        assert got[key]["eval_losses"] == want[key]["eval_losses"], key  # bitwise: exact equality
        assert got[key]["diagnostics"] == want[key]["diagnostics"], key
        assert got[key]["status"] == "completed"
    assert not (run_dir / CHECKPOINT_FILE).exists()  # finished: the summary is the cache now

    # TensorBoard: every step once, in increasing order, with the uninterrupted run's values.
    for tag in ("eval/loss", "train/loss", "diag/directional_smoothness/value"):
        events = scalar_events(run_dir, tag)
        steps = [step for step, _ in events]
        assert steps == sorted(set(steps)), tag
        assert events == scalar_events(reference / "tiny" / "sgd" / "seed-0", tag), tag


def test_sigkill_of_the_whole_process_group_with_worker_processes_resumes_too(tmp_path, reference):
    """Kill the driver and its worker processes from outside, as a crash would, once a checkpoint exists."""
    path, logdir = config(tmp_path, steps=STEPS, batch_size=2000), tmp_path / "runs"
    env = {**os.environ}
    process = subprocess.Popen([sys.executable, "-m", "testbed.cli", "run", str(path), "--logdir", str(logdir),
                                "--workers", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    checkpoints = [logdir / "tiny" / label / "seed-0" / CHECKPOINT_FILE for label in ("sgd", "adam")]
    deadline = time.monotonic() + 240
    while not any(c.exists() for c in checkpoints) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    resumed = run_testbed(path, logdir, workers=2)
    assert resumed.returncode == 0, resumed.stderr
    reference_big = tmp_path / "reference"
    done = run_testbed(path, reference_big, workers=1)
    assert done.returncode == 0, done.stderr
    got, want = results(logdir), results(reference_big)
    assert any(run["resumed_from"] for run in got.values())
    for key in want:
        assert got[key]["eval_losses"] == want[key]["eval_losses"], key


def test_ctrl_c_checkpoints_at_a_step_and_the_next_run_goes_on_from_it(tmp_path, reference):
    path, logdir = config(tmp_path, checkpoint_every=None), tmp_path / "runs"
    # Ctrl-C as a terminal sends it: SIGINT handled as it is by default, even where the test itself runs
    # as a shell's background job (which starts with SIGINT ignored, and children inherit that).
    process = subprocess.Popen([sys.executable, "-m", "testbed.cli", "run", str(path), "--logdir", str(logdir),
                                "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    run_dir = logdir / "tiny" / "sgd" / "seed-0"
    deadline = time.monotonic() + 120
    while not list(run_dir.glob(EVENT_FILE_PREFIX + "*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 130, output
    data = json.loads((logdir / "tiny" / "results.json").read_text())
    assert data["status"] == "interrupted"
    stopped = {r["key"]: r for r in data["runs"]}["sgd/seed-0"]
    if stopped["status"] == "completed":
        pytest.skip("the first run finished before Ctrl-C arrived")
    assert (run_dir / CHECKPOINT_FILE).exists()
    resumed = run_testbed(path, logdir)
    assert resumed.returncode == 0, resumed.stderr
    got, want = results(logdir), results(reference)
    assert got["sgd/seed-0"]["resumed_from"] == [stopped["steps_done"]]
    for key in want:
        assert got[key]["eval_losses"] == want[key]["eval_losses"], key


def test_workers_of_a_killed_driver_stop_with_a_checkpoint(tmp_path):
    """kill -9 of the driver alone: its worker processes notice and stop at a step, checkpointed."""
    path, logdir = config(tmp_path, steps=3000, checkpoint_every=None), tmp_path / "runs"
    process = subprocess.Popen([sys.executable, "-m", "testbed.cli", "run", str(path), "--logdir", str(logdir),
                                "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dirs = [logdir / "tiny" / label / "seed-0" for label in ("sgd", "adam")]
    deadline = time.monotonic() + 120
    while not all(list(d.glob(EVENT_FILE_PREFIX + "*")) for d in run_dirs) and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = descendants(process.pid)  # the worker server (forkserver) and its workers
    assert workers
    process.kill()  # the driver only
    process.wait()
    deadline = time.monotonic() + 60
    while not all((d / "summary.json").exists() for d in run_dirs) and time.monotonic() < deadline:
        time.sleep(0.1)  # a worker writes its summary after its checkpoint, as it stops
    assert all((d / CHECKPOINT_FILE).exists() for d in run_dirs)
    summaries = [json.loads((d / "summary.json").read_text()) for d in run_dirs]
    assert all(s["status"] == "interrupted" and 0 < s["steps_done"] < 3000 for s in summaries)
    deadline = time.monotonic() + 30  # then they exit: none is left waiting for work forever
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if alive(pid)]


def descendants(pid: int) -> list[int]:
    """The processes below ``pid``: its children, theirs, and so on (Linux /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
    found, frontier = [], [pid]
    while frontier:
        below = [child for child, parent in parents.items() if parent in frontier]
        found += below
        frontier = below
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper has exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
