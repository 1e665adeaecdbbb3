"""The scorecard's figures, drawn with matplotlib's object API (no global pyplot state): the
performance profile, a workload's eval-loss curves (median and min-max band over the scoring seeds),
and the learning-rate sensitivity of the tuning trials. Each function writes one PNG and returns its
path, or None when there is nothing to draw."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from testbed.report.figures import COLOURS
from testbed.report.render import writing
from testbed.score.records import Scored


LINESTYLES = ["-", "--", "-.", ":"]
CROWDED = 4  # more optimizers than this in one figure: legend outside, fainter bands
SCORE_RANGE = 100.0  # a sensitivity panel shows trial scores up to this many times its best one
# The report's colours, then more: the leaderboard draws eleven baselines in one figure.
PALETTE = [*COLOURS, "tab:olive", "tab:cyan", "black", "gold"]


def colours(labels: list[str]) -> dict[str, str]:
    """One colour per label, the same in every figure of a score (the candidate's first)."""
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}


def _save(figure: Figure, path: Path) -> Path:
    if figure.get_layout_engine() is None:  # a constrained layout places its outside legend itself
        figure.tight_layout()
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110)
    return path


def profile_figure(curves: dict[str, tuple[list[float], list[float]]], scores: dict[str, float],
                   tau_max: float, path: Path) -> Path | None:
    """rho(tau) against tau, one step line per optimizer (``curves``: label -> (taus, rhos)), its
    score in the legend."""
    if not curves:
        return None
    crowded = len(curves) > CROWDED
    figure = Figure(figsize=(8.5 if crowded else 6.5, 4.2))
    axes = figure.add_subplot()
    palette = colours(list(curves))
    # Profiles often coincide (two optimizers best everywhere): thinner, dashed lines on top stay visible.
    for index, (label, (taus, rhos)) in enumerate(curves.items()):
        axes.step(taus, rhos, where="post", color=palette[label], linewidth=max(3.0 - 0.5 * index, 1.0),
                  linestyle=LINESTYLES[index % len(LINESTYLES)], label=f"{label} (score {scores[label]:.3f})")
    axes.set_xlim(1.0, tau_max)
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel("tau (steps to target / the best optimizer's on that workload)")
    axes.set_ylabel("rho(tau): fraction of workloads")
    axes.set_title("Performance profile on steps to target\nscore = area under rho on [1, tau_max], "
                   "normalized to [0, 1]", fontsize=9)
    axes.grid(alpha=0.3)
    if crowded:  # a legend inside would hide the curves near rho = 1 or 0
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        axes.legend(fontsize=8, loc="lower right")
    return _save(figure, path)


def median_band(runs) -> tuple[list[int], list[float], list[float], list[float]]:
    """Per eval step: the median, min and max of the finite positive eval losses over the runs
    that have that step (a diverged run counts up to its divergence)."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        for step, loss in zip(run.eval_steps, run.eval_losses):
            if math.isfinite(loss) and loss > 0:
                by_step.setdefault(step, []).append(loss)
    steps = sorted(by_step)
    return (steps, [float(np.median(by_step[s])) for s in steps], [min(by_step[s]) for s in steps],
            [max(by_step[s]) for s in steps])


def loss_figure(title: str, records: list[Scored], target: float, palette: dict[str, str], path: Path) -> Path | None:
    """A workload's eval loss of each optimizer in ``records``: the median over its scoring seeds
    with the min-max band, log scale, and the target as a dashed line."""
    crowded = len(records) > CROWDED
    figure = Figure(figsize=(8.5 if crowded else 6.5, 4.2))
    axes = figure.add_subplot()
    drawn = False
    for record in records:
        steps, median, low, high = median_band(record.runs)
        if not steps:
            continue
        seeds = len(record.runs)
        colour = palette[record.label]
        axes.plot(steps, median, color=colour, label=f"{record.label} (median of {seeds} seeds)")
        if seeds > 1:
            axes.fill_between(steps, low, high, color=colour, alpha=0.07 if crowded else 0.2, linewidth=0)
        drawn = True
    if not drawn:
        return None
    axes.axhline(target, color="black", linestyle="--", linewidth=0.8, label=f"target {target:g}")
    axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("eval loss (fixed batch)")
    axes.set_title(f"{title}\neval loss, median over scoring seeds, band = min-max", fontsize=9)
    if crowded:  # beside the axes: inside, eleven entries hide the curves
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        axes.legend(fontsize=8)
    return _save(figure, path)


def sensitivity_figure(panels: list[tuple[str, list[Scored]]], palette: dict[str, str], path: Path) -> Path | None:
    """One panel per workload (``panels``: title and the records to draw): each optimizer's trial
    score against the learning rate, log-log, the best over other hyperparameters at each lr; a
    trial that diverged is an x at the panel's top."""
    panels = [(title, [r for r in records if r.trials]) for title, records in panels]
    panels = [(title, records) for title, records in panels if records]
    if not panels:
        return None
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(3.4 * columns + 1.3, 2.9 * rows + 0.4), layout="constrained")
    for index, (title, records) in enumerate(panels):
        axes = figure.add_subplot(rows, columns, index + 1)
        finite = [t.score for r in records for t in r.trials if math.isfinite(t.score) and t.score > 0]
        # Scores of blown-up trials (1e28) would flatten the rest: show up to SCORE_RANGE x the best.
        top = min(finite) * SCORE_RANGE if finite else 1.0
        axes.set_xscale("log")  # before the limits: a linear autoscale's limits do not survive the switch
        axes.set_yscale("log")
        for record in records:
            _sensitivity_line(axes, record, palette[record.label], top)
        axes.set_ylim(min(finite, default=top) / 1.5, top * 1.5)
        axes.yaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks crowd a short log axis
        axes.set_title(title, fontsize=8)
        axes.set_xlabel("lr", fontsize=8)
        axes.set_ylabel("trial score", fontsize=8)
        axes.tick_params(labelsize=7)
    handles = {label: handle for axes in figure.axes for handle, label in zip(*axes.get_legend_handles_labels())}
    figure.legend(list(handles.values()), list(handles), fontsize=7, loc="outside right upper")
    figure.suptitle("Learning-rate sensitivity: trial score against lr\n(median robust final loss over tuning "
                    f"seeds; x = diverged; axis up to {SCORE_RANGE:g}x the best)", fontsize=9)
    return _save(figure, path)


def _sensitivity_line(axes, record: Scored, colour: str, top: float) -> None:
    best: dict[float, float] = {}
    for trial in record.trials:
        lr = float(trial.point["lr"])
        best[lr] = min(best.get(lr, math.inf), trial.score)
    lrs = sorted(best)
    finite = [(lr, best[lr]) for lr in lrs if math.isfinite(best[lr]) and best[lr] > 0]
    if finite:
        axes.plot(*zip(*finite), color=colour, marker="o", markersize=3, label=record.label)
    failed = [lr for lr in lrs if not math.isfinite(best[lr])]
    if failed:
        axes.plot(failed, [top] * len(failed), color=colour, marker="x", linestyle="none",
                  label=None if finite else f"{record.label} (all diverged)")
