"""An experiment: every (optimizer entry x seed) run, executed in parallel worker processes.

Optimizer entries with a ``tune`` section first get their learning rate tuned (the paper's protocol:
best of a grid per setting and optimizer): phase 1 runs short pilot runs for every grid value and
pilot seed, the lr with the lowest mean final eval loss is kept, and phase 2 runs every seed with it.

Workers are spawned processes with one torch thread each (two OpenMP threads fighting over two
cores are slower than one thread each). They report progress through a queue and stop cleanly when
the driver sets the stop event (Ctrl-C reaches only the driver; workers ignore SIGINT).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from .config import ExperimentConfig
from .engine import Report, train, versions, write_json
from .errors import TestbedError
from .plugins import Plugins, load_plugins
from .run import RunPlan, RunResult
from .tuning import TUNING_DIR, Tuning, apply_tuning, collect_tuning, plan_pilots

RESULTS_FILE = "results.json"


@dataclass
class SummaryRow:
    label: str
    runs: int
    completed: int
    diverged: int
    failed: int
    interrupted: int
    final_mean: float | None
    final_std: float | None
    best_mean: float | None


@dataclass
class ExperimentOutcome:
    directory: Path
    status: str  # complete | interrupted
    wall_seconds: float
    results: list[RunResult] = field(default_factory=list)
    tuning: dict[str, Tuning] = field(default_factory=dict)  # optimizer label -> its lr tuning

    def summary(self) -> list[SummaryRow]:
        return summarize(self.results)


def summarize(results: list[RunResult]) -> list[SummaryRow]:
    """Per optimizer label: mean and std of the final eval loss over completed runs."""
    rows = []
    for label in dict.fromkeys(r.label for r in results):
        group = [r for r in results if r.label == label]
        finals = [r.final_eval_loss for r in group if r.status == "completed"]
        bests = [r.best_eval_loss for r in group if r.status == "completed" and r.best_eval_loss is not None]
        count = lambda status: sum(r.status == status for r in group)  # noqa: E731
        rows.append(SummaryRow(
            label, len(group), count("completed"), count("diverged"), count("failed"), count("interrupted"),
            statistics.fmean(finals) if finals else None,
            statistics.stdev(finals) if len(finals) > 1 else (0.0 if finals else None),
            statistics.fmean(bests) if bests else None,
        ))
    return rows


def plan_runs(config: ExperimentConfig, logdir: Path) -> list[RunPlan]:
    """Seed-major order, so that a partial experiment has every optimizer for its first seeds."""
    directory = logdir / config.name
    return [RunPlan(config, spec, seed, str(directory / spec.label / f"seed-{seed}"))
            for seed in config.train.seeds for spec in config.optimizers]


@dataclass(frozen=True)
class Phase:
    """Handed to ``run_experiment``'s ``on_phase`` when a phase starts."""

    name: str  # "tuning" (the pilot runs) or "main"
    plans: list[RunPlan]
    tuning: dict[str, Tuning]  # the finished tuning, by optimizer label (empty in the tuning phase)

    @property
    def steps_per_run(self) -> int:
        return round(statistics.fmean(plan.config.train.steps for plan in self.plans)) if self.plans else 0


def run_experiment(config: ExperimentConfig, plugins: Plugins, logdir: str | Path,
                   report: Report = lambda event: None, workers: int | None = None,
                   on_phase: Callable[[Phase], None] = lambda phase: None) -> ExperimentOutcome:
    """Run every run of ``config`` (after the pilot runs of learning-rate tuning, if any optimizer
    entry has a tune section) and write ``results.json``. ``report`` receives the engine events of
    every run, pilots included; ``on_phase`` is called as each phase starts. Worker processes load the
    plugins the way the driver did (entry points and $TESTBED_PLUGINS); in-process ``extra`` plugins
    therefore need ``workers=1``."""
    logdir = Path(logdir)
    directory = logdir / config.name
    pilots, plans = plan_pilots(config, logdir), plan_runs(config, logdir)
    _prepare(directory, pilots + plans, config)
    workers = workers or config.workers
    started = time.perf_counter()
    tuning: dict[str, Tuning] = {}
    interrupted = False
    if pilots:
        on_phase(Phase("tuning", pilots, {}))
        pilot_results, interrupted = _execute(pilots, plugins, report, workers)
        tuning = collect_tuning(config, pilot_results, interrupted)
    if interrupted:  # during tuning: no main run starts
        results = [_not_run(plan) for plan in plans]
        for result in results:
            if result.label in tuning:
                result.lr = None  # never chosen
    else:
        if tuning:
            plans = apply_tuning(plans, tuning)
            _prepare(directory, plans, config, clean=False)  # their config.yaml now has the chosen lr
        on_phase(Phase("main", plans, tuning))
        results, interrupted = _execute(plans, plugins, report, workers)
    outcome = ExperimentOutcome(directory, "interrupted" if interrupted else "complete",
                                time.perf_counter() - started, results, tuning)
    write_results(outcome, config, plugins)
    return outcome


