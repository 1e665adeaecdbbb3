"""Executors: where the runs of an experiment execute. Every executor calls ``engine.train`` with one
torch thread, so a given run gives the same numbers whichever executor runs it.

``local`` (the default) runs them in this machine's worker processes; ``ray``
(testbed.ray_executor) runs them as Ray tasks. An executor takes run plans and returns their
results in the same order, with ``interrupted`` set when the user stopped it.

Local workers are processes with one torch thread each (two OpenMP threads fighting over two cores
are slower than one thread each), even when there is one: a run that kills its process (a crashing
extension, the OOM killer, ``os._exit`` in a plugin) then fails alone, and the next run gets a fresh
worker. Each worker has a pipe of its own to the driver (plans in; progress events and its result
out) and shares no lock with the others, so one dying mid-message harms no other; its pipe closing
is how each side learns that the other died. Only plugins handed in as objects
(``load_plugins(extra=...)``), which a worker could not load, make the runs execute in the driver's
process.

Ctrl-C and SIGTERM stop the runs as testbed.signals says; workers ignore both signals: the driver
decides when to stop.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import signal
import threading
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Protocol

import torch

from testbed.engine.loop import Report, train, write_summary
from testbed.errors import StorageError, TestbedError
from testbed.plugins import Plugins, load_plugins
from testbed.engine.run import RunPlan, RunResult
from testbed.experiment.signals import SIGNALS, stop_on_signals

EXECUTORS = ("local", "ray")


class Executor(Protocol):
    name: str

    def capacity(self) -> int:
        """How many runs execute at once."""

    def execute(self, plans: list[RunPlan], plugins: Plugins, report: Report) -> tuple[list[RunResult], bool]:
        """Run ``plans``; return their results in order and whether the user interrupted."""

    def close(self) -> None:
        """Release what the executor started (a local Ray instance)."""


def make_executor(name: str, workers: int | None = None, address: str | None = None) -> Executor:
    if name == "local":
        return LocalExecutor(workers)
    if name == "ray":
        from testbed.experiment.executors.ray import RayExecutor

        return RayExecutor(address, workers)
    raise TestbedError(f"unknown executor {name!r} (known: {', '.join(EXECUTORS)})")


class LocalExecutor:
    name = "local"

    def __init__(self, workers: int | None = None):
        self.workers = workers

    def capacity(self) -> int:
        return self.workers or os.cpu_count() or 1

    def execute(self, plans: list[RunPlan], plugins: Plugins, report: Report) -> tuple[list[RunResult], bool]:
        if plugins.in_this_process_only:  # a worker's own load_plugins() would miss the extra objects
            return _run_in_process(plans, plugins, report)
        return _run_in_pool(plans, min(self.capacity(), len(plans)), plugins, report)

    def close(self) -> None:
        pass


def _run_in_process(plans: list[RunPlan], plugins: Plugins, report: Report) -> tuple[list[RunResult], bool]:
    """One run after the other in this process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    stop = threading.Event()
    results: list[RunResult] = []
    try:
        with stop_on_signals(stop.set, stop_at_once=_raise_keyboard_interrupt):  # train() stops where it is
            for plan in plans:
                try:
                    result = train(plan, plugins, should_stop=stop.is_set, report=report)
                except KeyboardInterrupt:
                    result = not_run(plan)
                results.append(result)
                if result.status == "interrupted" or stop.is_set():
                    break
    finally:
        torch.set_num_threads(threads)
    done = {r.run_dir for r in results}
    results += [not_run(p) for p in plans if p.run_dir not in done]
    return results, stop.is_set() or any(r.status == "interrupted" for r in results)


def _raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


POLL_SECONDS = 0.5  # the driver wakes at once for a message or a death; this only bounds a wait
# What the worker server imports once for all its workers, besides the installed plugins: the
# engine (torch, TensorBoard) and torch._dynamo, which torch imports at a process's first optimizer
# (seconds, in every fresh worker otherwise).
PRELOAD = ["testbed.experiment.executors.local", "torch._dynamo"]


