"""Numbers across runs: one optimizer's seeds summarized, two optimizers compared seed by seed with a
verdict, and many optimizers ranked over workloads by performance profiles. Pure functions of plain
data (metrics.SeedMetrics and floats).

Conventions:
- Bootstrap: percentile intervals from ``RESAMPLES`` (10,000) resamples of the seeds with replacement,
  drawn by numpy's default generator seeded with ``BOOTSTRAP_SEED`` (0), so the same inputs always give
  the same interval. The 95% interval's ends are order statistics of the sorted resampled means (the
  250th and the 9,750th of 10,000), never interpolated, so an infinite mean stays infinite.
- Paired comparison of a against b: per seed (same init, same prompts) the log ratio log(a/b) of the
  metric, clipped to +-log(``MAX_RATIO``) (1e6): a seed where only a diverged (its metric is inf) counts
  +log(1e6), only b -log(1e6), both 0, as do equal values (two zeros included). Verdict: "better" when
  two tests agree: the bootstrap 95% interval of the mean log ratio lies entirely below 0 AND the exact
  two-sided Wilcoxon signed-rank test rejects "no difference" at ``ALPHA`` (0.05); "worse" likewise
  above 0; otherwise "no significant difference". The percentile bootstrap alone is too optimistic
  with a handful of seeds (with 3 seeds, two optimizers that do not differ at all would get a verdict
  one time in four, whenever the three ratios share a sign); the exact signed-rank test holds its 5%
  whatever the distribution, and cannot reach it with fewer than ``MIN_SEEDS`` (6) seeds (its smallest
  p-value with n seeds is 2 / 2^n), so fewer seeds never give a verdict. The bootstrap interval says how
  large the difference is; with n seeds a resample leaves out any one seed with probability
  (1 - 1/n)^n >= 1/4, so one extreme seed cannot produce an interval that the other seeds contradict.
- Performance profile (Dolan and More 2002): on each workload, an optimizer's ratio is its time to
  target over the best optimizer's (1 for the best; inf if it failed; inf for everyone on a workload
  nobody solved; a workload missing for an optimizer is a failure, not missing). rho_s(tau) is the
  fraction of workloads with ratio <= tau.
- Profile score (AlgoPerf's benchmark score): the area under rho_s on [1, tau_max], normalized to
  [0, 1]: (1 / (tau_max - 1)) * integral_1^tau_max rho_s(tau) dtau, computed exactly: each workload
  solved at ratio r adds (tau_max - r) / (tau_max - 1) when r < tau_max, divided by the workload count.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import wilcoxon

from testbed.errors import ResultsError
from testbed.score.metrics import SeedMetrics

RESAMPLES = 10_000  # bootstrap resamples
BOOTSTRAP_SEED = 0  # the bootstrap's fixed RNG seed: same inputs, same interval
CONFIDENCE = 0.95
MAX_RATIO = 1e6  # per-seed ratios are clipped to [1/MAX_RATIO, MAX_RATIO]; a lone divergence counts as either end
ALPHA = 0.05  # the signed-rank test's level
MIN_SEEDS = 6  # the fewest paired seeds whose exact two-sided signed-rank p-value can be below ALPHA (2/2^6)
METRICS = ("final_loss", "steps_to_target", "evals_to_target", "seconds_to_target")

BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no significant difference"


@dataclass(frozen=True)
class Comparison:
    """Optimizer a against optimizer b on one metric, paired by seed (lower is better)."""

    metric: str
    seeds: tuple[int, ...]
    log_ratios: tuple[float, ...]  # log(a / b) per seed, clipped to +-log(MAX_RATIO)
    mean_log_ratio: float
    ci: tuple[float, float]  # bootstrap 95% interval of the mean log ratio
    verdict: str  # BETTER (a lower), WORSE (a higher) or NO_DIFFERENCE
    wilcoxon_p: float  # exact two-sided signed-rank p-value; 1.0 when all ratios are 0

    @property
    def ratio(self) -> float:
        """The geometric mean over seeds of a / b (0.5: a's metric is half b's)."""
        return math.exp(self.mean_log_ratio)


def bootstrap_mean_ci(values: Sequence[float], resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED,
                      confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of ``values`` (deterministic: fixed RNG seed).
    Its ends are order statistics of the resampled means, so inf values give inf ends, never NaN."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("a bootstrap needs at least one value")
    rng = np.random.default_rng(seed)
    means = np.sort(data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1))
    tail = (1.0 - confidence) / 2.0
    low = math.floor(tail * resamples)
    high = math.ceil((1.0 - tail) * resamples) - 1
    return float(means[low]), float(means[high])


def summarize(seeds: Sequence[SeedMetrics]) -> dict:
    """One optimizer on one workload over its scoring seeds: the final loss's median, and its mean with
    a bootstrap 95% interval; the medians of steps, gradient evaluations and seconds to target (a seed
    that never reached it counts as inf, so the median is inf when at least half never did); how many
    seeds reached the target, diverged, failed otherwise; and the loss spikes of all seeds together."""
    if not seeds:
        raise ValueError("summarize needs at least one seed")
    finals = [s.final_loss for s in seeds]
    return {
        "seeds": len(seeds),
        "final_loss_median": _median(finals),
        "final_loss_mean": float(np.mean(finals)),
        "final_loss_ci": bootstrap_mean_ci(finals),
        "steps_to_target_median": _median([s.steps_to_target for s in seeds]),
        "evals_to_target_median": _median([s.evals_to_target for s in seeds]),
        "seconds_to_target_median": _median([s.seconds_to_target for s in seeds]),
        "reached": sum(math.isfinite(s.steps_to_target) for s in seeds),
        "divergences": sum(s.status == "diverged" for s in seeds),
        "failures": sum(s.status not in ("completed", "diverged") for s in seeds),
        "spikes": sum(s.spikes for s in seeds),
    }


def paired_comparison(a: Sequence[SeedMetrics], b: Sequence[SeedMetrics], metric: str = "final_loss") -> Comparison:
    """a against b on ``metric``, seed by seed: the mean log ratio, its bootstrap 95% interval, the
    signed-rank p-value and the verdict they give together (see the module docstring). Both must have
    run the same seeds."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; one of {', '.join(METRICS)}")
    by_seed_a, by_seed_b = _by_seed(a, "a"), _by_seed(b, "b")
    if by_seed_a.keys() != by_seed_b.keys():
        raise ResultsError(f"a paired comparison needs the same seeds: a ran {sorted(by_seed_a)}, "
                           f"b ran {sorted(by_seed_b)}")
    seeds = tuple(sorted(by_seed_a))
    ratios = tuple(log_ratio(getattr(by_seed_a[s], metric), getattr(by_seed_b[s], metric)) for s in seeds)
    ci, p = bootstrap_mean_ci(ratios), _wilcoxon_p(ratios)
    return Comparison(metric=metric, seeds=seeds, log_ratios=ratios, mean_log_ratio=float(np.mean(ratios)),
                      ci=ci, verdict=verdict(ci, len(seeds), p), wilcoxon_p=p)


