"""testbed.score.metrics and testbed.score.stats on synthetic inputs whose answers are computed by
hand: steps to target, the robust final loss, spikes, gradient evaluations of a closure optimizer, the
performance profile and its exact area, and the paired comparison's interval and verdict."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from testbed.engine.run import RunResult
from testbed.errors import ResultsError
from testbed.score.metrics import SeedMetrics, count_spikes, seed_metrics
from testbed.score.stats import (
    BETTER,
    NO_DIFFERENCE,
    WORSE,
    bootstrap_mean_ci,
    paired_comparison,
    performance_profile,
    profile_score,
    summarize,
)

INF = math.inf
LOG_1E6 = math.log(1e6)


@dataclass
class Run:
    """The fields of a RunResult that seed_metrics reads."""

    eval_steps: list[int]
    eval_losses: list[float]
    status: str = "completed"
    seed: int = 0
    steps_done: int = 100
    seconds: float = 50.0
    gradient_evaluations: int = 100


def seeds_with(final_losses: list[float], statuses: list[str] | None = None) -> list[SeedMetrics]:
    """SeedMetrics of seeds 0..n-1 with these final losses (the other metrics do not matter here)."""
    statuses = statuses or ["diverged" if math.isinf(v) else "completed" for v in final_losses]
    return [SeedMetrics(seed=s, status=status, final_loss=v, steps_to_target=INF, evals_to_target=INF,
                        seconds_to_target=INF, spikes=0)
            for s, (v, status) in enumerate(zip(final_losses, statuses))]


# --- metrics of one run ---------------------------------------------------------------------------

STEPS = [0, 20, 40, 60, 80, 100]


def test_steps_to_target_is_the_first_evaluation_at_or_below_it():
    run = Run(STEPS, [5.0, 2.0, 1.0, 0.5, 1.5, 0.25])
    assert seed_metrics(run, target=1.0).steps_to_target == 40  # 1.0 is at the target: reached
    assert seed_metrics(run, target=0.9).steps_to_target == 60
    assert seed_metrics(run, target=5.0).steps_to_target == 0  # reached at initialization
    assert seed_metrics(run, target=0.1).steps_to_target == INF  # never


def test_a_diverged_run_has_an_infinite_final_loss_and_keeps_a_target_reached_before():
    reached_then_diverged = Run([0, 20, 40], [5.0, 0.8, 0.6], status="diverged", steps_done=45)
    metrics = seed_metrics(reached_then_diverged, target=1.0)
    assert metrics.final_loss == INF
    assert metrics.steps_to_target == 20
    diverged_early = Run([0, 20, 40], [5.0, 2.0, INF], status="diverged", steps_done=40)
    metrics = seed_metrics(diverged_early, target=1.0)
    assert (metrics.final_loss, metrics.steps_to_target, metrics.evals_to_target) == (INF, INF, INF)
    assert metrics.spikes == 0  # a non-finite evaluation is divergence, not a spike
    nan_eval = Run([0, 20], [5.0, math.nan], status="diverged", steps_done=20)
    assert seed_metrics(nan_eval, target=10.0).steps_to_target == 0


def test_the_robust_final_loss_ignores_a_single_spike_at_the_last_evaluation():
    run = Run([0, 20, 40, 60, 80, 100, 120], [4.0, 2.0, 1.0, 0.5, 0.4, 0.3, 30.0])
    metrics = seed_metrics(run, target=0.1)
    assert metrics.final_loss == 0.4  # median of 0.4, 0.3, 30.0; the last evaluation alone says 30
    assert metrics.spikes == 1  # 30.0 > 10 x 0.3


def test_the_robust_final_loss_of_short_and_failed_runs():
    assert seed_metrics(Run([0, 100], [4.0, 1.0]), 0.1).final_loss == 2.5  # median of the two there are
    assert seed_metrics(Run([0, 100], [4.0, 1.0], status="failed"), 0.1).final_loss == INF
    assert seed_metrics(Run([], [], status="failed", steps_done=0), 0.1).final_loss == INF


def test_spikes_are_evaluations_more_than_ten_times_the_lowest_before_them():
    # lowest so far: 1.0, 0.5, 0.5 (5.0 is exactly 10x: not a spike), 0.5 (6.0: spike), 0.25, then
    # 3.0 > 2.5 (spike); inf is divergence
    assert count_spikes([1.0, 0.5, 5.0, 6.0, 0.25, 3.0, INF]) == 2
    assert count_spikes([3.0, 2.0, 1.0]) == 0


def test_a_closure_optimizer_that_evaluates_twice_per_step_pays_twice():
    losses = [5.0, 2.0, 0.9, 0.5, 0.4, 0.3]
    plain = seed_metrics(Run(STEPS, losses, steps_done=100, seconds=50.0, gradient_evaluations=100), 1.0)
    closure = seed_metrics(Run(STEPS, losses, steps_done=100, seconds=50.0, gradient_evaluations=200), 1.0)
    assert plain.steps_to_target == closure.steps_to_target == 40
    assert plain.evals_to_target == 40
    assert closure.evals_to_target == 80
    assert plain.seconds_to_target == closure.seconds_to_target == 20.0  # 40 steps x 0.5 s per step


def test_a_run_without_a_gradient_count_is_charged_one_per_step():
    legacy = Run(STEPS, [5.0, 2.0, 0.9, 0.5, 0.4, 0.3], gradient_evaluations=0)
    assert seed_metrics(legacy, 1.0).evals_to_target == 40


def test_seed_metrics_reads_a_real_run_result_that_diverged():
    # the loss went non-finite at step 50: 49 steps done, 50 computed; 25 s over 50 steps
    result = RunResult(key="adam/seed-3", label="adam", optimizer="adam", seed=3, status="diverged",
                       steps_done=49, run_dir="unused", seconds=25.0, diverged_at=50,
                       eval_steps=[0, 20, 40], eval_losses=[5.0, 0.9, 0.7])
    metrics = seed_metrics(result, target=1.0)
    assert (metrics.seed, metrics.status, metrics.final_loss) == (3, "diverged", INF)
    assert (metrics.steps_to_target, metrics.evals_to_target, metrics.seconds_to_target) == (20, 20, 10.0)


# --- summaries ------------------------------------------------------------------------------------

def test_summarize_counts_a_diverged_seed_as_inf():
    seeds = seeds_with([0.1, 0.2, 0.3, INF, 0.5])
    seeds = [SeedMetrics(s.seed, s.status, s.final_loss, steps, 2 * steps, steps / 10, spikes)
             for s, steps, spikes in zip(seeds, [10, 20, INF, INF, 40], [0, 1, 0, 0, 2])]
    summary = summarize(seeds)
    assert summary["final_loss_median"] == 0.3
    assert summary["final_loss_mean"] == INF
    low, high = summary["final_loss_ci"]
    assert high == INF
    assert 0.1 <= low <= 0.5  # a third of the resamples leave out the diverged seed: finite means
    assert summary["steps_to_target_median"] == 40  # sorted 10, 20, 40, inf, inf
    assert summary["evals_to_target_median"] == 80
    assert summary["seconds_to_target_median"] == 4.0
    assert (summary["reached"], summary["divergences"], summary["failures"], summary["spikes"]) == (3, 1, 0, 3)


def test_summarize_of_finite_seeds_brackets_the_mean():
    summary = summarize(seeds_with([0.1, 0.2, 0.3, 0.4, 0.5]))
    low, high = summary["final_loss_ci"]
    assert summary["final_loss_mean"] == pytest.approx(0.3)
    assert 0.1 <= low < 0.3 < high <= 0.5


# --- performance profiles -------------------------------------------------------------------------

# Median steps to target. Best per workload: w1 100 (a), w2 100 (b), w3 nobody.
# Ratios: a 1, 1.5, inf;  b 2, 1, inf;  c inf (failed), 3, inf.
TIMES = {
    "a": {"w1": 100.0, "w2": 150.0, "w3": INF},
    "b": {"w1": 200.0, "w2": 100.0, "w3": INF},
    "c": {"w1": INF, "w2": 300.0, "w3": INF},
}


def test_performance_profile_of_three_optimizers_on_three_workloads():
    rho = performance_profile(TIMES, [1.0, 1.5, 2.0, 3.0, 4.0, 100.0])
    third, two_thirds = 1 / 3, 2 / 3
    assert rho["a"] == pytest.approx([third, two_thirds, two_thirds, two_thirds, two_thirds, two_thirds])
    assert rho["b"] == pytest.approx([third, third, two_thirds, two_thirds, two_thirds, two_thirds])
    assert rho["c"] == pytest.approx([0, 0, 0, third, third, third])  # w3, solved by nobody, never counts


def test_profile_score_is_the_exact_normalized_area():
    # a: ((4 - 1) + (4 - 1.5)) / 3 workloads / (4 - 1) = 11/18;  b: (2 + 3) / 9;  c: 1 / 9
    assert profile_score(TIMES, tau_max=4.0) == pytest.approx({"a": 11 / 18, "b": 5 / 9, "c": 1 / 9}, abs=1e-15)
    assert profile_score(TIMES, tau_max=2.0) == pytest.approx({"a": 0.5, "b": 1 / 3, "c": 0.0}, abs=1e-15)


def test_profile_score_matches_a_fine_numerical_integral_of_the_profile():
    taus = np.linspace(1.0, 4.0, 30_001)
    rho = performance_profile(TIMES, taus)
    for name, score in profile_score(TIMES, 4.0).items():
        assert np.trapezoid(rho[name], taus) / 3.0 == pytest.approx(score, abs=1e-3)


def test_a_missing_workload_is_a_failure_and_the_best_everywhere_scores_one():
    times = {"a": {"w1": 10.0, "w2": 20.0}, "b": {"w1": 20.0}}
    assert profile_score(times, 4.0) == pytest.approx({"a": 1.0, "b": (4 - 2) / 2 / 3})
    with pytest.raises(ValueError, match="tau_max"):
        profile_score(times, tau_max=1.0)


# --- paired comparison ----------------------------------------------------------------------------

LOSSES_B = [0.3, 0.5, 0.7, 0.2, 0.9, 0.4]  # six seeds: the fewest that can give a verdict


def test_identical_runs_show_no_significant_difference_with_a_zero_interval():
    comparison = paired_comparison(seeds_with(LOSSES_B), seeds_with(LOSSES_B))
    assert comparison.log_ratios == (0.0,) * 6
    assert comparison.ci == (0.0, 0.0)
    assert comparison.verdict == NO_DIFFERENCE
    assert comparison.wilcoxon_p == 1.0


def test_half_the_loss_on_every_seed_is_better_and_the_interval_sits_at_log_one_half():
    half = seeds_with([v / 2 for v in LOSSES_B])
    comparison = paired_comparison(half, seeds_with(LOSSES_B))
    assert comparison.verdict == BETTER
    assert comparison.ci == pytest.approx((math.log(0.5), math.log(0.5)), abs=1e-12)
    assert comparison.ratio == pytest.approx(0.5)
    assert comparison.wilcoxon_p == pytest.approx(2 / 64)  # all 6 signs agree: 2 of 2^6 sign patterns
    assert paired_comparison(seeds_with(LOSSES_B), half).verdict == WORSE


def test_mixed_signs_show_no_significant_difference():
    # two seeds, 2x better and 2x worse: resample means are log 0.5, 0 or log 2 with probabilities
    # 1/4, 1/2, 1/4, so the 2.5% and 97.5% order statistics are exactly log 0.5 and log 2
    two = paired_comparison(seeds_with([0.5, 2.0]), seeds_with([1.0, 1.0]))
    assert two.ci == pytest.approx((math.log(0.5), math.log(2.0)))
    assert two.verdict == NO_DIFFERENCE
    ratios = [1.3, 0.7, 1.2, 0.8, 1.05, 0.9]
    six = paired_comparison(seeds_with([r * b for r, b in zip(ratios, LOSSES_B)]), seeds_with(LOSSES_B))
    assert six.ci[0] < 0 < six.ci[1]
    assert six.verdict == NO_DIFFERENCE


@pytest.mark.parametrize("factor", [2.0, 10.0, 1e3, 1e6, 1e9, INF])
def test_one_seed_cannot_give_a_verdict_the_other_seeds_contradict(factor):
    # Property: b is 2.4x lower than a on four seeds; on the fifth a is `factor` times lower (INF: b
    # diverged). About a third of the bootstrap resamples leave the fifth seed out, and their mean is
    # log 2.4, so the interval's top stays there and "better" is impossible however extreme that seed.
    b = [0.1, 0.2, 0.3, 0.4, 0.5]
    a = [2.4 * v for v in b[:4]] + [b[4] / factor]
    b_seeds = seeds_with(b[:4] + [INF if factor == INF else b[4]])
    a_seeds = seeds_with(a[:4] + [b[4] if factor == INF else a[4]])
    comparison = paired_comparison(a_seeds, b_seeds)
    assert comparison.verdict != BETTER
    assert comparison.ci[1] == pytest.approx(math.log(2.4))
    if factor >= 1e3:
        assert comparison.mean_log_ratio < 0  # the mean alone would be fooled


def test_a_seed_slightly_against_the_others_leaves_the_verdict():
    # seven seeds: the one against has the smallest rank, p = 2 * 2 / 2^7 = 0.031 (with six it would be
    # 0.0625: the signed-rank test then rightly withholds the verdict)
    b = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    a = [2.4 * v for v in b[:6]] + [b[6] / 1.1]
    comparison = paired_comparison(seeds_with(a), seeds_with(b))
    assert comparison.wilcoxon_p == pytest.approx(4 / 128)
    assert comparison.verdict == WORSE
    assert paired_comparison(seeds_with(a[1:]), seeds_with(b[1:])).verdict == NO_DIFFERENCE


def test_a_seed_where_one_diverged():
    b = [0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4]
    half = [v / 2 for v in b]
    # b diverged on seed 6, a did not: that seed counts as -log(1e6), every seed agrees: better.
    comparison = paired_comparison(seeds_with(half), seeds_with(b[:6] + [INF]))
    assert comparison.log_ratios[6] == pytest.approx(-LOG_1E6)
    assert comparison.verdict == BETTER
    assert comparison.ci[1] == pytest.approx(math.log(0.5))  # resamples without seed 6
    # P(seed 6 drawn >= 4 times in 7) = 0.0102 < 2.5% < P(>= 3 times) = 0.0652: the low end holds it 3 times
    assert comparison.ci[0] == pytest.approx((4 * math.log(0.5) - 3 * LOG_1E6) / 7)
    # a diverged on seed 6 and was 2x lower on the others: the divergence denies it "better"
    comparison = paired_comparison(seeds_with(half[:6] + [INF]), seeds_with(b))
    assert comparison.log_ratios[6] == pytest.approx(LOG_1E6)
    assert comparison.verdict == NO_DIFFERENCE
    # both diverged on seed 6: that seed is a tie (the signed-rank test drops it: six seeds remain)
    comparison = paired_comparison(seeds_with(half[:6] + [INF]), seeds_with(b[:6] + [INF]))
    assert comparison.log_ratios[6] == 0.0
    assert comparison.verdict == BETTER


def test_steps_to_target_never_reached_by_one_side():
    reached = [SeedMetrics(s, "completed", 0.1, 50.0, 50.0, 5.0, 0) for s in range(6)]
    never = [SeedMetrics(s, "completed", 0.3, INF, INF, INF, 0) for s in range(6)]
    comparison = paired_comparison(reached, never, metric="steps_to_target")
    assert comparison.log_ratios == pytest.approx((-LOG_1E6,) * 6)
    assert comparison.verdict == BETTER
    with pytest.raises(ValueError, match="unknown metric"):
        paired_comparison(reached, never, metric="best_loss")


def test_fewer_than_six_seeds_never_give_a_verdict():
    # three seeds all 10x lower: the percentile bootstrap interval excludes 0, but two optimizers that do
    # not differ at all share a sign on three seeds one time in four; the signed-rank test (p = 1/4) says so
    three = paired_comparison(seeds_with([0.01, 0.02, 0.03]), seeds_with([0.1, 0.2, 0.3]))
    assert three.ci[1] < 0 and three.wilcoxon_p == pytest.approx(0.25)
    assert three.verdict == NO_DIFFERENCE
    assert paired_comparison(seeds_with([0.1]), seeds_with([1.0])).verdict == NO_DIFFERENCE


def test_the_seeds_must_pair():
    with pytest.raises(ResultsError, match=r"same seeds: a ran \[0, 1, 2\], b ran \[0, 1\]"):
        paired_comparison(seeds_with([0.1, 0.2, 0.3]), seeds_with([0.1, 0.2]))
    twice = seeds_with([0.1, 0.2]) + seeds_with([0.3])
    with pytest.raises(ResultsError, match="seed 0 appears twice"):
        paired_comparison(twice, seeds_with([0.1, 0.2, 0.3]))


def test_the_bootstrap_is_deterministic():
    values = [0.31, -0.2, 0.05, 0.4, -0.12, 0.22]
    assert bootstrap_mean_ci(values) == bootstrap_mean_ci(list(values))
    a, b = seeds_with([0.3, 0.25, 0.6, 0.1, 0.8, 0.35]), seeds_with(LOSSES_B)
    assert paired_comparison(a, b).ci == paired_comparison(a, b).ci
    assert bootstrap_mean_ci(values, seed=1) != bootstrap_mean_ci(values)  # the fixed seed is what fixes it


def test_the_bootstrap_interval_is_the_95_percent_percentile_one():
    # Means of resamples of (0, 0, 1) are k/3, k ~ Binomial(3, 1/3): P(k = 0) = 8/27 > 2.5% and
    # P(k = 3) = 1/27 = 3.7% > 2.5%, so the 95% interval is [0, 1]; a 90% one would end at 2/3.
    assert bootstrap_mean_ci([0.0, 0.0, 1.0]) == (0.0, 1.0)
    assert bootstrap_mean_ci([0.0, 0.0, 1.0], confidence=0.9) == (0.0, pytest.approx(2 / 3))
