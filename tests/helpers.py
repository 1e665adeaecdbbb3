"""Helpers shared by the core's tests (tests/) and the standard plugins' tests
(plugins/testbed_std/tests/), importable from both through pyproject's `pythonpath`: a recording
plugin, a standard optimizer built as the engine builds it, a tiny Probe, tiny experiments and their
read-back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import torch
from tensorboard.backend.event_processing.event_accumulator import (
    STORE_EVERYTHING_SIZE_GUIDANCE,
    EventAccumulator,
)

from testbed import hookimpl
from testbed.engine.build import build_optimizer
from testbed.engine.probe import Probe
from testbed.engine.specs import OptimizerSpec
from testbed.experiment.config import parse_config
from testbed.experiment.runner import ExperimentOutcome, run_experiment
from testbed.files.layout import RESULTS_FILE
from testbed.model.config import ModelConfig
from testbed.model.transformer import LinearTransformer, mse_loss
from testbed.options import validate_options
from testbed.plugins import Plugins, load_plugins
from testbed.plugins.registry import Registry
from testbed.tasks import Batch


class StepLosses:
    """A plugin recording each run's training-loss sequence from on_step_end."""

    def __init__(self) -> None:
        self.losses: dict[str, list[float]] = {}

    @hookimpl
    def on_step_end(self, run, step, metrics):
        self.losses.setdefault(f"{run.label}/seed-{run.seed}", []).append(metrics["loss"])


def make_optimizer(registry: Registry, name: str, lr: float, options: dict[str, Any],
                   params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """A registered optimizer built as the engine builds it: options validated, then its factory."""
    entry = registry.get("optimizer", name, "test")
    return build_optimizer(OptimizerSpec(name, name, lr, validate_options(entry.options, options, "test")),
                           registry, params)


# ------------------------------------------------------------------ diagnostics: a tiny Probe, tiny experiments
def tiny_probe(registry: Registry, parameterization: str = "block_sparse", d: int = 2, n: int = 4, layers: int = 2,
               batch: int = 16, init_std: float = 0.3, seed: int = 0) -> Probe:
    """A Probe of a tiny float64 model on a float64 eval batch of the gaussian task."""
    task = registry.get("task", "gaussian", "task").factory(d=d, n=n)
    config = ModelConfig(layers=layers, parameterization=parameterization, init_std=init_std)
    model = LinearTransformer(config, d, n, torch.Generator().manual_seed(seed)).double()
    sample = task.sample(batch, torch.Generator().manual_seed(seed + 1000))
    eval_batch = Batch(sample.x.double(), sample.y.double())
    return Probe.of(model, task, eval_batch, train_batch_size=batch, seed=seed)


def autograd_loop_hessian(probe: Probe) -> torch.Tensor:
    """Row i = d(grad_i)/d(theta) by torch.autograd.grad(create_graph=True) on the model's own
    parameters through its plain-autograd forward (no torch.func, no flattening by the Probe)."""
    model = probe._twice
    params = [p for p in model.parameters()]
    with torch.no_grad():
        for p, block in zip(params, probe.blocks):
            p.copy_(probe.params[block.start:block.stop].view(block.shape))
    batch = probe.eval_batch
    loss = mse_loss(model.autograd_forward(batch.x, batch.y), batch.target)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    rows = []
    for i in range(flat.numel()):
        row = torch.autograd.grad(flat[i], params, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(r if r is not None else torch.zeros_like(p)).reshape(-1)
                               for r, p in zip(row, params)]))
    return torch.stack(rows)


def load_events(run_dir: str | Path) -> EventAccumulator:
    """Every event of one TensorBoard run directory (the default size guidance keeps one histogram)."""
    accumulator = EventAccumulator(str(run_dir), size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    accumulator.Reload()
    return accumulator


def run(raw: dict[str, Any], logdir: Path, plugins: Plugins | None = None) -> ExperimentOutcome:
    """Parse ``raw`` and run it with one worker and the given plugins (else the installed ones)."""
    plugins = plugins or load_plugins()
    return run_experiment(parse_config(raw, plugins.registry), plugins, logdir, workers=1)


def raw_config(optimizers=None, diagnostics=None, steps: int = 30, seeds=(0,), clip: float | None = 1.0,
               name: str = "exp", d: int = 3, n: int = 10) -> dict[str, Any]:
    """A small gaussian experiment (sgd and adam unless given) with the given diagnostics."""
    raw = {
        "name": name,
        "task": {"name": "gaussian", "d": d, "n": n},
        "model": {"layers": 2},
        "optimizers": optimizers or [{"name": "sgd", "lr": 0.01}, {"name": "adam", "lr": 0.01}],
        "train": {"steps": steps, "batch_size": 64, "seeds": list(seeds), "clip_grad_norm": clip},
        "eval": {"every": 10, "batch_size": 128},
    }
    if diagnostics is not None:
        raw["diagnostics"] = diagnostics
    return raw


def read_results(outcome: ExperimentOutcome) -> dict[str, Any]:
    """The experiment's results.json."""
    return json.loads((outcome.directory / RESULTS_FILE).read_text())
