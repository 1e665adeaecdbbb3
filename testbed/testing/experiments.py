"""Tiny experiments run in this process: a config small enough for a unit test (``tiny_config``), run
with the plugins under test (``run_tiny``), and its results in a public shape (``TinyRun``)."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from testbed import hookimpl
from testbed.engine.run import RunResult
from testbed.experiment.config import parse_config
from testbed.experiment.executors.local import LocalExecutor
from testbed.experiment.runner import run_experiment
from testbed.files.layout import RESULTS_FILE
from testbed.testing.plugins import PluginSet, load_plugins

# A valid experiment that runs in a fraction of a second per run, on the built-in task and optimizer
# every install has: 2 layers, d = 3, n = 6, 20 steps of 64 prompts, one seed.
TINY: dict[str, Any] = {
    "name": "tiny",
    "task": {"name": "gaussian", "d": 3, "n": 6},
    "model": {"layers": 2},
    "train": {"steps": 20, "batch_size": 64, "seeds": [0]},
    "eval": {"every": 10, "batch_size": 64},
    "workers": 1,
    "optimizers": [{"name": "sgd", "lr": 0.01}],
}
DEFAULT_LR = 0.01  # of an optimizer given by name alone


def tiny_config(optimizers: Sequence[str | Mapping[str, Any]] | None = None,
                task: str | Mapping[str, Any] | None = None,
                diagnostics: Sequence[str | Mapping[str, Any]] | None = None,
                **sections: Any) -> dict[str, Any]:
    """A fresh copy of ``TINY`` (a raw config, as a YAML file would give it), with changes.

    ``optimizers``: entries (``{"name": ..., "lr": ..., "options": ...}``) or bare names (lr 0.01),
    replacing the default list; ``task``: a name or a mapping merged into the default task (which
    keeps d = 3, n = 6 unless it sets them); ``diagnostics``: the config's diagnostics list;
    ``sections``: any other top-level key, a mapping merged into the default section (e.g.
    ``train={"steps": 5}``) or a value that replaces it (``name="mine"``)."""
    config = copy.deepcopy(TINY)
    if optimizers is not None:
        config["optimizers"] = [{"name": o, "lr": DEFAULT_LR} if isinstance(o, str) else dict(o) for o in optimizers]
    if task is not None:
        config["task"] = {**config["task"], **({"name": task, "options": {}} if isinstance(task, str) else task)}
    if diagnostics is not None:
        config["diagnostics"] = list(diagnostics)
    for key, value in sections.items():
        merge = isinstance(value, Mapping) and isinstance(config.get(key), dict)
        config[key] = {**config[key], **value} if merge else copy.deepcopy(value)
    return config


@dataclass(frozen=True)
class RunRecord:
    """One run of a tiny experiment (one optimizer label and seed).

    ``status``: completed, diverged, failed or interrupted. ``eval_losses`` pair with ``eval_steps``
    (a non-finite loss is NaN); ``train_losses`` has the training minibatch loss of every step, in
    order (from ``on_step_end``). ``diagnostics`` maps ``"name/tag"`` to ``[(step, value), ...]`` of
    each scalar a diagnostic logged; ``diagnostic_errors`` says which diagnostic raised or returned a
    non-finite value, and why. ``run_dir`` is the run's TensorBoard directory.
    """

    label: str
    optimizer: str
    seed: int
    status: str
    steps_done: int
    eval_steps: list[int]
    eval_losses: list[float]
    final_eval_loss: float | None
    best_eval_loss: float | None
    train_losses: list[float]
    diagnostics: dict[str, list[tuple[int, float]]]
    diagnostic_errors: list[str]
    error: str | None
    run_dir: Path
    diverged_at: int | None = None
    gradient_evaluations: int = 0

    @classmethod
    def of(cls, result: RunResult, train_losses: list[float]) -> "RunRecord":
        """The record of the engine's result of one run and the training losses seen for it."""
        diagnostics = {tag: [(int(step), _number(value)) for step, value in points]
                       for tag, points in result.diagnostics.items()}
        return cls(result.label, result.optimizer, result.seed, result.status, result.steps_done,
                   list(result.eval_steps), [_number(v) for v in result.eval_losses], result.final_eval_loss,
                   result.best_eval_loss, list(train_losses), diagnostics, list(result.diagnostic_errors),
                   result.error, Path(result.run_dir), result.diverged_at, result.gradient_evaluations)

    def scalars(self, diagnostic: str, tag: str) -> list[float]:
        """The values of the scalar ``diag/<diagnostic>/<tag>``, in step order."""
        return [value for _, value in self.diagnostics.get(f"{diagnostic}/{tag}", [])]


@dataclass(frozen=True)
class TinyRun:
    """What ``run_tiny`` returns: the experiment's status (complete, interrupted or failed), its log
    directory (``results.json``, ``config.yaml`` and one TensorBoard directory per run below it), and
    one ``RunRecord`` per run."""

    status: str
    directory: Path
    runs: list[RunRecord] = field(default_factory=list)
    error: str | None = None

    def run(self, label: str | None = None, seed: int | None = None) -> RunRecord:
        """The one run with this optimizer label and seed (either may be left out when it is the
        only one); a LookupError naming the runs there are otherwise."""
        found = [r for r in self.runs if label in (None, r.label) and seed in (None, r.seed)]
        if len(found) != 1:
            have = ", ".join(f"{r.label}/seed-{r.seed}" for r in self.runs) or "none"
            raise LookupError(f"{len(found)} runs match label={label!r} seed={seed!r}; runs: {have}")
        return found[0]

    def results(self) -> dict[str, Any]:
        """The experiment's ``results.json``, as the command line writes it."""
        return json.loads((self.directory / RESULTS_FILE).read_text())


class _TrainLosses:
    """A plugin that keeps the training loss of every step, per (label, seed)."""

    def __init__(self) -> None:
        self.losses: dict[tuple[str, int], list[float]] = {}

    @hookimpl
    def on_run_start(self, run) -> None:
        self.losses[(run.label, run.seed)] = []

    @hookimpl
    def on_step_end(self, run, step, metrics) -> None:
        self.losses.setdefault((run.label, run.seed), []).append(float(metrics["loss"]))


def run_tiny(config: Mapping[str, Any], logdir: str | Path, plugins: PluginSet | None = None) -> TinyRun:
    """Validate ``config`` (a raw config such as ``tiny_config()`` gives) against ``plugins`` (default:
    the built-in plugins alone) and run it in this process, one run after the other, under ``logdir``;
    every run is run afresh (``--force``). A bad config raises the ConfigError ``testbed run`` would
    print."""
    plugins = plugins or load_plugins()
    host = plugins.host
    parsed = parse_config(config, host.registry)
    recorder = _TrainLosses()
    host.manager.register(recorder, name="testbed.testing:train-losses")
    try:
        outcome = run_experiment(parsed, host, logdir, force=True, executor=LocalExecutor(1, in_process=True))
    finally:
        host.manager.unregister(recorder)
    records = [RunRecord.of(result, recorder.losses.get((result.label, result.seed), []))
               for result in outcome.results]
    return TinyRun(outcome.status, outcome.directory, records, outcome.error)


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)
