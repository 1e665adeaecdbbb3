"""The Ray executor on a real local Ray cluster started here (`ray start --head`): a sweep of
2 optimizers x 10 learning rates x 3 seeds gives identical per-run results with the local and the
Ray executor; `--executor ray` without an address starts (and stops) a Ray instance of its own, which
listens on the loopback interface only, and whose processes a SIGKILLed driver leaves behind are stopped
by the next start."""

from __future__ import annotations

import copy
import json
import os
import secrets
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from shared_fixtures import TINY

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'testbed[ray]')")
pytestmark = pytest.mark.slow  # real Ray clusters: each start costs seconds
import psutil  # noqa: E402  (Ray ships psutil and puts it on sys.path on import)

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


LOOPBACK_HOSTS = {"127.0.0.1", "[::ffff:127.0.0.1]", "[::1]"}


def _ray_cmd(config: Path, logdir: Path) -> list[str]:
    return [sys.executable, "-m", "testbed.cli", "run", str(config), "--logdir", str(logdir),
            "--executor", "ray", "--workers", "2"]


def _identity(proc: psutil.Process) -> tuple[int, float] | None:
    """(pid, start time): names one process even after its pid is reused; None if it is gone."""
    try:
        return proc.pid, proc.create_time()
    except psutil.NoSuchProcess:
        return None


def _alive(identity: tuple[int, float]) -> bool:
    """Whether that process still runs (a zombie has ended; only its exit status waits for a parent)."""
    try:
        process = psutil.Process(identity[0])
        return _identity(process) == identity and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _listening(pids: set[int]) -> list[tuple[str, str]]:
    """(local address, `ss` line) of every TCP socket that one of ``pids`` listens on, from `ss -ltnp`."""
    lines = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout.splitlines()
    return [(line.split()[3], line) for line in lines if pids & {int(p) for p in re.findall(r"pid=(\d+)", line)}]


def _session_dir(processes: list[psutil.Process]) -> str:
    for proc in processes:
        for arg in proc.cmdline():
            if arg.startswith("--session-dir="):
                return arg.removeprefix("--session-dir=")
    raise AssertionError("no Ray process names its session directory")


@pytest.fixture(scope="module")
def killed_ray_driver(tmp_path_factory):
    """`testbed run --executor ray` (no address) in a subprocess: once its two runs are going, the listening
    sockets and the processes of its Ray instance are sampled, and the driver is SIGKILLed. Whatever of
    that instance is still alive afterwards is killed (by pid and start time) when the module is done."""
    tmp = tmp_path_factory.mktemp("killed")
    raw = copy.deepcopy(TINY)
    raw["task"] = {"name": "gaussian", "d": 5, "n": 20}
    raw["train"].update({"steps": 1000, "batch_size": 1000, "seeds": 2})  # many seconds: killed mid-run
    raw["optimizers"] = raw["optimizers"][:1]
    config = tmp / "long.yaml"
    config.write_text(yaml.safe_dump(raw))
    logdir = tmp / "logs"
    driver = subprocess.Popen(_ray_cmd(config, logdir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    deadline = time.monotonic() + 240
    while len(list(logdir.glob("tiny/sgd/seed-*/events.out.tfevents*"))) < 2:  # both runs started
        assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()[0]
        time.sleep(0.2)
    processes = psutil.Process(driver.pid).children(recursive=True)
    sample = {
        "sockets": _listening({driver.pid} | {proc.pid for proc in processes}),
        "processes": [identity for identity in map(_identity, processes) if identity],
        "session_dir": _session_dir(processes),
        "config": config, "logdir": logdir,
    }
    driver.send_signal(signal.SIGKILL)
    driver.communicate()
    try:
        yield sample
    finally:
        for pid, _ in filter(_alive, sample["processes"]):
            psutil.Process(pid).kill()


def test_a_local_ray_instance_listens_on_the_loopback_interface_only(killed_ray_driver):
    sockets = killed_ray_driver["sockets"]
    assert len(sockets) >= 3, sockets  # the GCS, the raylet, the driver and the workers listen at least
    exposed = [line for address, line in sockets if address.rpartition(":")[0] not in LOOPBACK_HOSTS]
    assert not exposed, "\n".join(exposed)


def test_the_next_start_stops_what_a_killed_driver_left_running(killed_ray_driver):
    logdir = killed_ray_driver["logdir"]
    assert not (logdir / "tiny" / "results.json").exists()  # the driver was killed mid-run
    done = subprocess.run(_ray_cmd(killed_ray_driver["config"], logdir), capture_output=True, text=True,
                          timeout=600, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 runs executed" in done.stdout
    # Neither a process of the killed driver's instance nor any process of its Ray session is left.
    assert not [identity for identity in killed_ray_driver["processes"] if _alive(identity)]
    session = killed_ray_driver["session_dir"]
    leftovers = [proc.info for proc in psutil.process_iter(["pid", "cmdline"])
                 if any(session in arg for arg in proc.info["cmdline"] or ())]
    assert not leftovers, leftovers
