"""An experiment, or a sweep of experiments: every (point x optimizer entry x seed) run, on an executor.

Optimizer entries with a ``tune`` section first get their learning rate tuned (the paper's protocol:
best of a grid per setting and optimizer): phase 1 runs short pilot runs for every grid value and
pilot seed, the lr with the lowest mean final eval loss is kept, and phase 2 runs every seed with it.
Both phases take the runs of every sweep point at once, so the executor stays busy.

Each run has an id (``cache.run_id``). A run already finished under the same id is not run again
(``force`` runs it again); a run with a checkpoint under the same id goes on from it; two sweep
points that share a run (a grid over Adam's lr leaves the SGD runs unchanged) run it once, and the
second point gets a copy of its directory.
"""

from __future__ import annotations

import shutil
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import yaml

from testbed.engine import checkpoint
from testbed.experiment.cache import changed_plugins, finished_result, identified, set_aside_invalid_summary
from testbed.engine.specs import ExperimentConfig, OptimizerSpec
from testbed.engine.loop import Report, hparams_of, storage_failure
from testbed.engine.provenance import versions
from testbed.files.json_io import write_json
from testbed.errors import StorageError, TestbedError
from testbed.experiment.executors.base import Executor, not_run
from testbed.experiment.executors.local import LocalExecutor
from testbed.files.layout import (CONFIG_FILE, INVALID_SUMMARY, PREVIOUS_RESULTS_FILE, RESULTS_FILE, SWEEP_FILE,
                                  TUNING_DIR, run_parts)
from testbed.files.links import refuse_links
from testbed.files.lock import directory_lock
from testbed.plugins import Plugins
from testbed.engine.run import RunPlan, RunResult
from testbed.experiment.sweep import Point, Sweep, SweepPoint
from testbed.engine.tblog import write_hparams_config
from testbed.experiment.tuning import Tuning, apply_tuning, collect_tuning, plan_pilots
from testbed.text import format_table


@dataclass
class SummaryRow:
    """One optimizer label's line of an experiment's summary: run counts by status and eval-loss statistics."""

    label: str
    runs: int  # all of the label's runs, whatever their status
    completed: int
    diverged: int
    failed: int
    interrupted: int
    final_mean: float | None  # mean final eval loss over completed runs (None: no completed run)
    final_std: float | None  # its sample std (0.0 for a single completed run)
    best_mean: float | None  # mean over completed runs of each run's best eval loss


@dataclass
class ExperimentOutcome:
    """What one experiment came to: its directory, status, every run's result and its lr tunings."""

    directory: Path
    status: str  # complete | interrupted | failed (files could not be written: see error)
    wall_seconds: float
    results: list[RunResult] = field(default_factory=list)
    tuning: dict[str, Tuning] = field(default_factory=dict)  # optimizer label -> its lr tuning
    error: str | None = None

    def summary(self) -> list[SummaryRow]:
        """One row per optimizer label, in the order the labels first appear (see ``summarize``)."""
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


def plan_runs(config: ExperimentConfig, directory: Path, point: Point = Point()) -> list[RunPlan]:
    """The runs of one experiment, in ``directory``/<label>/seed-<s>. Seed-major order, so that a
    partial experiment has every optimizer for its first seeds. Each run carries the values of
    ``point`` that apply to it (not another optimizer entry's)."""
    return [RunPlan(config, spec, seed, str(Path(directory).joinpath(*run_parts(spec.label, seed))),
                    point=tuple((k, v) for k, v in point.values if applies_to(k, spec, config)))
            for seed in config.train.seeds for spec in config.optimizers]


def applies_to(key: str, spec: OptimizerSpec, config: ExperimentConfig) -> bool:
    """Whether a swept key can change this optimizer entry's runs: any key but another entry's."""
    parts = key.split(".")
    if parts[0] != "optimizers" or len(parts) < 2:
        return True
    index = config.optimizers.index(spec)
    return parts[1] in (spec.label, spec.name, str(index), str(index - len(config.optimizers)))


@dataclass(frozen=True)
class Phase:
    """Handed to ``run_sweep``'s ``on_phase`` when a phase starts."""

    name: str  # "tuning" (the pilot runs) or "main"
    plans: list[RunPlan]  # the runs this phase executes (resumed ones included)
    tuning: tuple[Tuning, ...]  # the finished tunings of every point (none in the tuning phase)
    cached: int = 0  # runs of this phase already done, not run again
    resumed: int = 0  # runs of ``plans`` that go on from a checkpoint
    # plugins whose code changed since finished runs of ``plans`` (run again: their ids hash it)
    code_changed: tuple[str, ...] = ()

    @property
    def steps_per_run(self) -> int:
        """The phase's training steps per run, the mean over its runs rounded (0 when it has none): for a progress display."""
        return round(statistics.fmean(plan.config.train.steps for plan in self.plans)) if self.plans else 0


