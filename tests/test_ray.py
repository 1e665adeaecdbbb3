"""The Ray executor on a real local Ray cluster started here (`ray start --head`): a sweep of
2 optimizers x 10 learning rates x 3 seeds gives identical per-run results with the local and the
Ray executor; `--executor ray` without an address starts (and stops) a Ray instance of its own."""

from __future__ import annotations

import copy
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import TINY

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'testbed[ray]')")

SGD_LRS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
ADAM_LRS = [0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ray_cli() -> str:
    return shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"


# Ray >= 2.59 authenticates with a token by default: the cluster and its clients share this one.
RAY_ENV = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def cluster():
    """A real single-node Ray cluster (2 CPUs), stopped afterwards."""
    port = _free_port()
    started = subprocess.run([_ray_cli(), "start", "--head", "--port", str(port), "--num-cpus", "2",
                              "--node-ip-address", "127.0.0.1", "--include-dashboard=false",
                              "--disable-usage-stats", "--object-store-memory", str(200 * 1024**2)],
                             capture_output=True, text=True, timeout=180, env={**os.environ, **RAY_ENV})
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([_ray_cli(), "stop", "--force"], capture_output=True, timeout=120,
                       env={**os.environ, **RAY_ENV})


def sweep_file(tmp_path: Path) -> Path:
    raw = copy.deepcopy(TINY)
    raw.pop("workers")
    raw["train"].update({"steps": 15, "batch_size": 32, "seeds": 3})
    raw["eval"].update({"every": 5, "batch_size": 64})
    raw["sweep"] = {"zip": {"optimizers.sgd.lr": SGD_LRS, "optimizers.adam.lr": ADAM_LRS}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "testbed.cli", "run", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **RAY_ENV})
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def per_run(logdir: Path) -> dict[str, dict]:
    """Point/label/seed -> the run's numbers, from every results.json of the sweep."""
    found = {}
    for path in (logdir / "tiny").rglob("results.json"):
        for r in json.loads(path.read_text())["runs"]:
            assert r["key"].startswith(f"{path.parent.name}/")  # run keys name their sweep point
            found[r["key"]] = {k: r[k] for k in ("label", "status", "lr", "eval_steps", "eval_losses",
                                                 "final_eval_loss", "steps_done", "run_id")}
    return found


def max_concurrent(directory: Path) -> int:
    """The most runs whose event files were being written at the same time."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    edges = []
    for path in directory.glob("**/seed-*/events.out.tfevents*"):
        times = [event.wall_time for event in EventFileLoader(str(path)).Load()]
        edges += [(min(times), 1), (max(times), -1)]
    running = most = 0
    for _, change in sorted(edges):
        running += change
        most = max(most, running)
    return most


def test_local_and_ray_executors_give_identical_results(cluster, tmp_path):
    path = sweep_file(tmp_path)
    run(str(path), "--logdir", str(tmp_path / "local"), "--executor", "local", "--workers", "2")
    output = run(str(path), "--logdir", str(tmp_path / "ray"), "--executor", "ray", "--address", cluster).stdout
    assert "60 runs executed" in output
    local, on_ray = per_run(tmp_path / "local"), per_run(tmp_path / "ray")
    assert len(local) == 60 and local.keys() == on_ray.keys()
    assert {(r["lr"], r["label"]) for r in local.values()} == \
        {(lr, "sgd") for lr in SGD_LRS} | {(lr, "adam") for lr in ADAM_LRS}
    for key, result in local.items():
        assert on_ray[key] == result, key  # bitwise-equal losses, same ids
    # The runs executed on the cluster's workers wrote their logs into the shared log directory.
    for run_dir in (tmp_path / "ray" / "tiny").glob("*/*/seed-*"):
        assert any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir())
    # A finished sweep runs nothing again, on Ray too.
    again = run(str(path), "--logdir", str(tmp_path / "ray"), "--executor", "ray", "--address", cluster).stdout
    assert "nothing to run: all 60 runs are already done" in again


def test_ray_executor_starts_a_local_instance_of_its_own(tmp_path):
    raw = copy.deepcopy(TINY)
    raw["task"] = {"name": "gaussian", "d": 5, "n": 20}
    raw["train"].update({"steps": 600, "batch_size": 1000, "seeds": 3})
    raw["eval"]["every"] = 5  # many progress events: a run must never block on sending them
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    run(str(path), "--logdir", str(tmp_path / "ray"), "--executor", "ray", "--workers", "2")
    # Never more runs at once than the instance's 2 CPUs: a task blocked on Ray lends its CPU to
    # the next task, and the two then share one core.
    assert max_concurrent(tmp_path / "ray" / "tiny") <= 2
    run(str(path), "--logdir", str(tmp_path / "local"), "--workers", "1")
    ray_results = json.loads((tmp_path / "ray" / "tiny" / "results.json").read_text())["runs"]
    local_results = json.loads((tmp_path / "local" / "tiny" / "results.json").read_text())["runs"]
    assert [r["eval_losses"] for r in ray_results] == [r["eval_losses"] for r in local_results]


def test_an_unreachable_cluster_is_one_clear_error(tmp_path):
    raw = copy.deepcopy(TINY)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    done = subprocess.run([sys.executable, "-m", "testbed.cli", "run", str(path), "--logdir", str(tmp_path / "r"),
                           "--executor", "ray", "--address", f"127.0.0.1:{_free_port()}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "Error: cannot start or join the Ray cluster at 127.0.0.1:" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
