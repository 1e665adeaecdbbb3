"""A run's parts, built once from its plan: what the training loop reads by attribute."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from testbed.engine.build import build_diagnostic, build_optimizer, needs_closure, run_model, run_task
from testbed.engine.diagnostic_runner import DiagnosticRunner
from testbed.engine.probe import Probe
from testbed.engine.run import RunContext, RunPlan
from testbed.engine.seeds import generator, stream_seed
from testbed.engine.tblog import RunLogger
from testbed.files.layout import ERROR_FILE
from testbed.plugins.registry import Registry
from testbed.tasks import Batch, Task


@dataclass
class RunState:
    """Everything one run trains with. The loop reads it by attribute; lifecycle hooks receive its
    ``context``, which shares its model, optimizer and logger."""

    plan: RunPlan
    task: Task
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    closure_needed: bool  # the optimizer's step re-evaluates the loss through a closure
    data_stream: torch.Generator  # the training prompts: stream "data" of the run's seed
    eval_batch: Batch  # fixed for the whole run, drawn from eval.seed
    diagnostics: DiagnosticRunner
    logger: RunLogger
    attempt_started: float  # time.perf_counter() when this attempt began (checkpoints add its seconds)
    resumed_from: int | None = None  # the checkpoint step this attempt goes on from
    context: RunContext = field(init=False)

    def __post_init__(self) -> None:
        self.context = RunContext(self.plan, self.model, self.optimizer, self.logger,
                                  resumed_from=self.resumed_from)


def build_run(plan: RunPlan, registry: Registry, logger: RunLogger, attempt_started: float,
              resumed_from: int | None = None) -> RunState:
    """Build the run's task, model (stream "init"), optimizer, fixed eval batch, diagnostics and
    training stream. A resumed run restores its checkpoint into them afterwards."""
    config = plan.config
    task = run_task(config, registry)
    model = run_model(config, task, generator(stream_seed(plan.seed, "init")))
    optimizer = build_optimizer(plan.optimizer, registry, model.parameters())
    eval_batch = task.sample(config.eval.batch_size, generator(config.eval.seed))
    diagnostics = [(spec.name, build_diagnostic(spec, registry)) for spec in config.diagnostics
                   if spec.applies_to(plan.optimizer.label, plan.seed)]
    probe = Probe.of(model, task, eval_batch, config.train.batch_size, plan.seed)
    return RunState(plan, task, model, optimizer,
                    closure_needed=needs_closure(plan.optimizer, registry),
                    data_stream=generator(stream_seed(plan.seed, "data")),
                    eval_batch=eval_batch,
                    diagnostics=DiagnosticRunner(diagnostics, probe, logger, Path(plan.run_dir) / ERROR_FILE),
                    logger=logger, attempt_started=attempt_started, resumed_from=resumed_from)
