"""The scoring protocol, run: every candidate gets the same tuning trials on every workload, the best
trial is chosen on the tuning seeds, and the chosen point is scored on the (disjoint) scoring seeds.

Both phases are one sweep each over every (workload, candidate), run by
``testbed.experiment.runner.run_sweep``, so the executor's workers stay busy across workloads and
candidates. Runs land under ``root``:

    runs/<suite version>/<profile>/<workload>/<candidate label>/tuning/t<nn>/seed-<s>   (trial nn)
    runs/<suite version>/<profile>/<workload>/<candidate label>/scoring/<label>/seed-<s>

A run already finished under the same id (``testbed.experiment.cache``) is not run again, so a
second score with another candidate runs only that candidate, and an interrupted score goes on where
it stopped. Both sweeps are named ``runs/<version>/<profile>``: they share its lock (one score at a
time writes there) and its ``sweep.json`` (the last phase run writes it).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from testbed.engine.loop import Report
from testbed.engine.run import RunResult
from testbed.experiment.config import parse_config
from testbed.experiment.executors.base import Executor
from testbed.experiment.runner import ExperimentOutcome, Phase, SweepOutcome, run_sweep
from testbed.experiment.sweep import Point, Sweep, SweepPoint
from testbed.plugins import Plugins
from testbed.plugins.registry import Registry
from testbed.score.candidates import Candidate
from testbed.score.metrics import robust_final_loss
from testbed.score.suite import Suite, Workload, experiment_raw

RUNS_DIR = "runs"
TUNING, SCORING = "tuning", "scoring"
SENSITIVITY_FACTOR = 2.0  # a trial within this factor of the best counts as "as good" (lr sensitivity)


@dataclass(frozen=True)
class TrialResult:
    """One tuning trial of a candidate on a workload: its label, its point and its runs (one per
    tuning seed)."""

    label: str  # t00, t01, ...: its directory under tuning/
    point: dict[str, Any]  # {"lr": .., other searched options ..}
    runs: tuple[RunResult, ...]

    @property
    def score(self) -> float:
        """The median over tuning seeds of the robust final eval loss (inf for a run that diverged,
        failed or was interrupted)."""
        return trial_score(self.runs)


@dataclass(frozen=True)
class Choice:
    """The tuning's outcome: the chosen point, whether its lr sits at the edge of the searched grid,
    and how many trials came within 2x of it."""

    point: dict[str, Any]
    score: float  # the chosen trial's score
    edge: str | None  # "lowest" or "highest" if the chosen lr is that end of the grid, else None
    sensitivity: float  # fraction of trials whose score is within 2x of the best (0 if all failed)

    @property
    def at_edge(self) -> bool:
        """Whether the chosen lr is the grid's lowest or highest: the best may lie outside the space."""
        return self.edge is not None


@dataclass(frozen=True)
class CandidateResult:
    """One candidate on one workload: its trials, the choice made from them, and the scoring runs
    (one per scoring seed, in seed order)."""

    workload: str
    candidate: Candidate
    trials: tuple[TrialResult, ...]
    choice: Choice
    runs: tuple[RunResult, ...]

    @property
    def label(self) -> str:
        """The candidate's label."""
        return self.candidate.label

    def edge_warning(self) -> str | None:
        """A line saying the chosen lr sits at the edge of the search space, or None."""
        if self.choice.edge is None:
            return None
        return (f"{self.label} on {self.workload}: the chosen lr {self.choice.point['lr']:g} is the "
                f"{self.choice.edge} of its search space; the best may lie outside it")


@dataclass
class ScoreData:
    """What a protocol run came to: per (workload, candidate label) its CandidateResult (none for a
    score interrupted during tuning), its status, and how many runs were executed or found done."""

    status: str  # complete | interrupted (a run that could not write its files raises StorageError)
    results: dict[tuple[str, str], CandidateResult] = field(default_factory=dict)
    executed: int = 0  # runs executed by this call, both phases
    cached: int = 0  # runs found finished under the same id and not run again
    resumed: int = 0  # runs that went on from a checkpoint
    run_seconds: float = 0.0  # the runs' own wall times summed, cached ones included: what computing them cost

    @property
    def warnings(self) -> list[str]:
        """One line per choice at the edge of its search space."""
        return [w for w in (r.edge_warning() for r in self.results.values()) if w]


# ------------------------------------------------------------------ the sweeps
def trial_labels(count: int) -> list[str]:
    """The trials' labels (their directories): t00, t01, ..."""
    return [f"t{i:02d}" for i in range(count)]


def candidate_dir(suite: Suite, profile: str, workload: Workload, candidate: Candidate) -> str:
    """Where one candidate's runs on one workload go, relative to the score's root."""
    return f"{RUNS_DIR}/{suite.version}/{profile}/{workload.name}/{candidate.label}"


def tuning_sweep(suite: Suite, profile: str, candidates: Sequence[Candidate], registry: Registry) -> Sweep:
    """One experiment per (workload, candidate): every trial point of the candidate's search space as
    an optimizer entry (t00, t01, ...), on the budget's tuning seeds, for its trial steps; no
    diagnostics. Its directories are relative to the score's root (run_sweep's logdir)."""
    points = []
    for workload, candidate in pairs(suite, candidates):
        budget = workload.budgets[profile]
        trials = candidate.space.points(budget.trials)
        entries = [candidate.entry(point, label) for point, label in zip(trials, trial_labels(len(trials)))]
        points.append(_point(suite, profile, workload, candidate, TUNING, registry, experiment_raw(
            workload, budget, entries, budget.tuning_seeds, budget.trial_steps, _name(workload, candidate, TUNING))))
    return Sweep(_sweep_name(suite, profile), tuple(points), swept=True)


