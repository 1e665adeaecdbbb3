"""One training run, top to bottom: build, train on fresh prompts, evaluate, log, summarize.

Random streams (common random numbers, as in the paper): for a given seed every optimizer gets the
same initial weights (stream "init") and the same training prompts (stream "data"); the evaluation
batch is drawn once from its own seed (default 99). Nothing here touches torch's global RNG.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from testbed.diagnostics import Plot
from testbed.engine import checkpoint, fast_step
from testbed.engine.provenance import versions
from testbed.errors import StorageError
from testbed.model.transformer import mse_loss
from testbed.plugins import Plugins
from testbed.plugins.registry import Registry
from testbed.engine.run import RunContext, RunPlan, RunResult
from testbed.engine.state import RunState, build_run
from testbed.tasks import Batch
from testbed.engine.tblog import RunLogger
from testbed.files.json_io import write_json
from testbed.files.layout import ERROR_FILE, SUMMARY_FILE

Report = Callable[[dict[str, Any]], None]


def train(plan: RunPlan, plugins: Plugins, should_stop: Callable[[], bool] = lambda: False,
          report: Report = lambda event: None) -> RunResult:
    """Execute one run and return its result; never raises for a diverged or failing run. A run
    with an id checkpoints every ``train.checkpoint_every`` steps and when stopped, and goes on from
    its checkpoint when its directory has one for the same id. A run that cannot write its files
    (disk full) fails with the StorageError's message (see ``storage_failure``), keeping its last
    good checkpoint."""
    spec = plan.optimizer
    run_dir = Path(plan.run_dir)
    result = RunResult(plan.key, spec.label, spec.name, plan.seed, "completed", 0, plan.run_dir, 0.0,
                       lr=spec.lr, versions=versions(plugins), run_id=plan.run_id or None,
                       plugin_code=dict(plan.plugin_code))
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = checkpoint.load(run_dir, plan.run_id) if plan.run_id else None
    if resume is not None:
        checkpoint.rewind_event_files(run_dir, resume.event_files)
    else:  # an earlier attempt's tracebacks (error.txt) are not this attempt's
        (run_dir / ERROR_FILE).unlink(missing_ok=True)
    logger: RunLogger | None = None
    run: RunState | None = None
    started = time.perf_counter()
    report({"event": "start", "key": plan.key, "steps": plan.config.train.steps,
            "resumed_from": None if resume is None else resume.step})
    try:
        logger = RunLogger(plan.run_dir, earlier_files=None if resume is None else resume.event_files)
        run = _start(plan, plugins, logger, resume, result, started)
        plugins.manager.hook.on_run_start(run=run.context)
        _loop(run, plugins, result, should_stop, report)
    except KeyboardInterrupt:
        result.status = "interrupted"
    except Exception as exc:  # a plugin's bug must not take the experiment down
        _record_failure(result, run_dir, f"{type(exc).__name__}: {exc}")
    finally:
        result.seconds += time.perf_counter() - started
        try:
            if run is not None:  # on_run_end pairs with on_run_start
                _end_hook(plugins, run.context, result)
        finally:
            if logger is not None:
                _close_logger(result, logger, run_dir)
            _save_summary(result, run_dir)
            report({"event": "end", "key": plan.key, "status": result.status})
    return result


def storage_failure(result: RunResult) -> str | None:
    """The message of a run that failed because its files could not be written, else None."""
    error = result.error or ""
    if result.status != "failed" or not error.startswith(StorageError.__name__):
        return None
    return error.split(": ", 1)[-1]  # "StorageError: <message>", "StorageError in on_run_end: <message>"


def _close_logger(result: RunResult, logger: RunLogger, run_dir: Path) -> None:
    """The run's last TensorBoard records (after on_run_end: they hold the final status), then its
    event file closed. A write failing here fails the run, unless it failed before (a writer that
    failed once fails again at every call)."""
    try:
        try:
            _finish(result, logger)
        finally:
            logger.close()
    except StorageError as exc:
        if result.status != "failed":
            _record_failure(result, run_dir, f"{type(exc).__name__}: {exc}")
    _add_warnings(result, logger.lost_event_files())


def _save_summary(result: RunResult, run_dir: Path) -> None:
    """summary.json, then a finished run's checkpoint goes (the summary is its cache from now on).
    A summary that cannot be written fails the run, unless it failed before, and keeps the
    checkpoint: the next attempt goes on from it."""
    try:
        write_summary(run_dir, result)
    except StorageError as exc:
        if result.status != "failed":
            result.status, result.error = "failed", f"{type(exc).__name__}: {exc}"
        return
    if result.status in ("completed", "diverged"):
        checkpoint.remove(run_dir)


def write_summary(run_dir: Path, result: RunResult) -> None:
    """The run's summary.json: its result, which the cache reads (``cache.finished_result``)."""
    write_json(run_dir / SUMMARY_FILE, result.__dict__)