def log_ratio(a: float, b: float) -> float:
    """log(a / b) clipped to +-log(MAX_RATIO); equal values (both inf, both 0) give 0, NaN counts as
    inf (a failure)."""
    a, b = (math.inf if math.isnan(v) else v for v in (a, b))
    if a == b:
        return 0.0
    limit = math.log(MAX_RATIO)
    if math.isinf(a) or b == 0:
        return limit
    if math.isinf(b) or a == 0:
        return -limit
    return min(limit, max(-limit, math.log(a / b)))


def verdict(ci: tuple[float, float], seeds: int, p_value: float) -> str:
    """BETTER when the interval lies below 0, WORSE when above, in both cases only if the signed-rank
    p-value is below ALPHA too; otherwise (and always with fewer than MIN_SEEDS seeds) NO_DIFFERENCE."""
    if seeds < MIN_SEEDS or not p_value < ALPHA:
        return NO_DIFFERENCE
    if ci[1] < 0:
        return BETTER
    if ci[0] > 0:
        return WORSE
    return NO_DIFFERENCE


def performance_ratios(times: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """ratios[optimizer][workload]: its time over the best time on that workload (Dolan-More); inf
    for a failure, for everyone on a workload nobody solved, and for a workload the optimizer lacks."""
    workloads = list(dict.fromkeys(w for per_workload in times.values() for w in per_workload))
    best = {w: min(per_workload.get(w, math.inf) for per_workload in times.values()) for w in workloads}
    return {name: {w: _ratio(per_workload.get(w, math.inf), best[w]) for w in workloads}
            for name, per_workload in times.items()}


def performance_profile(times: dict[str, dict[str, float]], taus: Iterable[float]) -> dict[str, list[float]]:
    """rho[optimizer][i]: the fraction of workloads on which its ratio to the best is <= taus[i].
    ``times[optimizer][workload]`` is the median steps to target (inf: never reached)."""
    taus = list(taus)
    ratios = performance_ratios(times)
    return {name: [_fraction_within(per_workload.values(), tau) for tau in taus]
            for name, per_workload in ratios.items()}


def profile_score(times: dict[str, dict[str, float]], tau_max: float = 4.0) -> dict[str, float]:
    """The area under each optimizer's performance profile on [1, tau_max], normalized to [0, 1]
    (AlgoPerf's benchmark score), computed exactly: rho is a step function."""
    if not tau_max > 1:
        raise ValueError(f"tau_max must be above 1, not {tau_max}")
    scores = {}
    for name, per_workload in performance_ratios(times).items():
        ratios = list(per_workload.values())
        area = sum(tau_max - r for r in ratios if r < tau_max) / len(ratios) if ratios else 0.0
        scores[name] = area / (tau_max - 1)
    return scores


def _ratio(time: float, best: float) -> float:
    """One optimizer's ratio on one workload: 1 if it is the best (even at time 0), inf if it or
    everyone failed."""
    time = math.inf if math.isnan(time) else time
    if math.isinf(time):
        return math.inf
    if time == best:
        return 1.0
    return math.inf if best == 0 else time / best


def _fraction_within(ratios: Iterable[float], tau: float) -> float:
    """The fraction of ``ratios`` that are <= ``tau`` (0 for none)."""
    ratios = list(ratios)
    return sum(r <= tau for r in ratios) / len(ratios) if ratios else 0.0


def _by_seed(seeds: Sequence[SeedMetrics], name: str) -> dict[int, SeedMetrics]:
    """The metrics by seed; a seed that appears twice is an error (the pairing would be ambiguous)."""
    by_seed: dict[int, SeedMetrics] = {}
    for metrics in seeds:
        if metrics.seed in by_seed:
            raise ResultsError(f"seed {metrics.seed} appears twice among {name}'s runs")
        by_seed[metrics.seed] = metrics
    return by_seed


def _median(values: Sequence[float]) -> float:
    """The median, with inf counted as a value (never NaN: no value is -inf or NaN here)."""
    return float(np.median(np.asarray(values, dtype=float)))


def _wilcoxon_p(ratios: Sequence[float]) -> float:
    """The exact two-sided Wilcoxon signed-rank p-value of the log ratios; 1.0 when none differs
    from 0 (no evidence either way)."""
    if not any(ratios):
        return 1.0
    return float(wilcoxon(ratios, method="exact").pvalue)