def scoring_sweep(suite: Suite, profile: str, candidates: Sequence[Candidate],
                  chosen: Mapping[tuple[str, str], Choice], registry: Registry) -> Sweep:
    """One experiment per (workload, candidate): the chosen point under the candidate's label, on the
    budget's scoring seeds, for its steps, evaluated every ``eval_every`` steps."""
    points = []
    for workload, candidate in pairs(suite, candidates):
        budget = workload.budgets[profile]
        entry = candidate.entry(chosen[workload.name, candidate.label].point)
        points.append(_point(suite, profile, workload, candidate, SCORING, registry, experiment_raw(
            workload, budget, [entry], budget.scoring_seeds, budget.steps, _name(workload, candidate, SCORING))))
    return Sweep(_sweep_name(suite, profile), tuple(points), swept=True)


def pairs(suite: Suite, candidates: Sequence[Candidate]) -> list[tuple[Workload, Candidate]]:
    """Every (workload, candidate), workload-major: the order of both sweeps' points."""
    return [(workload, candidate) for workload in suite.workloads for candidate in candidates]


def _point(suite: Suite, profile: str, workload: Workload, candidate: Candidate, phase: str, registry: Registry,
           raw: dict[str, Any]) -> SweepPoint:
    """A sweep point: its values name the workload and candidate (TensorBoard's HParams show them,
    and they keep run keys unique across the sweep); its directory is the phase's."""
    point = Point((("workload", workload.name), ("candidate", candidate.label)))
    directory = f"{candidate_dir(suite, profile, workload, candidate)}/{phase}"
    return SweepPoint(point, parse_config(raw, registry), directory)


def _name(workload: Workload, candidate: Candidate, phase: str) -> str:
    return f"{workload.name}.{candidate.label}.{phase}"


def _sweep_name(suite: Suite, profile: str) -> str:
    return f"{RUNS_DIR}/{suite.version}/{profile}"


# ------------------------------------------------------------------ choosing
def trial_score(runs: Sequence[RunResult]) -> float:
    """The median over runs of the robust final eval loss (see metrics.robust_final_loss): one
    last-evaluation spike cannot decide a trial; a run that did not complete counts as inf."""
    return float(statistics.median(robust_final_loss(r.eval_losses, r.status) for r in runs))


def choose(trials: Sequence[TrialResult]) -> Choice:
    """The best trial by score; ties go to the smaller lr, then to the earlier trial. Its lr at the
    grid's lowest or highest value is an edge; sensitivity is the fraction of trials within 2x of the
    best score (0 when every trial diverged or failed)."""
    scores = [t.score for t in trials]
    best = min(range(len(trials)), key=lambda i: (scores[i], trials[i].point["lr"], i))
    lrs = sorted({t.point["lr"] for t in trials})
    lr = trials[best].point["lr"]
    edge = "lowest" if lr == lrs[0] else "highest" if lr == lrs[-1] else None
    good = [s for s in scores if s <= SENSITIVITY_FACTOR * scores[best]] if math.isfinite(scores[best]) else []
    return Choice(dict(trials[best].point), scores[best], edge, len(good) / len(trials))


def collect_trials(outcome: ExperimentOutcome, candidate: Candidate, trials: int) -> list[TrialResult]:
    """The trials of one tuning experiment: its runs grouped by trial label, in trial order."""
    labels = trial_labels(trials)
    points = candidate.space.points(trials)
    return [TrialResult(label, point, tuple(r for r in outcome.results if r.label == label))
            for label, point in zip(labels, points)]


# ------------------------------------------------------------------ running both phases
def run_protocol(suite: Suite, profile: str, candidates: Sequence[Candidate], plugins: Plugins, root: str | Path,
                 executor: Executor | None = None, report: Report = lambda event: None,
                 on_phase: Callable[[Phase], None] = lambda phase: None) -> ScoreData:
    """Tune every candidate on every workload, then score each one's choice: two sweeps through
    run_sweep (runs finished under the same id are not rerun). ``on_phase`` sees the phases named
    "tuning" and "scoring". Interrupted during tuning: no scoring run starts, and no result."""
    root = Path(root)
    suite.profile(profile)
    registry = plugins.registry
    tuned = run_sweep(tuning_sweep(suite, profile, candidates, registry), plugins, root, report,
                      on_phase=_named(on_phase, TUNING), executor=executor)
    data = ScoreData(tuned.status)
    _count(data, tuned)
    if tuned.status != "complete":
        return data
    trials = {(workload.name, candidate.label): collect_trials(outcome, candidate, workload.budgets[profile].trials)
              for (workload, candidate), outcome in zip(pairs(suite, candidates), tuned.experiments)}
    chosen = {key: choose(found) for key, found in trials.items()}
    scored = run_sweep(scoring_sweep(suite, profile, candidates, chosen, registry), plugins, root, report,
                       on_phase=_named(on_phase, SCORING), executor=executor)
    _count(data, scored)
    data.status = scored.status
    for (workload, candidate), outcome in zip(pairs(suite, candidates), scored.experiments):
        key = (workload.name, candidate.label)
        data.results[key] = CandidateResult(workload.name, candidate, tuple(trials[key]), chosen[key],
                                            tuple(outcome.results))
    return data


def _named(on_phase: Callable[[Phase], None], name: str) -> Callable[[Phase], None]:
    """``on_phase`` seeing the protocol's phase name instead of the runner's ("main")."""
    return lambda phase: on_phase(replace(phase, name=name))


def _count(data: ScoreData, outcome: SweepOutcome) -> None:
    data.executed += outcome.executed
    data.cached += outcome.cached
    data.resumed += outcome.resumed
    data.run_seconds += sum(result.seconds for experiment in outcome.experiments for result in experiment.results)
