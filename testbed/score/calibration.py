"""Targets calibrated from baseline results, the rule suite v2's targets were set by (AlgoPerf sets its
targets from its baselines' runs too): on each workload, take the baseline that gets lowest by a
fraction of the budget (median over its scoring seeds of the lowest eval loss evaluated by that step),
and round that loss UP to two significant digits. With a fraction of one half, the best baseline
crosses its target at about half the budget on most seeds, so that a faster optimizer has room to
show it and one up to twice as slow still gets there."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable, Mapping

from testbed.score.records import Scored, SeedRun

DEFAULT_FRACTION = 0.5  # of the budget's steps: where the best baseline should cross its target


@dataclass(frozen=True)
class Calibration:
    """The target of one workload and where it came from."""

    workload: str
    label: str  # the baseline the target is calibrated on
    by_step: int  # the step by which the loss counts
    loss: float  # that baseline's median over seeds of its lowest eval loss by ``by_step``
    target: float  # ``loss`` rounded up to two significant digits


def lowest_by(run: SeedRun, step: int) -> float:
    """The lowest finite eval loss ``run`` evaluated at or before ``step`` (inf if none)."""
    return min((loss for at, loss in zip(run.eval_steps, run.eval_losses) if at <= step and math.isfinite(loss)),
               default=math.inf)


def round_up(value: float, digits: int = 2) -> float:
    """``value`` rounded up to ``digits`` significant digits (a target a hair above the loss it is
    calibrated on, never below it)."""
    if not math.isfinite(value) or value <= 0:
        return value
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(value)))
    rounded = math.ceil(value * scale - 1e-9) / scale  # 1e-9: a value already on the grid stays there
    return float(f"{rounded:.{digits}g}")


def calibrate(records: Iterable[Scored], steps: Mapping[str, int],
              fraction: float = DEFAULT_FRACTION) -> list[Calibration]:
    """One Calibration per workload of ``steps`` (its budget's steps) that ``records`` cover: the
    baseline with the lowest median of ``lowest_by`` at ``fraction`` of the budget (ties: the first
    label in name order), in ``steps``' order. A workload no baseline has a finite loss on is left out."""
    by_workload: dict[str, list[Scored]] = {}
    for record in records:
        by_workload.setdefault(record.workload, []).append(record)
    found = []
    for workload, budget_steps in steps.items():
        by_step = int(budget_steps * fraction)
        medians = sorted((statistics.median(lowest_by(run, by_step) for run in record.runs), record.label)
                         for record in by_workload.get(workload, []) if record.runs)
        if medians and math.isfinite(medians[0][0]):
            loss, label = medians[0]
            found.append(Calibration(workload, label, by_step, loss, round_up(loss)))
    return found