@dataclass
class SweepOutcome:
    """What a sweep came to: one ExperimentOutcome per point, and how many runs were executed, cached or resumed."""

    directory: Path
    status: str  # complete | interrupted | failed (as its experiments)
    wall_seconds: float
    experiments: list[ExperimentOutcome]
    executed: int = 0  # runs executed in this invocation (pilots included)
    cached: int = 0  # runs found done and not run again
    resumed: int = 0  # runs that went on from a checkpoint

    @property
    def results(self) -> list[RunResult]:
        """Every run's result, point after point."""
        return [r for e in self.experiments for r in e.results]


def run_experiment(config: ExperimentConfig, plugins: Plugins, logdir: str | Path,
                   report: Report = lambda event: None, workers: int | None = None,
                   on_phase: Callable[[Phase], None] = lambda phase: None, force: bool = False,
                   executor: Executor | None = None) -> ExperimentOutcome:
    """One experiment (a sweep of one point) in ``logdir``/<name>; see ``run_sweep``."""
    return run_sweep(Sweep.of(config), plugins, logdir, report, workers, on_phase, force, executor).experiments[0]


def run_sweep(sweep: Sweep, plugins: Plugins, logdir: str | Path, report: Report = lambda event: None,
              workers: int | None = None, on_phase: Callable[[Phase], None] = lambda phase: None,
              force: bool = False, executor: Executor | None = None) -> SweepOutcome:
    """Run every run of every point (after the learning-rate pilots, if any optimizer entry has a
    tune section) and write each point's ``results.json`` (and ``sweep.json`` for a sweep).
    ``report`` receives the engine events of every run, pilots included; ``on_phase`` is called as
    each phase starts. Local worker processes load the plugins the way the driver did (entry points
    and $TESTBED_PLUGINS); ``extra`` plugins, objects a worker cannot load, make the runs execute one
    after the other in this process.
    The sweep's directory is locked meanwhile (a second writer gets DirectoryInUseError), and
    nothing below ``logdir`` is written through a symbolic link."""
    logdir = Path(logdir)
    refuse_links(logdir, [logdir / sweep.name])  # the lock file goes in there
    with directory_lock(logdir / sweep.name):
        return _run_sweep(sweep, plugins, logdir, report, workers, on_phase, force, executor)


def _run_sweep(sweep: Sweep, plugins: Plugins, logdir: Path, report: Report, workers: int | None,
               on_phase: Callable[[Phase], None], force: bool, executor: Executor | None) -> SweepOutcome:
    points = [(p, logdir / p.directory) for p in sweep.points]
    executor = executor or LocalExecutor(workers or sweep.points[0].config.workers)
    refuse_links(logdir, _directories_written(points))
    for p, directory in points:
        _prepare_experiment(directory, p.config)
    started = time.perf_counter()
    counts = {"executed": 0, "cached": 0, "resumed": 0}
    group = (lambda p: p.point.dirname) if sweep.swept else (lambda p: "")  # noqa: E731
    pilots = {p.directory: _identify([replace(x, group=group(p)) for x in plan_pilots(p.config, d)], plugins)
              for p, d in points}
    for p, directory in points:
        _prune_pilots(directory, pilots[p.directory])
    tunings: dict[str, dict[str, Tuning]] = {p.directory: {} for p, _ in points}
    interrupted, error = False, None  # error: a run could not write its files (disk full): stop
    if any(pilots.values()):
        done, interrupted = _run_phase("tuning", [x for plans in pilots.values() for x in plans], (), plugins,
                                       executor, report, on_phase, force, counts)
        error = _storage_failure(done.values())
        for p, _ in points:
            tunings[p.directory] = collect_tuning(p.config, [done[x.run_dir] for x in pilots[p.directory]],
                                                  interrupted or error is not None)
    mains = {p.directory: [replace(x, group=group(p)) for x in plan_runs(p.config, d, p.point)] for p, d in points}
    if interrupted or error:  # during tuning: no main run starts
        results = {x.run_dir: _never_chosen(x, tunings[p.directory]) for p, _ in points
                   for x in mains[p.directory]}
    else:
        mains = {p.directory: _identify(apply_tuning(mains[p.directory], tunings[p.directory]), plugins)
                 for p, _ in points}
        _declare_hparams(logdir / sweep.name, [x for plans in mains.values() for x in plans])
        merged = tuple(t for tuning in tunings.values() for t in tuning.values())
        results, interrupted = _run_phase("main", [x for plans in mains.values() for x in plans], merged,
                                          plugins, executor, report, on_phase, force, counts)
        error = _storage_failure(results.values())
    status = "failed" if error else "interrupted" if interrupted else "complete"
    wall = time.perf_counter() - started
    experiments = []
    for p, directory in points:
        outcome = ExperimentOutcome(directory, status, wall, [results[x.run_dir] for x in mains[p.directory]],
                                    tunings[p.directory], error)
        write_results(outcome, p.config, plugins, p.point, sweep.name if sweep.swept else None)
        experiments.append(outcome)
    outcome = SweepOutcome(logdir / sweep.name, status, wall, experiments, **counts)
    if sweep.swept:
        write_sweep(outcome, sweep)
    if error:  # after the results: what finished is recorded
        written = outcome.directory / (SWEEP_FILE if sweep.swept else RESULTS_FILE)
        raise StorageError(f"{error}; the experiment stopped (finished runs are kept, see {written})")
    return outcome