def _end_hook(plugins: Plugins, context: RunContext, result: RunResult) -> None:
    """on_run_end; if it raises, the run failed: the summary, the returned result and TensorBoard
    all say so (a run recorded as completed would be taken as done by the next attempt)."""
    try:
        plugins.manager.hook.on_run_end(run=context, status=result.status)
    except Exception as exc:
        if result.status != "failed":  # an earlier failure is the cause worth reporting
            _record_failure(result, Path(context.plan.run_dir), f"{type(exc).__name__} in on_run_end: {exc}")


def _record_failure(result: RunResult, run_dir: Path, error: str) -> None:
    """Mark the run failed with ``error``; the traceback being handled is appended to ERROR_FILE
    (error.txt), after those of diagnostics that failed earlier in the run."""
    result.status, result.error = "failed", error
    with contextlib.suppress(OSError):  # a full disk: the error is in the result all the same
        with open(run_dir / ERROR_FILE, "a") as handle:
            handle.write(traceback.format_exc())


def _start(plan: RunPlan, plugins: Plugins, logger: RunLogger, resume: checkpoint.Checkpoint | None,
           result: RunResult, started: float) -> RunState:
    """Log a new run's metadata (a resumed run logged it before), build the run's parts, and put a
    resumed run back where its checkpoint left it."""
    if resume is None:
        _log_metadata(plan, logger, plugins.registry)
    run = build_run(plan, plugins.registry, logger, started, None if resume is None else resume.step)
    if resume is not None:
        _restore(run, resume, result)
    return run


def _log_metadata(plan: RunPlan, logger: RunLogger, registry: Registry) -> None:
    """What TensorBoard shows of a run besides its curves: its config, hparams, layout and texts."""
    logger.config(plan.config.to_dict())
    logger.hparams(hparams_of(plan))
    logger.layout(measured_plots(plan, registry))
    for tag, markdown in plan.texts:
        logger.text(tag, markdown)


def _restore(run: RunState, resume: checkpoint.Checkpoint, result: RunResult) -> None:
    """Put the run back where its checkpoint left it: weights, optimizer, streams, diagnostics and
    the result so far."""
    run.model.load_state_dict(resume.model)
    run.optimizer.load_state_dict(resume.optimizer)
    run.data_stream.set_state(resume.data_stream)
    run.diagnostics.load_state_dict(resume.diagnostics)
    checkpoint.set_global_random_state(resume.global_random)
    for name, value in resume.result.items():
        setattr(result, name, value)
    result.resumed_from = [*result.resumed_from, resume.step]


def _save_checkpoint(run: RunState, result: RunResult, step: int) -> None:
    """Checkpoint the run at ``step``. Event files found damaged are recorded first (a resumed run
    only knows their sizes at the checkpoint); a checkpoint that would not load safely is not
    written, and that is recorded too."""
    run_dir = Path(run.plan.run_dir)
    run.logger.flush()  # the logger position is the event files' size after this flush
    _add_warnings(result, run.logger.lost_event_files())
    try:
        checkpoint.save(run_dir, checkpoint.Checkpoint(
            run.plan.run_id, step, run.model.state_dict(), run.optimizer.state_dict(),
            run.data_stream.get_state(), checkpoint.global_random_state(), run.diagnostics.state_dict(),
            {**{name: copy.deepcopy(getattr(result, name)) for name in CHECKPOINTED_RESULT_FIELDS},
             # result.seconds holds earlier attempts only; train() adds this one's at the end
             "seconds": result.seconds + time.perf_counter() - run.attempt_started},
            checkpoint.event_file_sizes(run_dir)))
    except checkpoint.UnsafeCheckpoint as exc:
        _add_warnings(result, [f"no checkpoint written: its {exc} (a stopped run starts over)"])


