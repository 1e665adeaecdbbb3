"""Numbers that say how heavy-tailed a sample of gradient-noise norms is (the paper judges by eye)."""

from __future__ import annotations

import math

import numpy as np
import torch

from testbed import Histogram


def hill_tail_index(samples: np.ndarray, tail_fraction: float) -> float:
    """Hill's estimator of the tail index alpha from the k = tail_fraction * n largest samples:
    1 / mean(log(X_(i) / X_(k+1))), i = 1..k. Smaller alpha = heavier tail (a Gaussian's norm has a
    light tail: the estimate grows with the sample)."""
    ordered = np.sort(samples)[::-1]
    k = max(2, int(tail_fraction * len(ordered)))
    if k >= len(ordered) or ordered[k] <= 0:
        return math.nan
    return float(1.0 / np.mean(np.log(ordered[:k] / ordered[k])))


def summarize(errors: torch.Tensor, tail_fraction: float) -> dict[str, float]:
    # Imported here, not with the module: scipy.stats costs every process that loads the plugins a second.
    from scipy import stats

    x = errors.double().numpy()
    median = float(np.median(x))
    return {
        "mean": float(x.mean()),
        "median": median,
        "std": float(x.std(ddof=1)),
        "skewness": float(stats.skew(x)),
        "excess_kurtosis": float(stats.kurtosis(x, fisher=True)),
        "q99_over_median": float(np.quantile(x, 0.99) / median),
        "max_over_median": float(x.max() / median),
        "qq_correlation": float(stats.probplot(x, dist="norm")[1][2]),
        "hill_tail_index": hill_tail_index(x, tail_fraction),
    }


def records(errors: torch.Tensor, bins: int, figure) -> list:
    return [Histogram("errors", errors, bins=bins), figure]