def _storage_failure(results: Iterable[RunResult]) -> str | None:
    """The first run's message of a failure to write its files, if any: a full disk fails every
    other run too, so the experiment stops."""
    return next((message for message in map(storage_failure, results) if message), None)


def _directories_written(points: list[tuple[SweepPoint, Path]]) -> list[Path]:
    """Every directory a sweep writes into: each point's, its pilots' and its main runs'."""
    return [path for p, directory in points
            for path in (directory, *(Path(x.run_dir) for x in plan_pilots(p.config, directory)),
                         *(Path(x.run_dir) for x in plan_runs(p.config, directory, p.point)))]


def _declare_hparams(directory: Path, plans: list[RunPlan]) -> None:
    columns: dict = {}
    for plan in plans:
        for key, value in hparams_of(plan).items():
            columns.setdefault(key, value)
    write_hparams_config(directory, columns)


def _identify(plans: list[RunPlan], plugins: Plugins) -> list[RunPlan]:
    return [identified(plan, plugins) for plan in plans]


def _never_chosen(plan: RunPlan, tuning: dict[str, Tuning]) -> RunResult:
    result = not_run(plan)
    if result.label in tuning:
        result.lr = None
    return result


def _run_phase(name: str, plans: list[RunPlan], tuning: tuple[Tuning, ...], plugins: Plugins, executor: Executor,
               report: Report, on_phase: Callable[[Phase], None], force: bool,
               counts: dict[str, int]) -> tuple[dict[str, RunResult], bool]:
    """Execute what ``plans`` still need: each distinct run id once, finished runs not at all (unless
    ``force``). Returns every plan's result by ``run_dir``, and whether it was interrupted."""
    results: dict[str, RunResult] = {}
    first: dict[str, RunPlan] = {}  # run id -> the plan that executes it
    to_run: list[RunPlan] = []
    code_changed: set[str] = set()
    for plan in plans:
        cached = None if force else finished_result(plan)
        if cached is not None:
            results[plan.run_dir] = cached
        elif plan.run_id not in first:
            first[plan.run_id] = plan
            to_run.append(plan)
        if cached is None and not force:
            code_changed.update(changed_plugins(plan))
    resumed = [plan for plan in to_run if not force and checkpoint.has_checkpoint(Path(plan.run_dir), plan.run_id)]
    _prepare_runs(to_run, keep={plan.run_dir for plan in resumed})
    counts["cached"] += len(results)
    counts["executed"] += len(to_run)
    counts["resumed"] += len(resumed)
    on_phase(Phase(name, to_run, tuning, cached=len(results), resumed=len(resumed),
                   code_changed=tuple(sorted(code_changed))))
    executed, interrupted = executor.execute(to_run, plugins, report) if to_run else ([], False)
    by_id = {plan.run_id: result for plan, result in zip(to_run, executed)}
    for plan in plans:
        if plan.run_dir in results:
            continue
        result = by_id[plan.run_id]
        if plan is not first[plan.run_id]:
            result = _copy_run(first[plan.run_id], plan, result)
        results[plan.run_dir] = result
    return results, interrupted


def _copy_run(source: RunPlan, target: RunPlan, result: RunResult) -> RunResult:
    """A sweep point's copy of a run another point executed (same id); a copy that cannot be
    written (disk full) fails, as the run would have."""
    copy = replace(result, key=target.key, run_dir=target.run_dir)
    if result.status in ("completed", "diverged"):
        try:
            set_aside_invalid_summary(Path(target.run_dir))
            _clear_run_dir(Path(target.run_dir))
            shutil.copytree(source.run_dir, target.run_dir, dirs_exist_ok=True, ignore=_kept_aside)
            _write_config(Path(target.run_dir), target.config)
        except OSError as exc:
            error = StorageError.writing(target.run_dir, exc)
            copy.status, copy.error = "failed", f"{type(error).__name__}: {error}"
    return copy