def _add_warnings(result: RunResult, warnings: list[str]) -> None:
    """Record each warning once (a problem found at a checkpoint is usually found again later)."""
    result.warnings += [w for w in warnings if w not in result.warnings]


# What a run has accumulated by a step; the rest of its result is rebuilt by the resumed run.
CHECKPOINTED_RESULT_FIELDS = ("steps_done", "eval_steps", "eval_losses", "diagnostics",
                              "diagnostic_errors", "resumed_from", "zeroed_steps", "warnings",
                              "gradient_evaluations", "diagnostic_seconds")


def _loop(run: RunState, plugins: Plugins, result: RunResult, should_stop: Callable[[], bool],
          report: Report) -> None:
    """The training loop: a fresh batch, one step, logging, evaluation, diagnostics, checkpoints.
    A resumed run goes on from the step after its checkpoint's."""
    config, model, optimizer, logger = run.plan.config, run.model, run.optimizer, run.logger
    task, data_stream, eval_batch, diagnostics = run.task, run.data_stream, run.eval_batch, run.diagnostics
    hook = plugins.manager.hook
    every = config.train.checkpoint_every if run.plan.run_id else None
    first_step = 1 if run.resumed_from is None else run.resumed_from + 1

    def evaluate(step: int) -> float:
        with torch.no_grad():
            loss = mse_loss(model(eval_batch.x, eval_batch.y), eval_batch.target).item()
        logger.scalar("eval/loss", loss, step)
        result.eval_steps.append(step)
        result.eval_losses.append(loss)
        report({"event": "eval", "key": run.plan.key, "step": step, "loss": loss})
        return loss

    def save(step: int) -> None:
        if run.plan.run_id:
            _save_checkpoint(run, result, step)

    if first_step == 1:
        evaluate(0)
        diagnostics.at_point(model, 0, result)
    last_time, last_step = time.perf_counter(), first_step - 1
    try:
        for step in range(first_step, config.train.steps + 1):
            batch = task.sample(config.train.batch_size, data_stream)
            before = diagnostics.before_update(model, step - 1)
            measured = training_step(model, optimizer, batch, config.train.clip_grad_norm, run.closure_needed)
            result.gradient_evaluations += int(measured["gradient_evaluations"])  # a diverging step paid too
            non_finite = _non_finite(measured, optimizer)
            if non_finite:  # recorded as an outcome; the weights stay the last finite ones
                result.status, result.diverged_at, result.diverged_on = "diverged", step, non_finite
                return
            if not math.isfinite(measured["grad_norm"]):
                result.zeroed_steps.append(step)
            result.steps_done = step
            diagnostics.after_update(model, step - 1, before, result)
            diagnostics.at_point(model, step, result)
            if step % config.train.log_every == 0:
                logger.scalar("train/loss", measured["loss"], step)
                logger.scalar("optim/grad_norm", measured["grad_norm"], step)
                logger.scalar("optim/lr", optimizer.param_groups[0]["lr"], step)
            eval_finite = True
            if step % config.eval.every == 0 or step == config.train.steps:
                now = time.perf_counter()
                logger.scalar("perf/steps_per_sec", (step - last_step) / max(now - last_time, 1e-9), step)
                eval_finite = math.isfinite(evaluate(step))
                last_time, last_step = time.perf_counter(), step
            if hook.on_step_end.get_hookimpls():  # pluggy's call costs 3-10 us a step, even calling none
                hook.on_step_end(run=run.context, step=step, metrics=measured)
            if not eval_finite:
                result.status, result.diverged_at, result.diverged_on = "diverged", step, "eval loss"
                return
            if should_stop():
                save(step)
                result.status = "interrupted"
                return
            if every and step % every == 0 and step < config.train.steps:
                save(step)
    finally:
        if result.status != "interrupted":
            diagnostics.finish(model, result.steps_done, result)


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch,
                  clip_grad_norm: float | None, closure_needed: bool = False,
                  forward: Callable[..., torch.Tensor] | None = None, fast: bool = True) -> dict[str, float]:
    """One optimizer step on ``batch``; returns the minibatch loss and the gradient norm before
    clipping (of the first closure call), and how many times the loss and its gradient were computed
    (``gradient_evaluations``: 1, or as many as a closure optimizer asked for). A non-finite loss or
    gradient skips the update (the caller records divergence); a gradient norm that overflows (inf)
    with finite entries does not (see ``_non_finite``). Zeroing, clipping and the update go through
    ``fast_step`` (torch's arithmetic bit for bit without its per-call overhead); ``fast=False`` calls
    torch's own ``zero_grad``, ``clip_grad_norm_`` and ``step``, the reference it is tested against."""
    parameters = _parameters(optimizer)
    measured: dict[str, float] = {"gradient_evaluations": 0}

    def closure() -> torch.Tensor:
        measured["gradient_evaluations"] += 1
        if fast:
            fast_step.zero_grad(optimizer, parameters)
        else:
            optimizer.zero_grad(set_to_none=False)
        if forward is None and hasattr(model, "loss_backward"):
            loss = model.loss_backward(batch.x, batch.y, batch.target)
        else:
            loss = mse_loss((forward or model)(batch.x, batch.y), batch.target)
            loss.backward()
        for p in parameters:  # parameters the loss cannot reach get an exact zero gradient
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        measured.setdefault("loss", loss.item())
        measured.setdefault("grad_norm", _clip(parameters, clip_grad_norm, fast))  # every call clips
        return loss

    if closure_needed:
        optimizer.step(closure)
    else:
        closure()
        if not _non_finite(measured, optimizer):
            if fast:
                fast_step.step(optimizer)
            else:
                optimizer.step()
    return measured


