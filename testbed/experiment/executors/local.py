"""The ``local`` executor (the default): the runs execute in this machine's worker processes, each
calling ``engine.train`` with one torch thread, as every executor does, so a given run gives the same
numbers whichever executor runs it.

Local workers are processes with one torch thread each (two OpenMP threads fighting over two cores
are slower than one thread each), even when there is one: a run that kills its process (a crashing
extension, the OOM killer, ``os._exit`` in a plugin) then fails alone, and the next run gets a fresh
worker. Each worker has a pipe of its own to the driver (plans in; progress events and its result
out) and shares no lock with the others, so one dying mid-message harms no other; its pipe closing
is how each side learns that the other died. Only plugins handed in as objects
(``load_plugins(extra=...)``), which a worker could not load, make the runs execute in the driver's
process.

Ctrl-C and SIGTERM stop the runs as testbed.experiment.signals says, through the executors' shared
loop (``executors.collect``); workers ignore both signals: the driver decides when to stop.
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
from multiprocessing import forkserver
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import torch

from testbed.engine.loop import Report, train, write_summary
from testbed.engine.run import RunPlan, RunResult
from testbed.errors import StorageError
from testbed.experiment.executors.base import collect, longest_first, not_run, unfinished
from testbed.experiment.signals import SIGNALS
from testbed.plugins import Plugins, load_plugins


class LocalExecutor:
    """Runs in this machine's worker processes (in this process for plugins handed in as objects, or with
    ``in_process``)."""

    name = "local"

    def __init__(self, workers: int | None = None, in_process: bool = False):
        self.workers = workers
        self.in_process = in_process  # every run in this process, one after the other (testbed.testing)

    def capacity(self) -> int:
        """``workers``, else one per core."""
        return self.workers or os.cpu_count() or 1

    def execute(self, plans: list[RunPlan], plugins: Plugins, report: Report) -> tuple[list[RunResult], bool]:
        """The runs on worker processes, longest first (in plan order in this process, one after the
        other, when some plugins were handed in as objects: a worker's own load_plugins() would miss them)."""
        if self.in_process or plugins.in_this_process_only:
            return collect(_InProcess(plans, plugins), plans, report)
        pool = _Pool(plans, min(self.capacity(), len(plans)), _worker_context(plugins))
        return collect(pool, plans, report)

    def close(self) -> None:
        """Nothing to release: each ``execute`` closes its workers."""


class _InProcess:
    """The runs one after the other in this process (a ``Batch``); the second stop signal ends the
    running one where it is."""

    def __init__(self, plans: list[RunPlan], plugins: Plugins):
        self.waiting = deque(plans)
        self.plugins = plugins
        self.stop = threading.Event()
        self.running = False
        self.ended = False  # a run ended interrupted: no other starts
        self.threads = torch.get_num_threads()
        self.report: Report = lambda event: None

    def start(self, report: Report) -> None:
        self.report = report
        torch.set_num_threads(1)

    def pending(self) -> bool:
        return bool(self.waiting) and not self.stop.is_set() and not self.ended

    def poll(self, timeout: float) -> list[RunResult]:
        """Execute the next run (whatever ``timeout``: this process is busy until it ends)."""
        plan = self.waiting.popleft()
        self.running = True
        try:
            result = train(plan, self.plugins, should_stop=self.stop.is_set, report=self.report)
        except KeyboardInterrupt:  # the second stop signal (request_stop_at_once)
            result = not_run(plan)
        finally:
            self.running = False
        self.ended = result.status == "interrupted"
        return [result]

    def request_stop(self) -> None:
        self.stop.set()

    def request_stop_at_once(self) -> None:
        if self.running:  # train() stops where it is
            raise KeyboardInterrupt

    def stop_at_once(self) -> list[RunResult]:
        return []  # the running run already ended, in poll

    def close(self) -> None:
        torch.set_num_threads(self.threads)


# What the worker server imports once for all its workers, besides the installed plugins: the
# engine (torch, TensorBoard) and torch._dynamo, which torch imports at a process's first optimizer
# (seconds, in every fresh worker otherwise).
PRELOAD = ["testbed.experiment.executors.local", "torch._dynamo"]


def start_worker_server(plugins: Plugins) -> None:
    """Start the worker server now, ahead of the runs: its imports (seconds) then overlap the caller's
    own work, such as checking the config (which imports torch._dynamo too, at its first optimizer).
    Nothing to do where workers are spawned, or where the runs will execute in this process."""
    if not plugins.in_this_process_only and _worker_context(plugins).get_start_method() == "forkserver":
        forkserver.ensure_running()  # returns at once: the server imports while this process goes on


def _worker_context(plugins: Plugins) -> BaseContext:
    """Multiprocessing's forkserver context, its server preloading the engine and ``plugins`` (used
    when the server starts: once per driver); the spawn context where there is no forkserver."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    context = mp.get_context("forkserver")
    first = "testbed.experiment.executors.preloading"  # gc.disable() while the rest is imported
    last = "testbed.experiment.executors.preloaded"  # gc.freeze() and gc.enable(), once it is
    context.set_forkserver_preload([first, *PRELOAD, *plugins.entry_point_modules(), last])
    return context


@dataclass
class _Worker:
    """A worker process, the driver's end of its pipe, and the run it executes (None: idle)."""

    process: BaseProcess
    conn: Connection
    plan: RunPlan | None = None
    last_step: int = 0  # the last step its run reported: that many steps were done at least


class _Pool:
    """The runs on up to ``size`` worker processes, started as runs need them, longest run first (a
    ``Batch``); a dead one is replaced.

    Workers fork from a server process (multiprocessing's forkserver) that imported torch and the
    installed plugins once, so one starts in a fraction of a second where a spawned one re-imports
    for seconds; the server has run no torch code, so forking it is safe. Where there is no
    forkserver, workers are spawned (``context``: see ``_worker_context``)."""

    def __init__(self, plans: list[RunPlan], size: int, context: BaseContext):
        self.plans, self.size, self.context = plans, size, context
        self.waiting: deque[RunPlan] = deque()
        self.report: Report = lambda event: None
        # Read by every worker at every step: shared memory, no lock a dying worker could hold.
        self.stop = self.context.RawValue(ctypes.c_bool, False)
        self.workers: list[_Worker] = []

    def start(self, report: Report) -> None:
        self.waiting = deque(longest_first(self.plans))
        self.report = report

    def pending(self) -> bool:
        return bool(self.waiting and not self.stopping) or any(w.plan is not None for w in self.workers)

    def poll(self, timeout: float) -> list[RunResult]:
        self._start_runs()
        return self._wait_for_workers(timeout)

    @property
    def stopping(self) -> bool:
        return bool(self.stop.value)

    def request_stop(self) -> None:
        """Running runs stop at their next step, with a checkpoint; no other run starts."""
        self.stop.value = True

    def request_stop_at_once(self) -> None:
        """Nothing here: the loop calls ``stop_at_once`` at its next turn."""

    def stop_at_once(self) -> list[RunResult]:
        """Kill the workers of the running runs; their results (interrupted, as their last
        checkpoint left them)."""
        stopped = []
        for worker in [w for w in self.workers if w.plan is not None]:
            worker.process.kill()
            self._retire(worker)
            stopped.append(_stopped_at_once(worker.plan, worker.last_step))
        return stopped

    def _start_runs(self) -> None:
        """Hand waiting plans to idle workers, starting workers up to ``size``."""
        waiting = self.waiting
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

    def _wait_for_workers(self, timeout: float) -> list[RunResult]:
        """Wait up to ``timeout`` seconds for the workers; pass their progress events on to the
        report; return the results of the runs that ended, a run whose worker died as failed."""
        ready = wait([w.conn for w in self.workers], timeout)
        ended: list[RunResult] = []
        for worker in [w for w in self.workers if w.conn in ready]:
            if self._receive(worker, self.report, ended):  # its pipe closed: it died
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
    result = unfinished(plan, "failed", f"worker process died ({_exit_cause(exitcode)})", steps_done)
    with contextlib.suppress(StorageError):  # a full disk: results.json still records it, if it can
        write_summary(Path(plan.run_dir), result)
    return result


def _stopped_at_once(plan: RunPlan, steps_done: int) -> RunResult:
    return unfinished(plan, "interrupted", "stopped at once", steps_done)


def _exit_cause(exitcode: int | None) -> str:
    """"exit code 1", "killed by signal SIGKILL" (a negative exit code is the signal's number)."""
    if exitcode is None or exitcode >= 0:
        return f"exit code {exitcode}"
    try:
        return f"killed by signal {signal.Signals(-exitcode).name}"
    except ValueError:  # a real-time signal has no name
        return f"killed by signal {-exitcode}"
