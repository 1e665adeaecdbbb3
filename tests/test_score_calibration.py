"""Target calibration (testbed/score/calibration.py) on hand-made records, and suite v2's shipped
targets recomputed from suite v1's shipped results by that rule."""

from __future__ import annotations

import math

import pytest

from testbed.score.calibration import calibrate, lowest_by, round_up
from testbed.score.leaderboard import read_baselines
from testbed.score.records import Scored, SeedRun
from testbed.score.suite import BENCHMARK, load_suite

STEPS = (0, 50, 100, 150, 200)


def run(seed: int, losses: tuple[float, ...]) -> SeedRun:
    return SeedRun(seed, "completed", STEPS, losses, 1.0, 200, 200)


def record(label: str, *runs: SeedRun, workload: str = "w") -> Scored:
    return Scored(workload, label, {"lr": 0.1}, False, 1.0, (), runs)


def test_lowest_by_counts_only_finite_evaluations_up_to_the_step() -> None:
    r = run(0, (1.0, 0.5, math.inf, 0.2, 0.1))
    assert lowest_by(r, 100) == 0.5  # the inf at step 100 is no loss; 0.2 comes at step 150
    assert lowest_by(r, 150) == 0.2
    assert lowest_by(run(0, (math.nan, math.inf, math.inf, math.inf, math.inf)), 200) == math.inf


@pytest.mark.parametrize("value, expected", [(0.000129, 0.00013), (0.232, 0.24), (0.0145, 0.015),
                                             (0.0012, 0.0012), (4.65, 4.7), (123.0, 130.0)])
def test_round_up_to_two_significant_digits(value: float, expected: float) -> None:
    assert round_up(value) == expected
    assert round_up(value) >= value


def test_the_target_is_the_best_baselines_median_lowest_loss_by_half_the_budget_rounded_up() -> None:
    # By step 100: a's lowest losses per seed are 0.5, 0.31, 0.4 (median 0.4); b's 0.6, 0.35, 0.33
    # (median 0.35: b is best there, although a gets lower at the end).
    a = record("a", run(0, (1, 0.9, 0.5, 0.1, 0.05)), run(1, (1, 0.31, 0.8, 0.1, 0.05)),
               run(2, (1, 0.4, 0.45, 0.1, 0.05)))
    b = record("b", run(0, (1, 0.6, 0.7, 0.5, 0.5)), run(1, (1, 0.35, 0.36, 0.3, 0.3)),
               run(2, (1, 0.5, 0.33, 0.3, 0.3)))
    diverged = record("c", run(0, (math.nan, math.inf, math.inf, math.inf, math.inf)))
    [found] = calibrate([a, b, diverged], {"w": 200})
    assert (found.workload, found.label, found.by_step, found.loss, found.target) == ("w", "b", 100, 0.35, 0.35)
    [later] = calibrate([a, b], {"w": 200}, fraction=1.0)
    assert (later.label, later.loss, later.target) == ("a", 0.05, 0.05)
    assert calibrate([diverged], {"w": 200}) == []  # nothing finite: no target


def test_suite_v2_targets_follow_the_rule_from_v1s_shipped_results() -> None:
    v1 = read_baselines(BENCHMARK / "v1" / "baselines-full.json")
    v2 = load_suite("v2")
    steps = {w.name: w.budgets["full"].steps for w in v2.workloads}
    found = {c.workload: c.target for c in calibrate(v1.records, steps)}
    assert found == {w.name: w.target_for("full") for w in v2.workloads}
