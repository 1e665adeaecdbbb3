"""Figures the diagnostics log to TensorBoard (matplotlib's object API: no global pyplot state).

matplotlib and scipy are imported where a figure is drawn: at module level they cost every process
that loads the plugins (`testbed --help`, each run's worker) about a second, figure or not."""

from __future__ import annotations

import numpy as np
import torch

from testbed import Figure


def noise_figure(errors: torch.Tensor, bins: int, summary: dict[str, float], step: int) -> Figure:
    """Density histogram of the noise norms with a normal QQ-plot inset."""
    from matplotlib.figure import Figure as MplFigure
    from scipy import stats

    x = errors.double().numpy()
    figure = MplFigure(figsize=(6, 4), dpi=100)
    axes = figure.add_subplot()
    axes.hist(x, bins=bins, density=True, color="tab:blue", alpha=0.8)
    axes.set_xlabel(r"$\|g_k - g\|_2$")
    axes.set_ylabel("density")
    axes.set_title(f"gradient noise at step {step}: skew {summary['skewness']:.2f}, "
                   f"excess kurtosis {summary['excess_kurtosis']:.1f}", fontsize=9)
    inset = axes.inset_axes([0.6, 0.45, 0.37, 0.45])
    (theoretical, ordered), (slope, intercept, r) = stats.probplot(x, dist="norm")
    inset.plot(theoretical, ordered, ".", markersize=2, color="tab:blue")
    inset.plot(theoretical, slope * theoretical + intercept, color="tab:red", linewidth=1)
    inset.set_title(f"normal QQ, r = {r:.3f}", fontsize=7)
    inset.tick_params(labelsize=6)
    figure.tight_layout()
    return Figure("histogram", figure)


def smoothness_scatter(steps: torch.Tensor, log_grad: torch.Tensor, log_smoothness: torch.Tensor,
                       correlation: float, slope: float) -> Figure:
    """log directional smoothness against log gradient norm, coloured by step."""
    from matplotlib.figure import Figure as MplFigure

    figure = MplFigure(figsize=(6, 4), dpi=100)
    axes = figure.add_subplot()
    points = axes.scatter(log_grad.numpy(), log_smoothness.numpy(), c=steps.numpy(), s=4, cmap="viridis")
    figure.colorbar(points, ax=axes, label="step")
    x = np.linspace(float(log_grad.min()), float(log_grad.max()), 2)
    intercept = float(log_smoothness.mean()) - slope * float(log_grad.mean())
    axes.plot(x, slope * x + intercept, color="tab:red", linewidth=1)
    axes.set_xlabel(r"$\log \|\nabla f(\theta_t)\|$")
    axes.set_ylabel(r"$\log$ directional smoothness")
    axes.set_title(f"correlation {correlation:.3f}, slope {slope:.3f}", fontsize=9)
    figure.tight_layout()
    return Figure("scatter", figure)
