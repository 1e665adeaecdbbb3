"""The typed, validated description of an experiment: its task, optimizers, diagnostics, training
and evaluation settings. ``experiment.config`` builds it from YAML; the engine reads it. Each section's
defaults are its schema's (one source: the dataclass fields take them from the schema)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from testbed.engine.limits import MAX_SEED, MAX_STEPS
from testbed.files.json_io import plain_data
from testbed.model.config import ModelConfig
from testbed.options import Option
from testbed.tasks import STREAMS


DTYPES = ("float32", "float64")

TRAIN_SCHEMA = {
    "steps": Option(10_000, "optimizer steps per run", min=1, max=MAX_STEPS),
    "batch_size": Option(1000, "fresh prompts per step", min=1),
    "clip_grad_norm": Option(1.0, "global L2 gradient-norm clip before every step; null = off",
                             min=0.0, min_exclusive=True, nullable=True),
    "seeds": Option(None, "list of seeds, or a count k meaning seeds 0..k-1", type=object, nullable=True),
    "log_every": Option(1, "log train/ and optim/ scalars every k steps", min=1),
    "checkpoint_every": Option(1000, "save a resumable checkpoint every k steps (and at an interruption); "
                               "null = only at an interruption", min=1, nullable=True),
    "dtype": Option("float32", "floating-point type of the model and the prompts (the paper's code: "
                    "float32; float64 tells float32 overflow from a real divergence)", choices=DTYPES),
    "stream": Option("philox", "how prompts are drawn from a run's generators: philox (counter-based, "
                     "compiled) or torch (torch's samplers: the stream of runs before issue 15)", choices=STREAMS),
}

EVAL_SCHEMA = {
    "every": Option(50, "evaluate on the fixed eval batch every k steps (and at the last step)", min=1),
    "batch_size": Option(1000, "prompts in the fixed evaluation batch", min=1),
    "seed": Option(99, "seed of the fixed evaluation batch", min=0, max=MAX_SEED),
}


@dataclass(frozen=True)
class TaskSpec:
    """The task: a registered task's name, the covariate dimension d, the context length n and the
    task's validated options."""

    name: str
    d: int
    n: int
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TuneSpec:
    """Learning-rate tuning of one optimizer entry: each grid value is tried on short pilot runs and
    the best by mean final eval loss is used for the experiment's runs (see testbed.experiment.runner)."""

    lr: tuple[float, ...]
    steps: int | None = None  # pilot length; None: train.steps
    seeds: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer entry: a registered optimizer's name, its label (its runs' directory and its name
    in tables), learning rate, validated options and optional tuning."""

    name: str
    label: str
    lr: float  # with a tune section: a placeholder (the first grid value unless given) until tuned
    options: Mapping[str, Any] = field(default_factory=dict)
    tune: TuneSpec | None = None


@dataclass(frozen=True)
class DiagnosticSpec:
    """One diagnostic entry: a registered diagnostic's name, its validated options, and the seeds and
    optimizer labels it measures (None: all)."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    seeds: tuple[int, ...] | None = None  # None: every seed
    optimizers: tuple[str, ...] | None = None  # optimizer labels; None: every optimizer

    def applies_to(self, label: str, seed: int) -> bool:
        """Whether the run of optimizer ``label`` and ``seed`` measures this diagnostic."""
        return (self.seeds is None or seed in self.seeds) and (self.optimizers is None or label in self.optimizers)


@dataclass(frozen=True)
class TrainConfig:
    """How every run trains (TRAIN_SCHEMA says what each field means)."""

    steps: int = TRAIN_SCHEMA["steps"].default
    batch_size: int = TRAIN_SCHEMA["batch_size"].default
    clip_grad_norm: float | None = TRAIN_SCHEMA["clip_grad_norm"].default
    seeds: tuple[int, ...] = (0,)  # the schema's null
    log_every: int = TRAIN_SCHEMA["log_every"].default
    checkpoint_every: int | None = TRAIN_SCHEMA["checkpoint_every"].default
    dtype: str = TRAIN_SCHEMA["dtype"].default
    stream: str = TRAIN_SCHEMA["stream"].default


@dataclass(frozen=True)
class EvalConfig:
    """How every run is evaluated: on one fixed batch (EVAL_SCHEMA says what each field means)."""

    every: int = EVAL_SCHEMA["every"].default
    batch_size: int = EVAL_SCHEMA["batch_size"].default
    seed: int = EVAL_SCHEMA["seed"].default


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment, validated: what ``testbed run`` runs and every run directory saves."""

    name: str
    task: TaskSpec
    optimizers: tuple[OptimizerSpec, ...]
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    diagnostics: tuple[DiagnosticSpec, ...] = ()
    workers: int | None = None  # None: one worker process per core

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain YAML-able data (saved with every run)."""
        data = plain_data(dataclasses.asdict(self))
        for optimizer in data["optimizers"]:
            if optimizer["tune"] is None:  # only tuned entries show a tune section
                del optimizer["tune"]
        return data