def _run_in_pool(plans: list[RunPlan], count: int, plugins: Plugins,
                 report: Report) -> tuple[list[RunResult], bool]:
    """The runs on up to ``count`` worker processes, longest first."""
    pool = _Pool(count, preload=[*PRELOAD, *plugins.entry_point_modules()])
    waiting = deque(longest_first(plans))
    finished: dict[str, RunResult] = {}  # by run_dir: unique in a sweep
    # The signal handlers only set flags: an exception raised between two reads of a pipe would
    # leave half a message in it.
    with stop_on_signals(pool.request_stop, pool.request_stop_at_once):
        try:
            while (waiting and not pool.stopping) or pool.running():
                pool.start_runs(waiting)
                for result in pool.collect(POLL_SECONDS, report):
                    finished[result.run_dir] = result
                if pool.at_once:
                    finished.update((result.run_dir, result) for result in pool.kill_running())
                    break
        finally:
            pool.close()
    results = [finished.get(plan.run_dir) or not_run(plan) for plan in plans]
    return results, pool.stopping or any(r.status == "interrupted" for r in results)


@dataclass
class _Worker:
    """A worker process, the driver's end of its pipe, and the run it executes (None: idle)."""

    process: BaseProcess
    conn: Connection
    plan: RunPlan | None = None
    last_step: int = 0  # the last step its run reported: that many steps were done at least


class _Pool:
    """Up to ``size`` worker processes, started as runs need them; a dead one is replaced.

    Workers fork from a server process (multiprocessing's forkserver) that imported torch and the
    installed plugins once, so one starts in a fraction of a second where a spawned one re-imports
    for seconds; the server has run no torch code, so forking it is safe. Where there is no
    forkserver, workers are spawned."""

    def __init__(self, size: int, preload: list[str]):
        self.size = size
        if "forkserver" in mp.get_all_start_methods():
            self.context = mp.get_context("forkserver")
            self.context.set_forkserver_preload(preload)  # used when the server starts: once per driver
        else:
            self.context = mp.get_context("spawn")
        # Read by every worker at every step: shared memory, no lock a dying worker could hold.
        self.stop = self.context.RawValue(ctypes.c_bool, False)
        self.workers: list[_Worker] = []
        self.at_once = False

    @property
    def stopping(self) -> bool:
        return bool(self.stop.value)

    def request_stop(self) -> None:
        """Running runs stop at their next step, with a checkpoint; no other run starts."""
        self.stop.value = True

    def request_stop_at_once(self) -> None:
        """The driver kills the running runs' workers at its next look (``kill_running``)."""
        self.at_once = True

    def kill_running(self) -> list[RunResult]:
        """Kill the workers of the running runs; their results (interrupted, as their last
        checkpoint left them)."""
        stopped = []
        for worker in [w for w in self.workers if w.plan is not None]:
            worker.process.kill()
            self._retire(worker)
            stopped.append(_stopped_at_once(worker.plan, worker.last_step))
        return stopped

    def running(self) -> list[RunPlan]:
        return [w.plan for w in self.workers if w.plan is not None]

    def start_runs(self, waiting: deque[RunPlan]) -> None:
        """Hand waiting plans to idle workers, starting workers up to ``size``."""
        while waiting and not self.stopping:
            worker = next((w for w in self.workers if w.plan is None), None)
            if worker is None and len(self.workers) < self.size:
                worker = self._spawn()
            if worker is None:
                return
            try:
                worker.conn.send(waiting[0])
            except OSError:  # it died while idle: retire it, the plan waits for another
                self._retire(worker)
                continue
            worker.plan, worker.last_step = waiting.popleft(), 0

    def _spawn(self) -> _Worker:
        ours, theirs = self.context.Pipe()
        process = self.context.Process(target=_work, args=(theirs, self.stop, dict(os.environ)),
                                       name="testbed-worker")
        process.start()
        theirs.close()  # only the worker holds its end now, so its death closes the pipe
        worker = _Worker(process, ours)
        self.workers.append(worker)
        return worker

    def collect(self, timeout: float, report: Report) -> list[RunResult]:
        """Wait up to ``timeout`` seconds for the workers; pass their progress events on to
        ``report``; return the results of the runs that ended, a run whose worker died as failed."""
        ready = wait([w.conn for w in self.workers], timeout)
        ended: list[RunResult] = []
        for worker in [w for w in self.workers if w.conn in ready]:
            if self._receive(worker, report, ended):  # its pipe closed: it died
                self._retire(worker)
                if worker.plan is not None:
                    ended.append(_died(worker.plan, worker.process.exitcode, worker.last_step))
        return ended

    def _receive(self, worker: _Worker, report: Report, ended: list[RunResult]) -> bool:
        """Take what the worker sent; True if its pipe is closed (the worker died)."""
        try:
            while worker.conn.poll():
                kind, payload = worker.conn.recv()
                if kind == "event":
                    worker.last_step = payload.get("step") or payload.get("resumed_from") or worker.last_step
                    report(payload)
                else:
                    ended.append(payload)
                    worker.plan = None
        except (EOFError, OSError):
            return True
        return False

    def _retire(self, worker: _Worker) -> None:
        worker.conn.close()
        worker.process.join()
        self.workers.remove(worker)

    def close(self) -> None:
        """Workers exit when their pipe closes: idle ones at once, a busy one (only on an error in
        the driver) at its next step, with a checkpoint, as a driver's death would make it."""
        for worker in self.workers:
            worker.conn.close()
        for worker in self.workers:
            worker.process.join()
        self.workers.clear()


