"""The report's figures: the eval loss, and the figures diagnostics declare (testbed.Plot), in the
paper's style: one colour per optimizer label, mean over seeds with a band (the range over seeds),
log-scale losses. Each function writes one PNG and returns its path, or None when the experiment has
nothing to show for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from testbed.diagnostics import Plot
from testbed.report.data import Experiment, Run, first_histogram
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
    and save it to ``path``: every band figure of the report (eval loss, diagnostics, sweeps) ends here."""
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


def diagnostic_curves(experiment: Experiment, key: str, title: str, path: Path, log: bool = True,
                      xlabel: str = "step", ylabel: str | None = None) -> Path | None:
    """A diagnostic's scalar ``key`` (``<name>/<tag>``) along training: mean over seeds per label,
    with the range band; None when no run measured it."""
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
    return save_band_figure(figure, axes, path, experiment.name, title, xlabel, ylabel or title, log=log)


def declared_figure(experiment: Experiment, diagnostic: str, plot: Plot, path: Path) -> Path | None:
    """The figure ``plot`` declares for ``diagnostic``, written to ``path``; None when the experiment
    has nothing to show for it."""
    if plot.kind == "histogram":
        return histogram(experiment, diagnostic, plot, path)
    if plot.kind == "scatter":
        return scatter(experiment, diagnostic, plot, path)
    return diagnostic_curves(experiment, f"{diagnostic}/{plot.tag}", plot.title, path, log=plot.log,
                             xlabel=plot.xlabel or "step", ylabel=plot.ylabel)


def histogram(experiment: Experiment, diagnostic: str, plot: Plot, path: Path) -> Path | None:
    """The density histogram of ``plot.tag``, as the first run that measured ``diagnostic`` logged
    it first (TensorBoard keeps a histogram's buckets, not its samples)."""
    for run in experiment.runs:
        if not run.measured(diagnostic):
            continue
        logged = first_histogram(run, f"diag/{diagnostic}/{plot.tag}")
        if logged is None:
            continue
        edges, counts = (np.asarray(a, dtype=float) for a in (logged.edges, logged.counts))
        width = np.diff(edges)
        density = counts / (counts.sum() * np.where(width > 0, width, np.inf))
        figure = Figure(figsize=(6, 4))
        axes = figure.add_subplot()
        axes.bar(edges[:-1], density, width=width, align="edge", color="tab:blue", alpha=0.85)
        when = "at init" if logged.step == 0 else f"at step {logged.step}"  # step 0 is the initialization
        title = f"{experiment.name}: {plot.title} {when} ({run.label}, seed {run.seed})"
        subtitle = _subtitle(plot, run, diagnostic, logged.step)
        if subtitle is not None:
            title += f"\n{subtitle}"
        axes.set_title(title, fontsize=9)
        axes.set_xlabel(plot.xlabel or plot.tag)
        axes.set_ylabel(plot.ylabel or "density")
        return _save(figure, path)
    return None


def _subtitle(plot: Plot, run: Run, diagnostic: str, step: int) -> str | None:
    """``plot.subtitle`` filled with the run's scalars of ``diagnostic`` at ``step``; None when it
    names one the run lacks there (or is no valid template)."""
    if plot.subtitle is None:
        return None
    prefix = f"{diagnostic}/"
    values = {key[len(prefix):]: value for key in run.diagnostics if key.startswith(prefix)
              and (value := run.value_at(key, step)) is not None}
    try:
        return plot.subtitle.format(**values)
    except (KeyError, IndexError, ValueError, TypeError):
        return None


def scatter(experiment: Experiment, diagnostic: str, plot: Plot, path: Path) -> Path | None:
    """``plot.tag`` against ``plot.x`` at the steps both were measured (their logarithms with
    ``plot.log``), coloured by step: the first run with 3 points or more."""
    for run in experiment.runs:
        steps_x, xs = run.series(f"{diagnostic}/{plot.x}")
        steps_y, ys = run.series(f"{diagnostic}/{plot.tag}")
        by_step = dict(zip(steps_y, ys))
        points = [(s, x, by_step[s]) for s, x in zip(steps_x, xs) if s in by_step]
        if plot.log:  # only positive values have a logarithm
            points = [(s, x, y) for s, x, y in points if x > 0 and y > 0]
        if len(points) < 3:
            continue
        steps, x, y = (np.array(c, dtype=float) for c in zip(*points))
        if plot.log:
            x, y = np.log(x), np.log(y)
        figure = Figure(figsize=(6, 4))
        axes = figure.add_subplot()
        points_drawn = axes.scatter(x, y, c=steps, s=4, cmap="viridis")
        figure.colorbar(points_drawn, ax=axes, label="step")
        axes.set_xlabel(plot.xlabel or plot.x)
        axes.set_ylabel(plot.ylabel or plot.tag)
        axes.set_title(f"{experiment.name}\n{plot.title} ({run.label}, seed {run.seed})", fontsize=9)
        return _save(figure, path)
    return None
