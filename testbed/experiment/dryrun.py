"""`testbed run --dry-run`: the expanded plan of a sweep without running it.

For every run: done (finished under the same id: not run again), resumable (a checkpoint under the
same id: goes on from its step) or to run. The main runs of a tuned optimizer entry get their id
only once its learning rate is chosen: when all its pilots are done the choice is made from them,
otherwise they wait for tuning. The time estimate times a few training steps of each distinct
shape in this process (one thread) and spreads the remaining steps over the executor's capacity;
diagnostics are not included. `testbed reproduce --dry-run` prints the cost of each experiment as a
table (cost_table).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from testbed.engine import checkpoint
from testbed.experiment.cache import finished_result, run_id
from testbed.engine.specs import ExperimentConfig, OptimizerSpec
from testbed.engine.build import build_optimizer, needs_closure
from testbed.engine.seeds import generator
from testbed.engine.build import run_model, run_task
from testbed.engine.loop import training_step
from testbed.experiment.runner import plan_runs
from testbed.plugins import Plugins
from testbed.engine.run import RunPlan, RunResult
from testbed.experiment.sweep import Sweep
from testbed.experiment.tuning import apply_tuning, collect_tuning, plan_pilots
from testbed.text import format_lr

TIMED_STEPS = 5  # at least, and for at least TIMED_SECONDS, after WARM_UP_STEPS
TIMED_SECONDS = 0.25
WARM_UP_STEPS = 3
MAX_LISTED = 40  # runs listed one per line; a large sweep's plan ends with a count of the rest


@dataclass
class RunState:
    """One run of a dry-run plan and what `testbed run` would do with it."""
    plan: RunPlan
    state: str  # done | resume | new | waits (for tuning)
    from_step: int = 0
    result: RunResult | None = None  # the saved result of a done run

    @property
    def steps_left(self) -> int:
        """Training steps this run still has to take (none when done)."""
        return 0 if self.state == "done" else self.plan.config.train.steps - self.from_step


def plan_states(sweep: Sweep, plugins: Plugins, logdir: Path, force: bool = False) -> list[RunState]:
    """Every run of the sweep, pilots first, each with what a real run would do with it
    (done, resume, new, or waits for its learning rate to be tuned)."""
    states = []
    for point in sweep.points:
        directory = Path(logdir) / point.directory
        pilots = [_state(replace(p, run_id=run_id(p, plugins)), force) for p in plan_pilots(point.config, directory)]
        states += pilots
        mains = plan_runs(point.config, directory)
        if not pilots:
            states += [_state(replace(p, run_id=run_id(p, plugins)), force) for p in mains]
            continue
        tuning = collect_tuning(point.config, [s.result for s in pilots if s.state == "done"], False)
        chosen = {label: t for label, t in tuning.items() if all(
            s.state == "done" for s in pilots if s.plan.optimizer.label == label)}
        for plan in apply_tuning(mains, chosen):
            if plan.optimizer.tune is not None and plan.optimizer.label not in chosen:
                states.append(RunState(plan, "waits"))
            else:
                states.append(_state(replace(plan, run_id=run_id(plan, plugins)), force))
    return states


def _state(plan: RunPlan, force: bool) -> RunState:
    if force:
        return RunState(plan, "new")
    result = finished_result(plan)
    if result is not None:
        return RunState(plan, "done", result=result)
    step = checkpoint.has_checkpoint(Path(plan.run_dir), plan.run_id)
    return RunState(plan, "new") if step is None else RunState(plan, "resume", step)


def seconds_per_step(config: ExperimentConfig, spec: OptimizerSpec, plugins: Plugins) -> float:
    """Time a few training steps of this shape (one thread, after WARM_UP_STEPS warm-up steps)."""
    task = run_task(config, plugins.registry)
    model = run_model(config, task, generator(0))
    optimizer = build_optimizer(spec, plugins.registry, model.parameters())
    stream, closure = generator(1), needs_closure(spec, plugins.registry)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        def step() -> None:
            training_step(model, optimizer, task.sample(config.train.batch_size, stream), config.train.clip_grad_norm,
                          closure)

        for _ in range(WARM_UP_STEPS):  # the first steps load kernels and fill caches: not the step's cost
            step()
        started, steps = time.perf_counter(), 0
        while steps < TIMED_STEPS or time.perf_counter() - started < TIMED_SECONDS:
            step()
            steps += 1
        return (time.perf_counter() - started) / steps
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class TrainingCost:
    """What a plan's remaining training steps cost on one core: which runs of how many steps, the
    measured seconds of a step (averaged over the steps left) and their core-seconds."""
    runs: str  # "20 x 10,000 (pilots) + 12 x 10,000"
    steps: int
    core_seconds: float

    @property
    def seconds_per_step(self) -> float:
        """Core-seconds over steps (0 with no step left)."""
        return self.core_seconds / self.steps if self.steps else 0.0


def training_cost(states: list[RunState], plugins: Plugins) -> TrainingCost:
    """The remaining training steps of ``states`` times their cost, timed here per distinct shape."""
    costs: dict[str, float] = {}
    total, steps, groups = 0.0, 0, {}
    for s in states:
        if s.steps_left == 0:
            continue
        config, spec = s.plan.config, s.plan.optimizer
        shape = repr((config.task, config.model, config.train.batch_size, config.train.dtype, spec.name))
        if shape not in costs:
            costs[shape] = seconds_per_step(config, spec, plugins)
        total += s.steps_left * costs[shape]
        steps += s.steps_left
        group = (s.plan.pilot, s.steps_left)
        groups[group] = groups.get(group, 0) + 1
    runs = " + ".join(f"{count} x {length:,}" + (" (pilots)" if pilot else "")
                      for (pilot, length), count in sorted(groups.items(), key=lambda item: not item[0][0]))
    return TrainingCost(runs or "-", steps, total)


def estimate_seconds(states: list[RunState], plugins: Plugins, capacity: int) -> float:
    """Remaining training steps times their measured cost, over ``capacity`` parallel runs."""
    return training_cost(states, plugins).core_seconds / max(capacity, 1)


def cost_table(costs: list[tuple[str, TrainingCost]], capacity: int) -> list[str]:
    """The training cost of each experiment (runs x steps, ms a step, core-seconds) and their total
    over ``capacity`` parallel workers, as aligned lines."""
    header = ("experiment", "runs x steps left", "ms/step", "core-s")
    rows = [(name, c.runs, f"{c.seconds_per_step * 1e3:.2f}", f"{c.core_seconds:,.0f}") for name, c in costs]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]
    total = sum(c.core_seconds for _, c in costs)
    lines.append(f"total: {total:,.0f} core-s of training steps, about {duration(total / max(capacity, 1))} "
                 f"on {capacity} workers")
    return lines


def describe(sweep: Sweep, states: list[RunState], seconds: float | None, capacity: int) -> list[str]:
    """The dry run's report: counts, the runs one per line (up to MAX_LISTED), the time estimate."""
    pilots = [s for s in states if s.plan.pilot]
    mains = [s for s in states if not s.plan.pilot]
    count = lambda group, state: sum(s.state == state for s in group)  # noqa: E731
    lines = []
    if sweep.swept:
        lines.append(f"sweep {sweep.name}: {len(sweep.points)} points over {', '.join(sweep.keys)}")
    for name, group in (("learning-rate pilot runs", pilots), ("runs", mains)):
        if not group:
            continue
        parts = [f"{count(group, 'done')} done", f"{count(group, 'resume')} resume from a checkpoint",
                 f"{count(group, 'new')} to run"]
        if count(group, "waits"):
            parts.append(f"{count(group, 'waits')} wait for learning-rate tuning")
        lines.append(f"{len(group)} {name}: {', '.join(parts)}")
    for s in states[:MAX_LISTED]:
        detail = {"done": "done", "resume": f"resume from step {s.from_step}", "new": "to run",
                  "waits": "waits for tuning"}[s.state]
        lr = "tuned" if s.state == "waits" else f"lr {format_lr(s.plan.optimizer.lr)}"
        lines.append(f"  {s.plan.run_dir}  [{lr}, {s.plan.config.train.steps} steps]  {detail}")
    if len(states) > MAX_LISTED:
        lines.append(f"  ... and {len(states) - MAX_LISTED} more runs")
    if seconds is not None:
        lines.append(f"estimated time: {duration(seconds)} on {capacity} parallel workers "
                     "(training steps only, timed here; diagnostics add to it)")
    return lines


def summary_line(states: list[RunState]) -> str:
    """"12 runs: 4 done, 1 resume, 7 to run" over pilots and main runs together."""
    count = lambda state: sum(s.state == state for s in states)  # noqa: E731
    parts = [f"{count('done')} done", f"{count('resume')} resume", f"{count('new')} to run"]
    if count("waits"):
        parts.append(f"{count('waits')} wait for tuning")
    return f"{len(states)} runs: {', '.join(parts)}"


def duration(seconds: float) -> str:
    """Seconds as a rough human duration (s, min or h)."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