def _work(conn: Connection, stop: Any, environ: dict[str, str]) -> None:
    """A worker process: execute the plans the driver sends, one at a time, until its pipe closes.
    ``environ`` is the driver's (a forked worker has the server's): $TESTBED_PLUGINS and the like."""
    for signum in SIGNALS:  # the driver decides when to stop
        signal.signal(signum, signal.SIG_IGN)
    os.environ.clear()
    os.environ.update(environ)
    torch.set_num_threads(1)
    plugins = load_plugins()

    def should_stop() -> bool:
        # The driver sends nothing to a busy worker, so a readable pipe is a closed one: a killed
        # driver. Its workers stop too (with a checkpoint), so that a new attempt never shares a
        # run directory with an orphan.
        return bool(stop.value) or conn.poll()

    while True:
        try:
            plan = conn.recv()
        except (EOFError, OSError):  # the driver is done, or dead
            return
        result = train(plan, plugins, should_stop=should_stop, report=lambda event: _send(conn, ("event", event)))
        _send(conn, ("result", result))


def _send(conn: Connection, message: tuple[str, Any]) -> None:
    try:
        conn.send(message)
    except OSError:  # the driver is gone; the run's own summary.json records it
        pass


def _died(plan: RunPlan, exitcode: int | None, steps_done: int) -> RunResult:
    """The result of a run whose worker process died under it; its summary.json says so too."""
    result = _unfinished(plan, "failed", f"worker process died ({_exit_cause(exitcode)})", steps_done)
    with contextlib.suppress(StorageError):  # a full disk: results.json still records it, if it can
        write_summary(Path(plan.run_dir), result)
    return result


def _stopped_at_once(plan: RunPlan, steps_done: int) -> RunResult:
    return _unfinished(plan, "interrupted", "stopped at once", steps_done)


def _exit_cause(exitcode: int | None) -> str:
    """"exit code 1", "killed by signal SIGKILL" (a negative exit code is the signal's number)."""
    if exitcode is None or exitcode >= 0:
        return f"exit code {exitcode}"
    try:
        return f"killed by signal {signal.Signals(-exitcode).name}"
    except ValueError:  # a real-time signal has no name
        return f"killed by signal {-exitcode}"


def longest_first(plans: list[RunPlan]) -> list[RunPlan]:
    """Runs with more diagnostics start first, so that no worker is left with a long run at the end
    while the others idle (a stable sort: otherwise the plan's order)."""
    def diagnostics(plan: RunPlan) -> int:
        return sum(spec.applies_to(plan.optimizer.label, plan.seed) for spec in plan.config.diagnostics)

    return sorted(plans, key=diagnostics, reverse=True)


def not_run(plan: RunPlan) -> RunResult:
    return _unfinished(plan, "interrupted", "not started")


def failed(plan: RunPlan, error: str) -> RunResult:
    return _unfinished(plan, "failed", error)


def _unfinished(plan: RunPlan, status: str, error: str, steps_done: int = 0) -> RunResult:
    return RunResult(plan.key, plan.optimizer.label, plan.optimizer.name, plan.seed, status, steps_done,
                     plan.run_dir, 0.0, lr=plan.optimizer.lr, error=error, run_id=plan.run_id or None)
