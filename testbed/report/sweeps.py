"""The report of a sweep: learning-rate sensitivity (final eval loss against the learning rate, one
line per optimizer, mean over seeds with the range as a band) and the best configuration of each
optimizer. A sweep's points are experiments whose results.json names the sweep."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from testbed.report.data import Experiment
from testbed.report.figures import COLOURS, save_band_figure


@dataclass
class Config:
    """One optimizer at one sweep point: its final losses over seeds."""

    label: str
    point: dict
    lr: float | None
    finals: list[float]  # completed runs
    diverged: int
    runs: int

    @property
    def mean(self) -> float:
        """Mean final loss over completed runs (inf if none completed: it ranks last)."""
        return statistics.fmean(self.finals) if self.finals else math.inf

    @property
    def std(self) -> float:
        """Standard deviation of the final losses over seeds (0 for fewer than two)."""
        return statistics.stdev(self.finals) if len(self.finals) > 1 else 0.0


def configs(points: list[Experiment]) -> list[Config]:
    """Every (optimizer, sweep point) pair of the sweep, with only the swept keys that concern
    that optimizer."""
    found = []
    for experiment in points:
        for label in experiment.labels:
            runs = experiment.runs_of(label)
            relevant = {k: v for k, v in experiment.point.items()
                        if not k.startswith("optimizers.") or k.split(".")[1] == label}
            found.append(Config(label, relevant, runs[0].lr, experiment.final_losses(label),
                                sum(r.status == "diverged" for r in runs), len(runs)))
    return found


def best_table(points: list[Experiment]) -> tuple[list[str], list[list[str]]]:
    """Per optimizer, the configuration with the lowest mean final eval loss; one with a diverged
    seed only wins if every configuration has one."""
    header = ["optimizer", "best configuration", "lr", "final eval loss, mean (std) over seeds", "seeds",
              "diverged", "configurations tried"]
    rows = []
    by_label: dict[str, list[Config]] = {}
    for config in configs(points):
        by_label.setdefault(config.label, []).append(config)
    for label, group in by_label.items():
        best = min(group, key=lambda c: (c.diverged > 0, c.mean))
        values = ", ".join(f"{k}={v}" for k, v in best.point.items()) or "-"
        loss = "-" if math.isinf(best.mean) else f"{best.mean:.4g} ({best.std:.2g})"
        rows.append([label, values, "-" if best.lr is None else f"{best.lr:g}", loss, str(best.runs),
                     str(best.diverged), str(len(group))])
    return header, rows


def sensitivity_curves(name: str, points: list[Experiment], path: Path) -> Path | None:
    """Final eval loss against the learning rate, one line per optimizer (and per value of any other
    swept key); diverged seeds are left out of the mean and counted in the legend."""
    lines: dict[str, dict[float, Config]] = {}
    for config in configs(points):
        others = ", ".join(f"{k}={v}" for k, v in config.point.items() if not k.endswith("lr"))
        if config.lr is not None:
            lines.setdefault(config.label + (f" ({others})" if others else ""), {})[config.lr] = config
    lines = {key: line for key, line in lines.items() if len(line) > 1}
    if not lines:
        return None
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    for colour, (key, line) in zip(COLOURS * 4, lines.items()):
        lrs = sorted(lr for lr, c in line.items() if c.finals and all(v > 0 for v in c.finals))
        if not lrs:
            continue
        values = [np.array(line[lr].finals, dtype=float) for lr in lrs]
        diverged = sum(c.diverged for c in line.values())
        legend = key + (f"; {diverged} diverged runs" if diverged else "")
        axes.plot(lrs, [v.mean() for v in values], "o-", color=colour, label=legend, markersize=3)
        axes.fill_between(lrs, [v.min() for v in values], [v.max() for v in values], color=colour, alpha=0.2,
                          linewidth=0)
    axes.set_xscale("log")
    return save_band_figure(figure, axes, path, name, "learning-rate sensitivity", "learning rate",
                             "final eval loss", legend_size=7)
