"""The ``ray`` executor: every run is a Ray task (one CPU, one torch thread) calling ``engine.train``.

Runs write their own TensorBoard logs, summaries and checkpoints straight into the log directory,
and return their results to the driver, which writes results.json and sweep.json. Writing in place
is what lets TensorBoard show runs live, keeps a killed run's checkpoint where a resumed one looks
for it, and avoids shipping event files (histograms, figures) through the object store; the price
is that on a multi-node cluster the log directory must be on a filesystem every node mounts at the
same path (NFS, a shared volume). On one machine (``--executor ray`` with no address) it always is.

A task never blocks on Ray (no ``ray.get`` inside a run): a blocked task lends its CPU to the next
task, which then keeps running beside it, and two runs share one core. So progress events are
fire-and-forget calls to a small actor the driver drains, and a stop request (Ctrl-C in the driver)
is a file in the log directory that running tasks look for about once a second; they then stop at a
step boundary with a checkpoint. A second stop signal cancels the tasks at once. The driver's side is
the executors' shared loop (``executors.collect``) over ``_RayRuns``.

The local instance (no address) listens on the loopback interface only, and what a killed driver
leaves of it is stopped by the next start (``ray_local``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from testbed.engine.loop import Report, train
from testbed.engine.run import RunPlan, RunResult
from testbed.errors import TestbedError
from testbed.experiment.executors.base import collect, failed, longest_first, not_run
from testbed.plugins import Plugins, load_plugins

if TYPE_CHECKING:
    from testbed.experiment.executors.ray_local import LocalInstance

LOCAL_OBJECT_STORE_BYTES = 200 * 1024**2  # runs exchange only small results
STOP_POLL_SECONDS = 1.0

try:
    import ray
except ImportError:  # the optional extra is not installed
    ray = None


def _require_ray() -> None:
    if ray is None:
        raise TestbedError("the ray executor needs Ray: pip install 'testbed[ray]'")


_WORKER: dict[str, Any] = {}


def _train_task(plan: RunPlan, events, stop_file: str) -> RunResult:
    """A Ray task: one run with one torch thread and the plugins of the worker's environment."""
    import torch

    if os.path.exists(stop_file):  # stopped before this run started: it never starts
        return not_run(plan)
    torch.set_num_threads(1)
    if "plugins" not in _WORKER:
        _WORKER["plugins"] = load_plugins()
    return train(plan, _WORKER["plugins"], should_stop=_StopFile(stop_file),
                 report=lambda event: events.push.remote(event))  # not awaited: never blocks


class _StopFile:
    """Whether the driver asked to stop, looked up at most once per STOP_POLL_SECONDS."""

    def __init__(self, path: str):
        self.path, self.checked, self.value = path, 0.0, False

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self.value and now - self.checked >= STOP_POLL_SECONDS:
            self.checked, self.value = now, os.path.exists(self.path)
        return self.value


class _Events:
    """The runs' progress events, until the driver drains them."""

    def __init__(self):
        self.items: list[dict] = []

    def push(self, event: dict) -> None:
        self.items.append(event)

    def drain(self) -> list[dict]:
        items, self.items = self.items, []
        return items


