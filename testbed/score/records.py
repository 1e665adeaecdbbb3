"""What the scorecard and the leaderboard read: per workload and optimizer, the tuning's choice and
trials and the scoring runs' eval curves, as plain records. They come from a protocol run
(``from_score_data``) or from the shipped baseline results (testbed/score/leaderboard.py), so that a
score can take its references from either."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable


@dataclass(frozen=True)
class SeedRun:
    """One scoring run: what metrics.seed_metrics reads of a RunResult, and nothing else."""

    seed: int
    status: str
    eval_steps: tuple[int, ...]
    eval_losses: tuple[float, ...]
    seconds: float
    steps_done: int
    gradient_evaluations: int


@dataclass(frozen=True)
class Trial:
    """One tuning trial: its hyperparameter point and its score (the median over tuning seeds of the
    robust final loss; inf when it diverged or failed)."""

    point: dict[str, Any]
    score: float


@dataclass(frozen=True)
class Scored:
    """One optimizer on one workload: the chosen point, whether it sits at the search space's edge,
    the lr sensitivity, every trial, and the scoring runs (one per scoring seed)."""

    workload: str
    label: str
    chosen: dict[str, Any]
    at_edge: bool
    sensitivity: float
    trials: tuple[Trial, ...] = ()
    runs: tuple[SeedRun, ...] = ()
    optimizer: str = ""  # the registered optimizer name behind the label ("" when not known)


@dataclass
class Scores:
    """Every record of one score, by (workload, label), in the order they were added."""

    records: dict[tuple[str, str], Scored] = field(default_factory=dict)

    def add(self, records: Iterable[Scored]) -> "Scores":
        """Add (or replace) records; returns self."""
        for record in records:
            self.records[(record.workload, record.label)] = record
        return self

    def get(self, workload: str, label: str) -> Scored | None:
        """The record of ``label`` on ``workload``, if scored."""
        return self.records.get((workload, label))

    @property
    def labels(self) -> list[str]:
        """Every label scored, in order of first appearance."""
        return list(dict.fromkeys(label for _, label in self.records))

    @property
    def workloads(self) -> list[str]:
        """Every workload scored, in order of first appearance."""
        return list(dict.fromkeys(workload for workload, _ in self.records))


def seed_run(result: Any) -> SeedRun:
    """The SeedRun of a RunResult (or anything with its fields). A summary written before
    gradient_evaluations existed keeps 0: metrics.seed_metrics charges such a run one per step."""
    evaluations = getattr(result, "gradient_evaluations", 0)
    return SeedRun(int(result.seed), str(result.status), tuple(int(s) for s in result.eval_steps),
                   tuple(float(v) for v in result.eval_losses), float(result.seconds), int(result.steps_done),
                   int(evaluations))


def trial_score(value: Any) -> float:
    """A trial's score as a float: None (nothing measured) and NaN are inf, like a divergence."""
    if value is None:
        return math.inf
    value = float(value)
    return math.inf if math.isnan(value) else value


def from_score_data(data: Any) -> list[Scored]:
    """The records of a protocol run (protocol.ScoreData): one per (workload, candidate) it scored."""
    return [Scored(result.workload, result.label, dict(result.choice.point), result.choice.at_edge,
                   float(result.choice.sensitivity),
                   tuple(Trial(dict(t.point), trial_score(t.score)) for t in result.trials),
                   tuple(seed_run(r) for r in result.runs), result.candidate.optimizer)
            for result in data.results.values()]
