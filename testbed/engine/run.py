"""What one run is: its plan (picklable, sent to a worker) and the context plugins' hooks receive."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from testbed.engine.specs import ExperimentConfig, OptimizerSpec
from testbed.engine.tblog import RunLogger
from testbed.files.layout import pilot_parts, run_parts

STATUSES = ("completed", "diverged", "failed", "interrupted")


@dataclass(frozen=True)
class RunPlan:
    """One (optimizer entry x seed) of an experiment, or one pilot run of learning-rate tuning."""

    config: ExperimentConfig
    optimizer: OptimizerSpec
    seed: int
    run_dir: str
    pilot: bool = False  # a tuning pilot: config and optimizer are the pilot's (lr = one grid value)
    texts: tuple[tuple[str, str], ...] = ()  # extra TensorBoard text entries (tag, markdown) at step 0
    run_id: str = ""  # set by the driver (cache.run_id); "" = no identity, so no checkpoints
    # set with run_id: (plugin, source hash) of the working-tree plugins that went into it
    plugin_code: tuple[tuple[str, str], ...] = ()
    point: tuple[tuple[str, Any], ...] = ()  # the sweep point's (key, value)s that apply to this run
    group: str = ""  # the sweep point's directory name ("" outside a sweep)

    def swept(self) -> dict[str, Any]:
        """The sweep point's settings that apply to this run, e.g. {"task.n": 20}."""
        return dict(self.point)

    @property
    def key(self) -> str:
        """Unique within a sweep; mirrors the run directory below the sweep's (the experiment's)."""
        if self.pilot:
            own = pilot_parts(self.optimizer.label, self.optimizer.lr, self.seed)
        else:
            own = run_parts(self.optimizer.label, self.seed)
        return "/".join((self.group, *own) if self.group else own)


@dataclass
class RunContext:
    """Handed to lifecycle hooks: the live objects of a run and a way to log into its directory.
    ``extra`` is free space for plugins (one hook leaves something for another); the engine keeps
    nothing in it."""

    plan: RunPlan
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    logger: RunLogger
    extra: dict[str, Any] = field(default_factory=dict)  # free space for plugins
    resumed_from: int | None = None  # the checkpoint step this attempt goes on from; None: from step 0

    @property
    def label(self) -> str:
        """The run's optimizer label (its directory and its name in tables)."""
        return self.plan.optimizer.label

    @property
    def seed(self) -> int:
        """The run's seed."""
        return self.plan.seed

    @property
    def config(self) -> ExperimentConfig:
        """The experiment's validated config (for a tuning pilot: the pilot's)."""
        return self.plan.config

    def log_scalar(self, tag: str, value: float, step: int) -> None:
        """Log a scalar into the run's TensorBoard directory."""
        self.logger.scalar(tag, value, step)


@dataclass
class RunResult:
    """The machine-readable outcome of one run (also saved as the run's summary.json)."""

    key: str
    label: str
    optimizer: str
    seed: int
    status: str
    steps_done: int
    run_dir: str
    seconds: float
    lr: float | None = None  # the learning rate the run used (after tuning, the chosen one)
    final_eval_loss: float | None = None
    best_eval_loss: float | None = None
    diverged_at: int | None = None
    diverged_on: str | None = None  # what was non-finite: "loss", "gradient" or "eval loss"
    # steps whose gradient norm overflowed float32 while every entry was finite: clipping scaled the
    # gradient to zero (max_norm / inf) and training went on, as torch's clip_grad_norm_ does
    zeroed_steps: list[int] = field(default_factory=list)
    error: str | None = None
    # problems that leave the numbers right but something around them wrong: a TensorBoard event file
    # deleted or cut short while the run wrote it (its curves miss points), or a checkpoint not written
    # because a plugin's state would not load safely (a stopped run would start over); the status
    # stays what training gave
    warnings: list[str] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_losses: list[float] = field(default_factory=list)
    diagnostics: dict[str, list[list[float]]] = field(default_factory=dict)  # "name/tag": [[step, value]]
    diagnostic_errors: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None
    # the source hashes in its run id (plugins from a working tree): a rerun can tell an edited plugin
    plugin_code: dict[str, str] = field(default_factory=dict)
    resumed_from: list[int] = field(default_factory=list)  # the checkpoint step of each resume
    # how many times the loss and its gradient were computed: one per step, or the closure calls of
    # a closure optimizer (what a step costs); 0 in summaries written before it was counted
    gradient_evaluations: int = 0
    # diagnostic name -> the seconds spent measuring it (its share of ``seconds``); {} before it was kept
    diagnostic_seconds: dict[str, float] = field(default_factory=dict)