def _clip(parameters: list[torch.Tensor], max_norm: float | None, fast: bool = True) -> float:
    """Global L2 norm of the whole gradient before clipping; clip it to max_norm if set."""
    if max_norm is None:
        if fast:
            return fast_step.grad_norm(parameters)
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in parameters])))
    if fast:
        return fast_step.clip_grad_norm(parameters, max_norm)
    return float(torch.nn.utils.clip_grad_norm_(parameters, max_norm))


def _non_finite(measured: dict[str, float], optimizer: torch.optim.Optimizer) -> str | None:
    """What makes this step diverge: "loss", "gradient", or None. An overflowing gradient norm alone
    does not: in float32 the norm of finite entries can exceed 3.4e38 (deep models meet prompts with
    predictions ~1e11), and torch's clipping then scales every entry by max_norm / inf = 0, so the
    authors' code takes a zero step and goes on. Non-finite entries would become NaN weights."""
    if not math.isfinite(measured["loss"]):
        return "loss"
    if math.isfinite(measured["grad_norm"]):
        return None
    finite = all(bool(torch.isfinite(p.grad).all()) for p in _parameters(optimizer))
    return None if finite else "gradient"


def _parameters(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _finish(result: RunResult, logger: RunLogger) -> None:
    finite = [v for v in result.eval_losses if math.isfinite(v)]
    if result.eval_losses:
        result.final_eval_loss = result.eval_losses[-1]
    if result.status == "diverged":
        result.final_eval_loss = math.nan
    if finite:
        result.best_eval_loss = min(finite)
        logger.scalar("eval/best_loss", result.best_eval_loss, result.eval_steps[-1])
    logger.end_session(result.status)


def measured_plots(plan: RunPlan, registry: Registry) -> dict[str, tuple[Plot, ...]]:
    """The plots declared by each diagnostic this run measures (name -> plots): its TensorBoard charts."""
    return {spec.name: registry.get("diagnostic", spec.name, "diagnostics.name").metadata["plots"]
            for spec in plan.config.diagnostics if spec.applies_to(plan.optimizer.label, plan.seed)}


def hparams_of(plan: RunPlan) -> dict[str, Any]:
    """The run's row in TensorBoard's HParams table: its optimizer label (one column: the label is
    what names its runs; the optimizer's plugin name is in the config text), lr, seed, optimizer
    options and swept keys. Booleans stay booleans (true/false in the table)."""
    values: dict[str, Any] = {"optimizer": plan.optimizer.label, "lr": plan.optimizer.lr, "seed": plan.seed}
    for key, value in plan.optimizer.options.items():
        values[f"options.{key}"] = value
    values.update(plan.swept())  # a sweep point's keys, e.g. task.n
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in values.items()}


