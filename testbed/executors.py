"""Executors: where the runs of an experiment execute. Every executor calls ``engine.train`` with one
torch thread, so a given run gives the same numbers whichever executor runs it.

``local`` (the default) runs them in this machine's worker processes (or in this process with one
worker); ``ray`` (testbed.ray_executor) runs them as Ray tasks. An executor takes run plans and
returns their results in the same order, with ``interrupted`` set when the user stopped it.

Local workers are spawned processes with one torch thread each (two OpenMP threads fighting over two
cores are slower than one thread each). They report progress through a queue and stop cleanly, at a
step boundary with a checkpoint, when the driver sets the stop event (Ctrl-C reaches only the
driver; workers ignore SIGINT). In-process runs stop the same way on the first Ctrl-C.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import signal
import threading
import time
from typing import Any, Protocol

import torch

from .engine import Report, train
from .errors import TestbedError
from .plugins import Plugins, load_plugins
from .run import RunPlan, RunResult

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
        from .ray_executor import RayExecutor

        return RayExecutor(address, workers)
    raise TestbedError(f"unknown executor {name!r} (known: {', '.join(EXECUTORS)})")


class LocalExecutor:
    name = "local"

    def __init__(self, workers: int | None = None):
        self.workers = workers

    def capacity(self) -> int:
        return self.workers or os.cpu_count() or 1

    def execute(self, plans: list[RunPlan], plugins: Plugins, report: Report) -> tuple[list[RunResult], bool]:
        count = min(self.capacity(), len(plans))
        if count <= 1:
            return _run_in_process(plans, plugins, report)
        return _run_in_pool(plans, count, report)

    def close(self) -> None:
        pass


def _run_in_process(plans: list[RunPlan], plugins: Plugins, report: Report) -> tuple[list[RunResult], bool]:
    """One run after the other in this process. The first Ctrl-C asks the running run to stop at
    its next step (with a checkpoint); a second one interrupts at once."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    stop = threading.Event()
    handler = None
    if threading.current_thread() is threading.main_thread():
        def request_stop(signum, frame):
            if stop.is_set():
                raise KeyboardInterrupt
            stop.set()
        handler = signal.signal(signal.SIGINT, request_stop)
    results: list[RunResult] = []
    try:
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
        if handler is not None:
            signal.signal(signal.SIGINT, handler)
    done = {r.run_dir for r in results}
    results += [not_run(p) for p in plans if p.run_dir not in done]
    return results, stop.is_set() or any(r.status == "interrupted" for r in results)


_WORKER: dict[str, Any] = {}


def _init_worker(queue, stop) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides when to stop
    torch.set_num_threads(1)
    _WORKER.update(queue=queue, stop=stop, plugins=load_plugins(), driver=os.getppid(), busy=threading.Event())
    threading.Thread(target=_exit_when_orphaned, daemon=True).start()


ORPHAN_CHECK_SECONDS = 1.0


def _orphaned() -> bool:
    return os.getppid() != _WORKER["driver"]


def _exit_when_orphaned() -> None:
    """An idle worker of a killed driver would wait for work forever (its siblings keep the task
    queue open): it exits. A busy one first stops its run, with a checkpoint (see should_stop)."""
    while True:
        time.sleep(ORPHAN_CHECK_SECONDS)
        if _orphaned() and not _WORKER["busy"].is_set():
            os._exit(0)


def _train_in_worker(plan: RunPlan) -> RunResult:
    queue, stop, busy = _WORKER["queue"], _WORKER["stop"], _WORKER["busy"]

    def should_stop() -> bool:
        # A killed driver leaves its workers running: they stop too (with a checkpoint), so that a
        # new attempt never shares a run directory with an orphan.
        return stop.is_set() or _orphaned()

    busy.set()
    try:
        return train(plan, _WORKER["plugins"], should_stop=should_stop, report=queue.put)
    finally:
        busy.clear()


def _run_in_pool(plans: list[RunPlan], count: int, report: Report) -> tuple[list[RunResult], bool]:
    context = mp.get_context("spawn")
    queue, stop = context.Queue(), context.Event()
    interrupted = False
    finished: dict[str, RunResult] = {}
    with cf.ProcessPoolExecutor(count, mp_context=context, initializer=_init_worker,
                                initargs=(queue, stop)) as pool:
        futures = {pool.submit(_train_in_worker, plan): plan for plan in longest_first(plans)}
        pending = set(futures)
        while pending:
            try:
                done, pending = cf.wait(pending, timeout=0.2)
                _drain(queue, report)
                for future in done:
                    plan = futures[future]
                    finished[plan.run_dir] = _outcome(future, plan)
            except KeyboardInterrupt:
                interrupted = True
                stop.set()
                for future in pending:
                    future.cancel()
        _drain(queue, report)
    results = [finished.get(plan.run_dir) or not_run(plan) for plan in plans]  # run_dir: unique in a sweep
    return results, interrupted or any(r.status == "interrupted" for r in results)


def longest_first(plans: list[RunPlan]) -> list[RunPlan]:
    """Runs with more diagnostics start first, so that no worker is left with a long run at the end
    while the others idle (a stable sort: otherwise the plan's order)."""
    def diagnostics(plan: RunPlan) -> int:
        return sum(spec.applies_to(plan.optimizer.label, plan.seed) for spec in plan.config.diagnostics)

    return sorted(plans, key=diagnostics, reverse=True)


def _outcome(future: cf.Future, plan: RunPlan) -> RunResult:
    if future.cancelled():
        return not_run(plan)
    error = future.exception()
    if error is None:
        return future.result()
    return failed(plan, f"{type(error).__name__}: {error}")


def _drain(queue, report: Report) -> None:
    while True:
        try:
            event = queue.get_nowait()
        except Exception:  # queue.Empty, or a queue closed under us
            return
        report(event)


def not_run(plan: RunPlan) -> RunResult:
    return _unfinished(plan, "interrupted", "not started")


def failed(plan: RunPlan, error: str) -> RunResult:
    return _unfinished(plan, "failed", error)


def _unfinished(plan: RunPlan, status: str, error: str) -> RunResult:
    return RunResult(plan.key, plan.optimizer.label, plan.optimizer.name, plan.seed, status, 0,
                     plan.run_dir, 0.0, lr=plan.optimizer.lr, error=error, run_id=plan.run_id or None)