def _prepare_experiment(directory: Path, config: ExperimentConfig) -> None:
    """The experiment's config.yaml; a stale results.json would look like the result of this
    attempt, so it is kept aside (PREVIOUS_RESULTS_FILE) until this attempt writes its own."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if (directory / RESULTS_FILE).exists():
            (directory / RESULTS_FILE).replace(directory / PREVIOUS_RESULTS_FILE)
        _write_config(directory, config)
    except OSError as exc:
        raise TestbedError(f"cannot prepare the log directory {str(directory)!r}: {exc}") from None


def _write_config(directory: Path, config: ExperimentConfig) -> None:
    (directory / CONFIG_FILE).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def _prune_pilots(directory: Path, pilots: list[RunPlan]) -> None:
    """Remove pilot runs of earlier attempts that this one does not plan (another grid or seeds):
    TensorBoard would show them beside the current ones."""
    planned = {Path(plan.run_dir) for plan in pilots}
    for run_dir in (directory / TUNING_DIR).glob("*/*/*"):
        if run_dir.is_dir() and run_dir not in planned:
            refuse_links(directory, [run_dir])  # the glob follows links: never remove a link's target
            shutil.rmtree(run_dir, ignore_errors=True)
            if not any(run_dir.parent.iterdir()):
                run_dir.parent.rmdir()


def _prepare_runs(plans: list[RunPlan], keep: set[str]) -> None:
    """Fresh run directories for the runs about to start (stale event files would mix old and new
    curves), except those resuming from a checkpoint; each gets the config of its run. An invalid
    summary.json is kept aside, never removed (see cache)."""
    try:
        for plan in plans:
            run_dir = Path(plan.run_dir)
            set_aside_invalid_summary(run_dir)
            if plan.run_dir not in keep:
                _clear_run_dir(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            _write_config(run_dir, plan.config)
    except OSError as exc:
        raise TestbedError(f"cannot prepare the log directory {plans[0].run_dir!r}: {exc}") from None


def _clear_run_dir(run_dir: Path) -> None:
    """Remove what earlier attempts left in ``run_dir``, except the summaries kept aside."""
    if not run_dir.is_dir():
        return
    for path in run_dir.iterdir():
        if INVALID_SUMMARY.fullmatch(path.name):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _kept_aside(directory: str, names: list[str]) -> list[str]:
    """copytree's ignore: a run's kept-aside summaries stay with that run, they are not copied."""
    return [name for name in names if INVALID_SUMMARY.fullmatch(name)]


# ------------------------------------------------------------------ results
def write_results(outcome: ExperimentOutcome, config: ExperimentConfig, plugins: Plugins,
                  point: Point = Point(), sweep: str | None = None) -> Path:
    """Write the experiment's ``results.json`` (status, versions, config, summary, runs, tunings) and
    return its path; the kept previous results file is removed, as this one supersedes it."""
    path = outcome.directory / RESULTS_FILE
    write_json(path, {
        "experiment": config.name if sweep is None else f"{sweep}/{outcome.directory.name}",
        **({"sweep": sweep, "point": point.as_dict()} if sweep is not None else {}),
        "status": outcome.status,
        **({"error": outcome.error} if outcome.error else {}),
        "wall_seconds": outcome.wall_seconds,
        "versions": versions(plugins),
        "config": config.to_dict(),
        "summary": [row.__dict__ for row in outcome.summary()],
        "runs": [r.__dict__ for r in outcome.results],
        **({"tuning": {label: t.to_dict() for label, t in outcome.tuning.items()}} if outcome.tuning else {}),
    })
    (outcome.directory / PREVIOUS_RESULTS_FILE).unlink(missing_ok=True)  # superseded now
    return path


def write_sweep(outcome: SweepOutcome, sweep: Sweep) -> Path:
    """``sweep.json`` at the sweep's root: its keys and every point with its directory and status."""
    path = outcome.directory / SWEEP_FILE
    write_json(path, {
        "sweep": sweep.name,
        "status": outcome.status,
        "keys": sweep.keys,
        "points": [{"point": p.point.as_dict(), "directory": Path(p.directory).name, "status": e.status}
                   for p, e in zip(sweep.points, outcome.experiments)],
    })
    return path


def summary_table(rows: list[SummaryRow], points: list[str] | None = None) -> str:
    """The results table printed at the end of `testbed run`; with ``points`` (one per row), a
    sweep's table with the point of each row first."""
    header = ("optimizer", "runs", "final eval loss (mean ± std)", "best eval loss", "diverged", "failed")
    if points is not None:
        header = ("point", *header)
    lines = [header]
    for i, row in enumerate(rows):
        final = "-" if row.final_mean is None else f"{row.final_mean:.4e} ± {row.final_std:.1e}"
        best = "-" if row.best_mean is None else f"{row.best_mean:.4e}"
        cells = (row.label, str(row.runs), final, best, f"{row.diverged}/{row.runs}", str(row.failed))
        lines.append(cells if points is None else (points[i], *cells))
    return format_table(lines)
