"""The numbers of one scoring run: its robust final loss, when it reached the workload's target (in
steps, gradient evaluations and seconds) and how often its eval loss spiked. Pure functions of plain
data (a RunResult, a records.SeedRun, or anything with the same fields); aggregating over seeds and
comparing optimizers is stats.py's job.

Conventions, each chosen so that one accident cannot decide a result:
- final loss: the median of the last ``FINAL_EVALS`` (3) evaluations, so a single spike at the last
  evaluation cannot make or break a run; with fewer evaluations, the median of those there are. A run
  that did not complete (diverged, failed, interrupted) or has a non-finite loss among them: inf.
- steps to target: the step of the first evaluation whose loss is <= the target; inf if none. As in
  AlgoPerf, the first time the target is hit is what counts: a run that reached the target and later
  diverged keeps its steps (its divergence shows in its final loss, inf, and in the divergence count).
- gradient evaluations to target: steps to target x the run's gradient evaluations per step, so a
  closure optimizer that computes the loss and gradient twice per step pays twice. A run that has no
  count (0: its summary predates the field) is charged one per step.
- seconds to target: steps to target x the run's measured seconds per step.
- spikes: finite evaluations more than ``SPIKE_FACTOR`` (10x) above the lowest loss evaluated before
  them. Non-finite evaluations are divergence, counted as such, not as spikes.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

FINAL_EVALS = 3  # evaluations the robust final loss takes the median of
SPIKE_FACTOR = 10.0  # an evaluation this many times above the best so far is a spike


@dataclass(frozen=True)
class SeedMetrics:
    """One scoring run (one seed) of one optimizer on one workload, reduced to the numbers compared."""

    seed: int
    status: str
    final_loss: float  # median of the last 3 evaluations; inf if the run did not complete
    steps_to_target: float  # first evaluated step with loss <= target; inf if never
    evals_to_target: float  # steps_to_target x gradient evaluations per step
    seconds_to_target: float  # steps_to_target x seconds per step
    spikes: int  # evaluations more than 10x above the lowest loss before them


def seed_metrics(result: Any, target: float) -> SeedMetrics:
    """The metrics of one run against ``target``. ``result`` has the fields eval_steps, eval_losses,
    status, seed, steps_done, seconds and gradient_evaluations (a RunResult or a records.SeedRun);
    diverged_at, if it has one, counts the diverging step as attempted."""
    losses = [float(v) for v in result.eval_losses]
    reached = steps_to_target(result.eval_steps, losses, target)
    attempted = steps_attempted(result)
    evaluations = getattr(result, "gradient_evaluations", 0)
    evaluations_per_step = evaluations / attempted if evaluations > 0 and attempted > 0 else 1.0
    seconds_per_step = float(result.seconds) / attempted if attempted > 0 else 0.0
    return SeedMetrics(
        seed=int(result.seed),
        status=str(result.status),
        final_loss=robust_final_loss(losses, str(result.status)),
        steps_to_target=reached,
        evals_to_target=_scaled(reached, evaluations_per_step),
        seconds_to_target=_scaled(reached, seconds_per_step),
        spikes=count_spikes(losses),
    )


def robust_final_loss(losses: Sequence[float], status: str) -> float:
    """The median of the last ``FINAL_EVALS`` eval losses; inf unless the run completed with them
    all finite (a run without evaluations is inf too)."""
    last = [float(v) for v in losses[-FINAL_EVALS:]]
    if status != "completed" or not last or not all(math.isfinite(v) for v in last):
        return math.inf
    return float(statistics.median(last))


def steps_to_target(steps: Sequence[int], losses: Sequence[float], target: float) -> float:
    """The first evaluated step whose loss is <= ``target``, as a float; inf if none is (a NaN
    loss never reaches it)."""
    for step, loss in zip(steps, losses):
        if loss <= target:
            return float(step)
    return math.inf


def count_spikes(losses: Sequence[float], factor: float = SPIKE_FACTOR) -> int:
    """How many finite losses are more than ``factor`` times the lowest finite loss before them."""
    spikes, lowest = 0, math.inf
    for loss in losses:
        if not math.isfinite(loss):
            continue
        if loss > factor * lowest:
            spikes += 1
        lowest = min(lowest, loss)
    return spikes


def steps_attempted(result: Any) -> int:
    """The optimizer steps the run computed: its steps done, or the step it diverged at (a step whose
    loss or gradient was non-finite was computed but not counted as done)."""
    return max(int(result.steps_done), int(getattr(result, "diverged_at", None) or 0))


def _scaled(steps: float, per_step: float) -> float:
    """``steps`` x ``per_step``, with never (inf) staying never even at zero cost per step."""
    return math.inf if math.isinf(steps) else steps * per_step