def _execute(plans: list[RunPlan], plugins: Plugins, report: Report,
             workers: int | None) -> tuple[list[RunResult], bool]:
    count = min(workers or os.cpu_count() or 1, len(plans))
    if count == 1:
        return _run_in_process(plans, plugins, report)
    return _run_in_pool(plans, count, report)


def _prepare(directory: Path, plans: list[RunPlan], config: ExperimentConfig, clean: bool = True) -> None:
    """Start from clean run directories: stale event files would mix old and new curves, and a
    stale results.json would look like the result of this attempt. Each run directory gets the
    config of its run; the experiment's directory gets the experiment's."""
    try:
        if clean:
            (directory / RESULTS_FILE).unlink(missing_ok=True)
            shutil.rmtree(directory / TUNING_DIR, ignore_errors=True)  # pilots of earlier attempts
        for plan in plans:
            if clean:
                shutil.rmtree(plan.run_dir, ignore_errors=True)
            Path(plan.run_dir).mkdir(parents=True, exist_ok=not clean)
            (Path(plan.run_dir) / "config.yaml").write_text(yaml.safe_dump(plan.config.to_dict(), sort_keys=False))
        (directory / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    except OSError as exc:
        raise TestbedError(f"cannot prepare the log directory {str(directory)!r}: {exc}") from None


def _run_in_process(plans: list[RunPlan], plugins: Plugins, report: Report) -> tuple[list[RunResult], bool]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    results: list[RunResult] = []
    try:
        for plan in plans:
            try:
                result = train(plan, plugins, report=report)
            except KeyboardInterrupt:
                result = _not_run(plan)
            results.append(result)
            if result.status == "interrupted":
                break
    finally:
        torch.set_num_threads(threads)
    done = {r.key for r in results}
    results += [_not_run(p) for p in plans if p.key not in done]
    return results, any(r.status == "interrupted" for r in results)


# ------------------------------------------------------------------ worker processes
_WORKER: dict[str, Any] = {}


def _init_worker(queue, stop) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides when to stop
    torch.set_num_threads(1)
    _WORKER.update(queue=queue, stop=stop, plugins=load_plugins())


def _train_in_worker(plan: RunPlan) -> RunResult:
    queue, stop = _WORKER["queue"], _WORKER["stop"]
    return train(plan, _WORKER["plugins"], should_stop=stop.is_set, report=queue.put)


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
                    finished[plan.key] = _outcome(future, plan)
            except KeyboardInterrupt:
                interrupted = True
                stop.set()
                for future in pending:
                    future.cancel()
        _drain(queue, report)
    results = [finished.get(plan.key) or _not_run(plan) for plan in plans]
    return results, interrupted or any(r.status == "interrupted" for r in results)


def longest_first(plans: list[RunPlan]) -> list[RunPlan]:
    """Runs with more diagnostics start first, so that no worker is left with a long run at the end
    while the others idle (a stable sort: otherwise the plan's order)."""
    def diagnostics(plan: RunPlan) -> int:
        return sum(spec.applies_to(plan.optimizer.label, plan.seed) for spec in plan.config.diagnostics)

    return sorted(plans, key=diagnostics, reverse=True)


def _outcome(future: cf.Future, plan: RunPlan) -> RunResult:
    if future.cancelled():
        return _not_run(plan)
    error = future.exception()
    if error is None:
        return future.result()
    return RunResult(plan.key, plan.optimizer.label, plan.optimizer.name, plan.seed, "failed", 0,
                     plan.run_dir, 0.0, lr=plan.optimizer.lr, error=f"{type(error).__name__}: {error}")


def _drain(queue, report: Report) -> None:
    while True:
        try:
            event = queue.get_nowait()
        except Exception:  # queue.Empty, or a queue closed under us
            return
        report(event)


def _not_run(plan: RunPlan) -> RunResult:
    return RunResult(plan.key, plan.optimizer.label, plan.optimizer.name, plan.seed, "interrupted", 0,
                     plan.run_dir, 0.0, lr=plan.optimizer.lr, error="not started")


# ------------------------------------------------------------------ results
def write_results(outcome: ExperimentOutcome, config: ExperimentConfig, plugins: Plugins) -> Path:
    path = outcome.directory / RESULTS_FILE
    write_json(path, {
        "experiment": config.name,
        "status": outcome.status,
        "wall_seconds": outcome.wall_seconds,
        "versions": versions(plugins),
        "config": config.to_dict(),
        "summary": [row.__dict__ for row in outcome.summary()],
        "runs": [r.__dict__ for r in outcome.results],
        **({"tuning": {label: t.to_dict() for label, t in outcome.tuning.items()}} if outcome.tuning else {}),
    })
    return path


def format_table(rows: list[SummaryRow]) -> str:
    """The results table printed at the end of `testbed run`."""
    header = ("optimizer", "runs", "final eval loss (mean ± std)", "best eval loss", "diverged", "failed")
    lines = [header]
    for row in rows:
        final = "-" if row.final_mean is None else f"{row.final_mean:.4e} ± {row.final_std:.1e}"
        best = "-" if row.best_mean is None else f"{row.best_mean:.4e}"
        lines.append((row.label, str(row.runs), final, best, f"{row.diverged}/{row.runs}", str(row.failed)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
