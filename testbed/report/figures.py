"""The report's figures, in the paper's style: one colour per optimizer, mean over seeds with a band
(the range over seeds), log-scale losses. Each function writes one PNG and returns its path, or
None when the experiment has nothing to show for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from testbed.report.data import Experiment, Run, noise_histogram
from testbed.report.render import writing

COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray"]


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    with writing(path):
        figure.savefig(path, dpi=110)
    return path


def save_band_figure(figure: Figure, axes, path: Path, name: str, what: str, xlabel: str, ylabel: str,
                      log: bool = True, legend_size: int = 8) -> Path:
    """Label a mean-over-seeds figure (the name on a title line of its own: long ones were cut off)
    and save it."""
    if log:
        axes.set_yscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(f"{name}\n{what}, mean over seeds, band = range", fontsize=9)
    axes.legend(fontsize=legend_size)
    return _save(figure, path)


def _band(axes, curves: list[tuple[list[int], list[float]]], colour: str, label: str) -> bool:
    """Mean over seeds with the min-max band, at each step over the seeds that have it (a run that
    diverged contributes up to its divergence)."""
    by_step: dict[int, list[float]] = {}
    for steps, values in curves:
        for step, value in zip(steps, values):
            by_step.setdefault(step, []).append(value)
    if not by_step:
        return False
    steps = sorted(by_step)
    values = [np.asarray(by_step[s], dtype=float) for s in steps]
    seeds = sum(1 for c in curves if c[0])
    noun = "seed" if seeds == 1 else "seeds"
    axes.plot(steps, [v.mean() for v in values], color=colour, label=f"{label} ({seeds} {noun})")
    if seeds > 1:
        axes.fill_between(steps, [v.min() for v in values], [v.max() for v in values], color=colour,
                          alpha=0.2, linewidth=0)
    return True


def _eval_curve(run: Run) -> tuple[list[int], list[float]]:
    points = [(s, v) for s, v in zip(run.eval_steps, run.eval_losses) if v is not None and v > 0]
    return [s for s, _ in points], [v for _, v in points]


def loss_curves(experiment: Experiment, path: Path) -> Path | None:
    """Completed runs: mean and band. Diverged runs: each its own thin dashed line up to its last
    finite eval loss, ending in a cross, so an optimizer that always diverges is still seen."""
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    drawn = False
    for colour, label in zip(COLOURS, experiment.labels):
        drawn |= _band(axes, [_eval_curve(r) for r in experiment.runs_of(label, completed=True)], colour, label)
        diverged = [_eval_curve(r) for r in experiment.runs_of(label) if r.status == "diverged"]
        for index, (steps, values) in enumerate(c for c in diverged if c[0]):
            axes.plot(steps, values, color=colour, linestyle="--", linewidth=0.8, alpha=0.7,
                      label=f"{label}: {len(diverged)} diverged (x)" if index == 0 else None)
            axes.plot(steps[-1:], values[-1:], color=colour, marker="x", linestyle="none")
            drawn = True
    if not drawn:
        return None
    return save_band_figure(figure, axes, path, experiment.name, "eval loss", "step", "eval loss (fixed batch)")


def diagnostic_curves(experiment: Experiment, key: str, ylabel: str, path: Path, log: bool = True) -> Path | None:
    if not experiment.has(key):
        return None
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    drawn = False
    for colour, label in zip(COLOURS, experiment.labels):
        # Diverged runs too: their measurements up to the divergence are as valid as any.
        curves = [run.series(key) for run in experiment.runs_of(label) if run.status in ("completed", "diverged")]
        if log:
            curves = [([s for s, v in zip(*c) if v > 0], [v for v in c[1] if v > 0]) for c in curves]
        drawn |= _band(axes, curves, colour, label)
    if not drawn:
        return None
    return save_band_figure(figure, axes, path, experiment.name, ylabel, "step", ylabel, log=log)


def noise_histograms(experiment: Experiment, path: Path) -> Path | None:
    """The gradient-noise density histogram of the first run that measured it."""
    for run in experiment.runs:
        if "gradient_noise/skewness" not in run.diagnostics:
            continue
        histogram = noise_histogram(run)
        if histogram is None:
            continue
        edges, counts = (np.asarray(a, dtype=float) for a in histogram)
        width = np.diff(edges)
        density = counts / (counts.sum() * np.where(width > 0, width, np.inf))
        figure = Figure(figsize=(6, 4))
        axes = figure.add_subplot()
        axes.bar(edges[:-1], density, width=width, align="edge", color="tab:blue", alpha=0.85)
        skew = run.value_at("gradient_noise/skewness", 0)
        kurtosis = run.value_at("gradient_noise/excess_kurtosis", 0)
        title = f"{experiment.name}: gradient noise at init ({run.label}, seed {run.seed})"
        if skew is not None and kurtosis is not None:
            title += f"\nskewness {skew:.2f}, excess kurtosis {kurtosis:.1f}"
        axes.set_title(title, fontsize=9)
        axes.set_xlabel(r"$\|g_k - g\|_2$")
        axes.set_ylabel("density")
        return _save(figure, path)
    return None


def smoothness_scatter(experiment: Experiment, path: Path) -> Path | None:
    """log directional smoothness against log gradient norm, coloured by step (first run)."""
    for run in experiment.runs:
        steps_g, grads = run.series("generalized_smoothness/grad_norm")
        steps_d, smooth = run.series("generalized_smoothness/directional_smoothness")
        by_step = dict(zip(steps_d, smooth))
        points = [(s, g, by_step[s]) for s, g in zip(steps_g, grads) if s in by_step and g > 0 and by_step[s] > 0]
        if len(points) < 3:
            continue
        steps, g, ds = (np.array(c, dtype=float) for c in zip(*points))
        figure = Figure(figsize=(6, 4))
        axes = figure.add_subplot()
        scatter = axes.scatter(np.log(g), np.log(ds), c=steps, s=4, cmap="viridis")
        figure.colorbar(scatter, ax=axes, label="step")
        axes.set_xlabel(r"$\log \|\nabla f(\theta_t)\|$")
        axes.set_ylabel(r"$\log$ directional smoothness")
        axes.set_title(f"{experiment.name}\ngeneralized smoothness ({run.label}, seed {run.seed})", fontsize=9)
        return _save(figure, path)
    return None
