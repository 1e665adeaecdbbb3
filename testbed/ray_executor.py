"""The ``ray`` executor: every run is a Ray task (one CPU, one torch thread) calling ``engine.train``.

Runs write their own TensorBoard logs, summaries and checkpoints straight into the log directory,
and return their results to the driver, which writes results.json and sweep.json. Writing in place
is what lets TensorBoard show runs live, keeps a killed run's checkpoint where a resumed one looks
for it, and avoids shipping event files (histograms, figures) through the object store; the price
is that on a multi-node cluster the log directory must be on a filesystem every node mounts at the
same path (NFS, a shared volume). On one machine (``--executor ray`` with no address) it always is.

Progress events go through a Ray queue; a stop request (Ctrl-C in the driver) goes through a small
actor that running tasks poll about once a second, so they stop at a step boundary with a checkpoint.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from .engine import Report, train
from .errors import TestbedError
from .executors import failed, longest_first, not_run
from .plugins import Plugins, load_plugins
from .run import RunPlan, RunResult

LOCAL_OBJECT_STORE_BYTES = 200 * 1024**2  # runs exchange only small results
STOP_POLL_SECONDS = 1.0

try:
    import ray
    from ray.util.queue import Empty, Queue
except ImportError:  # the optional extra is not installed
    ray = None


def _require_ray() -> None:
    if ray is None:
        raise TestbedError("the ray executor needs Ray: pip install 'testbed[ray]'")


_WORKER: dict[str, Any] = {}


def _train_task(plan: RunPlan, events, stop) -> RunResult:
    """A Ray task: one run with one torch thread and the plugins of the worker's environment."""
    import torch

    torch.set_num_threads(1)
    if "plugins" not in _WORKER:
        _WORKER["plugins"] = load_plugins()
    flag = _PolledFlag(stop)
    return train(plan, _WORKER["plugins"], should_stop=flag, report=lambda event: events.put_nowait(event))


class _PolledFlag:
    """The driver's stop flag, asked for at most once per STOP_POLL_SECONDS."""

    def __init__(self, actor):
        self.actor, self.checked, self.value = actor, 0.0, False

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self.value and now - self.checked >= STOP_POLL_SECONDS:
            self.checked = now
            self.value = ray.get(self.actor.is_set.remote())
        return self.value


class _StopFlag:
    def __init__(self):
        self.value = False

    def set(self) -> None:
        self.value = True

    def is_set(self) -> bool:
        return self.value


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None):
        _require_ray()
        self.address, self.workers = address, workers
        self.started_here = False

    def _connect(self) -> None:
        if ray.is_initialized():
            return
        env = {key: os.environ[key] for key in ("TESTBED_PLUGINS", "TESTBED_KERNEL") if key in os.environ}
        options: dict[str, Any] = {"runtime_env": {"env_vars": {"OMP_NUM_THREADS": "1", **env}},
                                   "log_to_driver": False, "logging_level": "ERROR"}
        if self.address is None:  # a local instance of our own
            options.update(num_cpus=self.workers or os.cpu_count() or 1, include_dashboard=False,
                           object_store_memory=LOCAL_OBJECT_STORE_BYTES)
            self.started_here = True
        if self.address not in (None, "auto"):
            _check_reachable(self.address)
        try:
            # "local": a new instance even if `ray start` runs a cluster on this machine
            ray.init(address=self.address or "local", **options)
        except Exception as exc:  # ConnectionError, or a bad address
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
            raise TestbedError(f"cannot start or join {where}: {type(exc).__name__}: {exc}") from None

    def capacity(self) -> int:
        if self.workers:
            return self.workers
        self._connect()
        return max(int(ray.cluster_resources().get("CPU", 1)), 1)

    def execute(self, plans: list[RunPlan], plugins: Plugins, report: Report) -> tuple[list[RunResult], bool]:
        self._connect()
        events, stop = Queue(), ray.remote(_StopFlag).remote()
        task = ray.remote(num_cpus=1, max_retries=0)(_train_task)
        refs = {task.remote(plan, events, stop): plan for plan in longest_first(plans)}
        finished: dict[str, RunResult] = {}
        interrupted = False
        pending = list(refs)
        while pending:
            try:
                done, pending = ray.wait(pending, num_returns=len(pending), timeout=0.2)
                _drain(events, report)
                for ref in done:
                    finished[refs[ref].run_dir] = _outcome(ref, refs[ref])
            except KeyboardInterrupt:
                if interrupted:  # a second Ctrl-C: stop at once
                    for ref in pending:
                        ray.cancel(ref, force=True)
                    break
                interrupted = True
                stop.set.remote()  # running runs stop at their next step, with a checkpoint
                for ref in pending:
                    ray.cancel(ref)  # tasks not started yet never start
        _drain(events, report)
        results = [finished.get(plan.run_dir) or not_run(plan) for plan in plans]
        return results, interrupted or any(r.status == "interrupted" for r in results)

    def close(self) -> None:
        if self.started_here and ray.is_initialized():
            ray.shutdown()


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail at once on an address nothing listens on (ray.init would retry for minutes)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.removeprefix("ray://") or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise TestbedError(f"cannot start or join the Ray cluster at {address}: nothing answers there ({exc})") from None


def _outcome(ref, plan: RunPlan) -> RunResult:
    try:
        return ray.get(ref)
    except ray.exceptions.TaskCancelledError:
        return not_run(plan)
    except ray.exceptions.RayError as exc:  # the worker died, or the task raised outside train()
        return failed(plan, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def _drain(events, report: Report) -> None:
    count = events.qsize()
    if count:
        try:
            batch = events.get_nowait_batch(count)
        except Empty:
            return
        for event in batch:
            report(event)

