"""Learning-rate tuning, the paper's protocol: for each optimizer entry with a ``tune`` section, short
pilot runs for every grid lr and pilot seed; the lr with the lowest mean final eval loss is kept and
every seed then runs with it (``experiment.run_experiment`` runs the two phases)."""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from testbed.engine.specs import ExperimentConfig
from testbed.engine.run import RunPlan, RunResult
from testbed.files.layout import pilot_parts
from testbed.text import format_lr


@dataclass
class Tuning:
    """The learning-rate tuning of one optimizer entry: its pilot runs and the lr it chose."""

    label: str
    grid: tuple[float, ...]
    steps: int
    seeds: tuple[int, ...]
    pilots: list[RunResult]
    chosen_lr: float | None  # None: tuning was interrupted
    note: str | None = None

    def scores(self) -> dict[float, float]:
        """Grid lr -> mean final eval loss over its pilots (inf: a pilot diverged, failed or did not run)."""
        return {lr: pilot_score([p for p in self.pilots if p.lr == lr]) for lr in self.grid}

    def to_dict(self) -> dict[str, Any]:
        """The tuning as results.json records it: grid, pilots and the chosen learning rate."""
        return {
            "grid": list(self.grid), "steps": self.steps, "seeds": list(self.seeds),
            "pilots": [{"lr": p.lr, "seed": p.seed, "status": p.status, "final_eval_loss": p.final_eval_loss,
                        "diverged_at": p.diverged_at, "best_eval_loss": p.best_eval_loss} for p in self.pilots],
            "chosen_lr": self.chosen_lr, "note": self.note,
        }


def plan_pilots(config: ExperimentConfig, directory: Path) -> list[RunPlan]:
    """The pilot runs of learning-rate tuning: every tuned optimizer entry x grid lr x pilot seed.
    A pilot's config is the experiment's with only that optimizer (at that lr), the pilot length and
    seeds, and no diagnostics; its directory is <experiment directory>/tuning/<label>/lr-<lr>/seed-<s>."""
    directory = Path(directory)
    plans = []
    for spec in config.optimizers:
        if spec.tune is None:
            continue
        train = dataclasses.replace(config.train, steps=spec.tune.steps or config.train.steps,
                                    seeds=spec.tune.seeds)
        for lr in spec.tune.lr:
            optimizer = dataclasses.replace(spec, lr=lr, tune=None)
            pilot_config = dataclasses.replace(config, optimizers=(optimizer,), train=train, diagnostics=())
            plans += [RunPlan(pilot_config, optimizer, seed,
                              str(directory.joinpath(*pilot_parts(spec.label, lr, seed))), pilot=True)
                      for seed in spec.tune.seeds]
    return plans


def pilot_score(pilots: Sequence[RunResult]) -> float:
    """Mean final eval loss of one grid lr's pilots; +inf if any of them did not complete with a
    finite loss (diverged, failed, interrupted) or there are none."""
    losses = [p.final_eval_loss for p in pilots]
    if not pilots or any(p.status != "completed" or loss is None or not math.isfinite(loss)
                         for p, loss in zip(pilots, losses)):
        return math.inf
    return statistics.fmean(losses)


def select_lr(scores: Mapping[float, float]) -> tuple[float, str | None]:
    """The lr with the lowest score (ties: the smaller lr). A NaN score counts as +inf; if every
    score is +inf the smallest lr is chosen, with the note "all pilots diverged"."""
    if not scores:
        raise ValueError("select_lr needs at least one grid value")
    clean = {lr: (math.inf if math.isnan(score) else score) for lr, score in scores.items()}
    best = min(sorted(clean), key=clean.__getitem__)  # min keeps the first (smallest) of equal scores
    if math.isinf(clean[best]):
        return min(clean), "all pilots diverged"
    return best, None


def collect_tuning(config: ExperimentConfig, pilots: list[RunResult], interrupted: bool) -> dict[str, Tuning]:
    """Group the pilot results by optimizer label and choose each lr (none if interrupted)."""
    tuning = {}
    for spec in config.optimizers:
        if spec.tune is None:
            continue
        own = [p for p in pilots if p.label == spec.label]
        record = Tuning(spec.label, spec.tune.lr, spec.tune.steps or config.train.steps, spec.tune.seeds,
                        own, None, "tuning interrupted" if interrupted else None)
        if not interrupted:
            record.chosen_lr, record.note = select_lr(record.scores())
        tuning[spec.label] = record
    return tuning


def apply_tuning(plans: list[RunPlan], tuning: Mapping[str, Tuning]) -> list[RunPlan]:
    """The main runs with each tuned optimizer's chosen lr, in the optimizer spec and in the config
    the run logs, and the tuning table as the run's `tuning` text in TensorBoard."""
    if not plans:
        return plans
    config = plans[0].config
    chosen = lambda spec: (dataclasses.replace(spec, lr=tuning[spec.label].chosen_lr)  # noqa: E731
                           if spec.label in tuning else spec)
    resolved = dataclasses.replace(config, optimizers=tuple(chosen(spec) for spec in config.optimizers))
    texts = {label: (("tuning", tuning_markdown(record)),) for label, record in tuning.items()}
    return [dataclasses.replace(plan, config=resolved, optimizer=chosen(plan.optimizer),
                                texts=plan.texts + texts.get(plan.optimizer.label, ()))
            for plan in plans]


def tuning_markdown(tuning: Tuning) -> str:
    """The grid against the mean pilot final eval loss, the chosen lr marked (TensorBoard text)."""
    seeds = ", ".join(map(str, tuning.seeds))
    lines = [f"Learning rate tuned on pilot runs of {tuning.steps} steps (seeds {seeds}): "
             "the grid value with the lowest mean final eval loss.", ""]
    if tuning.note:
        lines += [f"**{tuning.note}**", ""]
    lines += ["| lr | mean pilot final eval loss | |", "| --- | --- | --- |"]
    for lr, score in sorted(tuning.scores().items()):
        loss = f"{score:.4e}" if math.isfinite(score) else _unfinished(p for p in tuning.pilots if p.lr == lr)
        lines.append(f"| {format_lr(lr)} | {loss} | {'**chosen**' if lr == tuning.chosen_lr else ''} |")
    return "\n".join(lines)


def _unfinished(pilots: Iterable[RunResult]) -> str:
    """Why a grid value has no score: "diverged at step 1316", "failed", ..."""
    return ", ".join(f"diverged at step {p.diverged_at}" if p.status == "diverged" else p.status
                     for p in pilots if p.status != "completed") or "not run"


def describe_tuning(tuning: Tuning) -> str:
    """One line for the terminal: "tuned <label>: lr 0.05 (best of 10; pilot loss 1.2e-02)"."""
    if tuning.chosen_lr is None:
        return f"tuning {tuning.label}: interrupted"
    score = tuning.scores()[tuning.chosen_lr]
    detail = f"pilot loss {score:.1e}" if math.isfinite(score) else tuning.note
    for status in ("diverged", "failed"):
        count = sum(p.status == status for p in tuning.pilots)
        if count and math.isfinite(score):
            detail += f"; {count} of {len(tuning.pilots)} pilots {status}"
    return f"tuned {tuning.label}: lr {format_lr(tuning.chosen_lr)} (best of {len(tuning.grid)}; {detail})"