class RayExecutor:
    """Runs as Ray tasks, on a local instance of its own or on the cluster at ``address``."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None):
        _require_ray()
        self.address, self.workers = address, workers
        self.instance: LocalInstance | None = None  # the local Ray instance this executor started

    def _connect(self) -> None:
        if ray.is_initialized():
            return
        env = {key: os.environ[key] for key in ("TESTBED_PLUGINS", "TESTBED_KERNEL") if key in os.environ}
        options: dict[str, Any] = {"runtime_env": {"env_vars": {"OMP_NUM_THREADS": "1", **env}},
                                   "log_to_driver": False, "logging_level": "ERROR"}
        if self.address is None:  # a local instance of our own, reachable from this machine only
            from testbed.experiment.executors.ray_local import LOOPBACK, LocalInstance

            options.update(num_cpus=self.workers or os.cpu_count() or 1, include_dashboard=False,
                           object_store_memory=LOCAL_OBJECT_STORE_BYTES, _node_ip_address=LOOPBACK)
            self.instance = LocalInstance.begin()  # first stops what killed drivers left running
        elif self.address != "auto":
            _check_reachable(self.address)
        try:
            with self.instance.starting() if self.instance else contextlib.nullcontext():
                # "local": a new instance even if `ray start` runs a cluster on this machine
                ray.init(address=self.address or "local", **options)
        except Exception as exc:  # ConnectionError, or a bad address
            self.close()  # whatever part of a local instance did start
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
            raise TestbedError(f"cannot start or join {where}: {type(exc).__name__}: {exc}") from None
        if self.instance:
            self.instance.note_processes()  # what a next start stops, should this driver be killed

    def capacity(self) -> int:
        """``workers``, else the cluster's CPUs."""
        if self.workers:
            return self.workers
        self._connect()
        return max(int(ray.cluster_resources().get("CPU", 1)), 1)

    def execute(self, plans: list[RunPlan], plugins: Plugins, report: Report) -> tuple[list[RunResult], bool]:
        """Every run as a Ray task, longest first; see the module docstring."""
        self._connect()
        return collect(_RayRuns(plans), plans, report)

    def close(self) -> None:
        """Stop the local instance this executor started, all its processes (a joined cluster stays up)."""
        if self.instance is None:
            return
        if ray.is_initialized():
            ray.shutdown()
        self.instance.stop()  # what outlived the shutdown: the agents take their time
        self.instance = None


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail at once on an address nothing listens on (ray.init would retry for minutes)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.removeprefix("ray://") or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise TestbedError(f"cannot start or join the Ray cluster at {address}: nothing answers there ({exc})") from None


class _RayRuns:
    """The Ray tasks of one ``execute`` call (a ``Batch``), their progress events' actor and their
    stop file."""

    def __init__(self, plans: list[RunPlan]):
        self.plans = plans
        self.stop_file = Path(os.path.commonpath([plan.run_dir for plan in plans])) / f".stop-{uuid.uuid4().hex}"
        self.events: Any = None
        self.refs: dict[Any, RunPlan] = {}
        self.waiting: list[Any] = []  # the refs of the tasks not yet done
        self.stop_requested = False
        self.report: Report = lambda event: None

    def start(self, report: Report) -> None:
        self.report = report
        self.events = ray.remote(_Events).options(num_cpus=0).remote()
        task = ray.remote(num_cpus=1, max_retries=0)(_train_task)
        self.refs = {task.remote(plan, self.events, str(self.stop_file)): plan for plan in longest_first(self.plans)}
        self.waiting = list(self.refs)

    def pending(self) -> bool:
        return bool(self.waiting)

    def poll(self, timeout: float) -> list[RunResult]:
        if self.stop_requested and not self.stop_file.exists():
            # Running runs stop at their next step, with a checkpoint; the others never start.
            # (ray.cancel would interrupt a running run mid-step, without a checkpoint.)
            self.stop_file.touch()
        done, self.waiting = ray.wait(self.waiting, num_returns=len(self.waiting), timeout=timeout)
        self._drain()
        return [_outcome(ref, self.refs[ref]) for ref in done]

    def request_stop(self) -> None:
        self.stop_requested = True  # the stop file is written by the loop, not in a signal handler

    def request_stop_at_once(self) -> None:
        """Nothing here: the loop calls ``stop_at_once`` at its next turn."""

    def stop_at_once(self) -> list[RunResult]:
        for ref in self.waiting:
            ray.cancel(ref, force=True)
        self._drain()
        return []  # a cancelled run is one that did not run

    def close(self) -> None:
        self.stop_file.unlink(missing_ok=True)
        if self.events is not None:
            ray.kill(self.events)

    def _drain(self) -> None:
        for event in ray.get(self.events.drain.remote()):
            self.report(event)


def _outcome(ref, plan: RunPlan) -> RunResult:
    try:
        return ray.get(ref)
    except ray.exceptions.TaskCancelledError:
        return not_run(plan)
    except ray.exceptions.RayError as exc:  # the worker died, or the task raised outside train()
        return failed(plan, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
