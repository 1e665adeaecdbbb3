"""What a report reads: experiments (curves, diagnostics, config: loaded by ``load``) and, for the
histograms diagnostics declare, the TensorBoard event files of their runs."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any



@dataclass
class Run:
    """One run as its results record it: status, eval curve and diagnostics."""
    label: str
    seed: int
    status: str
    final_eval_loss: float | None
    eval_steps: list[int]
    eval_losses: list[float | None]
    diagnostics: dict[str, list[list[float]]]
    run_dir: str
    lr: float | None = None
    diverged_at: int | None = None
    diverged_on: str | None = None  # "loss", "gradient" or "eval loss"
    zeroed_steps: list[int] = field(default_factory=list)  # overflowing gradient norm: a zero step
    error: str | None = None  # why a failed or interrupted run did not finish

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """A diagnostic's (steps, values), non-finite values dropped."""
        points = [(int(s), v) for s, v in self.diagnostics.get(key, []) if v is not None and math.isfinite(v)]
        return [s for s, _ in points], [v for _, v in points]

    @property
    def unfinished(self) -> bool:
        """Interrupted or failed: the run has no final result."""
        return self.status not in ("completed", "diverged")

    def measured(self, diagnostic: str) -> bool:
        """Whether the run recorded a scalar of ``diagnostic``."""
        return any(key.startswith(f"{diagnostic}/") for key in self.diagnostics)

    def value_at(self, key: str, step: int) -> float | None:
        """A diagnostic's value at exactly ``step``, or None if it was not measured there."""
        for s, v in self.diagnostics.get(key, []):
            if int(s) == step:
                return v
        return None


@dataclass
class Experiment:
    """One experiment directory as a report reads it: its config, its runs and, for a sweep
    point, which sweep and point it is."""
    name: str
    directory: Path
    config: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    sweep: str | None = None  # the sweep this experiment is a point of
    point: dict[str, Any] = field(default_factory=dict)
    status: str | None = None  # "complete" or "interrupted"
    profile: str | None = None  # the `testbed reproduce` profile, if it was one

    @property
    def labels(self) -> list[str]:
        """The optimizer labels, in the order the runs appear."""
        return list(dict.fromkeys(r.label for r in self.runs))

    @property
    def task(self) -> str:
        """The task's name."""
        return self.config["task"]["name"]

    @property
    def layers(self) -> int:
        """The model's number of layers."""
        return self.config["model"]["layers"]

    @property
    def attention(self) -> str:
        """The model's attention variant."""
        return self.config["model"]["attention"]

    def runs_of(self, label: str, completed: bool = False) -> list[Run]:
        """The runs of one optimizer label (only the completed ones if ``completed``)."""
        return [r for r in self.runs if r.label == label and (not completed or r.status == "completed")]

    def has(self, key: str) -> bool:
        """Whether any run recorded the diagnostic scalar ``key``."""
        return any(key in r.diagnostics for r in self.runs)

    def final_losses(self, label: str) -> list[float]:
        """Final eval losses of the label's completed runs."""
        return [r.final_eval_loss for r in self.runs_of(label, completed=True) if r.final_eval_loss is not None]

    def mean_final(self, label: str) -> float | None:
        """Mean final eval loss of the label's completed runs; None if none completed."""
        values = self.final_losses(label)
        return statistics.fmean(values) if values else None


@dataclass(frozen=True)
class LoggedHistogram:
    """A histogram read back from TensorBoard: n+1 bucket edges for n counts, and its step."""

    step: int
    edges: list[float]
    counts: list[float]


def first_histogram(run: Run, tag: str) -> LoggedHistogram | None:
    """The first histogram logged under ``tag`` (a full tag, e.g. ``diag/<name>/<tag>``) in a run's
    event files (TensorBoard stores the right edges and the minimum)."""
    from tensorboard.backend.event_processing.event_accumulator import (
        STORE_EVERYTHING_SIZE_GUIDANCE,
        EventAccumulator,
    )

    if not Path(run.run_dir).is_dir():
        return None
    accumulator = EventAccumulator(run.run_dir, size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    accumulator.Reload()
    if tag not in accumulator.Tags().get("histograms", []):
        return None
    event = accumulator.Histograms(tag)[0]
    histogram = event.histogram_value
    return LoggedHistogram(event.step, [histogram.min, *histogram.bucket_limit], list(histogram.bucket))
