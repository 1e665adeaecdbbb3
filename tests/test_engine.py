"""The engine and the experiment runner on tiny configs: determinism, common random numbers, the eval
schedule, and every run outcome (completed, diverged, failed, interrupted) with what it leaves on disk."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import (
    STORE_EVERYTHING_SIZE_GUIDANCE,
    EventAccumulator,
)

from testbed import hookimpl
from testbed.experiment.config import parse_config
from testbed.experiment.runner import run_experiment
from testbed.files.layout import RESULTS_FILE
from testbed.plugins import load_plugins
from helpers import StepLosses

SGD = {"name": "sgd", "lr": 0.01}
ADAM = {"name": "adam", "lr": 0.001}


def raw_config(optimizers: list[dict[str, Any]] | None = None, steps: int = 25, seeds: tuple[int, ...] = (0,),
               every: int = 10, clip: float | None = 1.0, name: str = "exp") -> dict[str, Any]:
    """A tiny experiment: a few steps of a 2-layer model on 3-dimensional regression."""
    return {
        "name": name,
        "task": {"name": "gaussian", "d": 3, "n": 10},
        "model": {"layers": 2},
        "optimizers": optimizers or [SGD, ADAM],
        "train": {"steps": steps, "batch_size": 64, "seeds": list(seeds), "clip_grad_norm": clip},
        "eval": {"every": every, "batch_size": 128},
    }


def run(raw: dict[str, Any], logdir: Path, plugins=None, workers: int = 1):
    plugins = plugins or load_plugins()
    config = parse_config(raw, plugins.registry)
    return run_experiment(config, plugins, logdir, workers=workers)


def _reject_constant(name: str):
    raise ValueError(f"results.json is not strict JSON: it contains {name}")


def read_results(outcome) -> dict[str, Any]:
    """results.json, parsed strictly (NaN, Infinity and -Infinity are errors)."""
    return json.loads((outcome.directory / RESULTS_FILE).read_text(), parse_constant=_reject_constant)


def by_key(outcome) -> dict[str, Any]:
    return {r.key: r for r in outcome.results}



class RaiseAt:
    """A plugin whose on_step_end raises ``error`` at ``step`` of the run labelled ``label``."""

    def __init__(self, error: BaseException, step: int, label: str) -> None:
        self.error, self.step, self.label = error, step, label
        self.ended: list[tuple[str, str]] = []

    @hookimpl
    def on_step_end(self, run, step, metrics):
        if run.label == self.label and step == self.step:
            raise self.error

    @hookimpl
    def on_run_end(self, run, status):
        self.ended.append((f"{run.label}/seed-{run.seed}", status))


# ------------------------------------------------------------------ determinism
def test_same_config_twice_gives_bitwise_identical_eval_losses(tmp_path):
    raw = raw_config(seeds=[0, 1])
    first = run(raw, tmp_path / "a")
    second = run(raw, tmp_path / "b")
    assert [r.status for r in first.results] == ["completed"] * 4
    assert {k: r.eval_losses for k, r in by_key(first).items()} == \
           {k: r.eval_losses for k, r in by_key(second).items()}


def test_worker_pool_gives_the_same_results_as_one_process(tmp_path):
    raw = raw_config(seeds=[0, 1])
    serial = run(raw, tmp_path / "serial", workers=1)
    pooled = run(raw, tmp_path / "pooled", workers=2)  # real spawned worker processes
    assert [r.status for r in pooled.results] == ["completed"] * 4
    assert [r.key for r in pooled.results] == [r.key for r in serial.results]
    for a, b in zip(serial.results, pooled.results):
        assert a.eval_steps == b.eval_steps
        assert a.eval_losses == b.eval_losses, a.key
    assert read_results(pooled)["status"] == "complete"


# ------------------------------------------------------------------ common random numbers
def test_optimizers_share_initial_weights_for_a_seed(tmp_path):
    outcome = by_key(run(raw_config(seeds=[0, 1]), tmp_path))
    for seed in (0, 1):
        assert outcome[f"sgd/seed-{seed}"].eval_losses[0] == outcome[f"adam/seed-{seed}"].eval_losses[0]
    # The eval batch is fixed (its own seed) but the initial weights depend on the run seed.
    assert outcome["sgd/seed-0"].eval_losses[0] != outcome["sgd/seed-1"].eval_losses[0]


def test_optimizers_see_identical_prompts_for_a_seed(tmp_path):
    # With lr = 0 nothing moves, so the training losses depend only on the init and the prompts.
    recorder = StepLosses()
    plugins = load_plugins(extra={"recorder": recorder})
    raw = raw_config([{"name": "sgd", "lr": 0.0}, {"name": "adam", "lr": 0.0}], steps=20, seeds=[0, 1])
    outcome = run(raw, tmp_path, plugins)
    assert [r.status for r in outcome.results] == ["completed"] * 4
    assert len(recorder.losses["sgd/seed-0"]) == 20
    assert recorder.losses["sgd/seed-0"] == recorder.losses["adam/seed-0"]
    assert recorder.losses["sgd/seed-1"] == recorder.losses["adam/seed-1"]
    assert recorder.losses["sgd/seed-0"] != recorder.losses["sgd/seed-1"]
    # Fresh prompts every step, not the same batch again.
    assert len(set(recorder.losses["sgd/seed-0"])) == 20


# ------------------------------------------------------------------ schedule
@pytest.mark.parametrize("steps, every, expected", [
    (25, 10, [0, 10, 20, 25]),
    (20, 10, [0, 10, 20]),  # the last step is an eval step anyway: not evaluated twice
    (3, 10, [0, 3]),
])
def test_eval_at_step_zero_every_k_steps_and_at_the_last_step(tmp_path, steps, every, expected):
    outcome = run(raw_config([SGD], steps=steps, every=every), tmp_path)
    (result,) = outcome.results
    assert result.status == "completed" and result.steps_done == steps
    assert result.eval_steps == expected
    assert len(result.eval_losses) == len(expected)
    assert result.final_eval_loss == result.eval_losses[-1]
    assert result.best_eval_loss == min(result.eval_losses)
    assert read_results(outcome)["runs"][0]["eval_steps"] == expected


# ------------------------------------------------------------------ outcomes
def test_divergence_is_an_outcome_not_an_error(tmp_path):
    raw = raw_config([SGD, {"name": "sgd", "label": "sgd-huge", "lr": 1e6}, ADAM], clip=None)
    outcome = run(raw, tmp_path)
    results = by_key(outcome)
    huge = results["sgd-huge/seed-0"]
    assert huge.status == "diverged"
    assert isinstance(huge.diverged_at, int) and 1 <= huge.diverged_at <= 25
    # Non-finite at a training step (the update is skipped) or at an eval step (it was taken).
    assert huge.steps_done in (huge.diverged_at - 1, huge.diverged_at)
    assert results["sgd/seed-0"].status == "completed"
    assert results["adam/seed-0"].status == "completed"

    data = read_results(outcome)  # strict: the NaN final loss must be written as null
    assert data["status"] == "complete"
    runs = {r["key"]: r for r in data["runs"]}
    assert runs["sgd-huge/seed-0"]["status"] == "diverged"
    assert runs["sgd-huge/seed-0"]["final_eval_loss"] is None
    assert runs["sgd-huge/seed-0"]["diverged_at"] == huge.diverged_at
    assert all(v is None or math.isfinite(v) for v in runs["sgd-huge/seed-0"]["eval_losses"])
    summary = {row["label"]: row for row in data["summary"]}
    assert summary["sgd-huge"]["diverged"] == 1 and summary["sgd-huge"]["final_mean"] is None
    assert summary["sgd"]["completed"] == 1 and summary["sgd"]["final_mean"] == runs["sgd/seed-0"]["final_eval_loss"]
    # The run's own summary.json is strict JSON as well.
    summary_json = Path(huge.run_dir) / "summary.json"
    assert json.loads(summary_json.read_text(), parse_constant=_reject_constant)["final_eval_loss"] is None


def test_results_json_is_strict_and_records_versions(tmp_path):
    plugins = load_plugins()
    outcome = run(raw_config(), tmp_path, plugins)
    data = read_results(outcome)
    import torch

    import testbed

    assert data["versions"]["torch"] == torch.__version__
    assert data["versions"]["testbed"] == testbed.__version__
    for info in plugins.infos:
        if info.error is None:
            assert data["versions"][info.name] == f"{info.distribution} {info.version}"
    assert {"optimizers", "tasks"} <= set(data["versions"])  # the standard plugins, via entry points
    for run_data in data["runs"]:
        assert run_data["versions"] == data["versions"]
    assert data["config"]["train"]["steps"] == 25
    assert [r["key"] for r in data["runs"]] == ["sgd/seed-0", "adam/seed-0"]


def test_optimizer_that_needs_a_closure_runs(tmp_path):
    lbfgs = {"name": "torch", "label": "lbfgs", "lr": 0.1, "options": {"class": "LBFGS", "kwargs": {"max_iter": 2}}}
    raw = raw_config([lbfgs], steps=20)
    # LBFGS without line search at lr 0.1 decreases the loss in 20 steps on the torch stream's prompts
    # (the stream it was set on); on philox's it overshoots (1e12 at step 20): pinned, not retuned
    raw["train"]["stream"] = "torch"
    outcome = run(raw, tmp_path)
    (result,) = outcome.results
    assert result.status == "completed", result.error
    assert result.steps_done == 20
    assert all(math.isfinite(v) for v in result.eval_losses)
    assert result.eval_losses[-1] < result.eval_losses[0]  # it did optimize


def test_a_plugin_raising_in_a_hook_fails_only_its_run(tmp_path):
    boom = RaiseAt(RuntimeError("boom at step 5"), step=5, label="adam")
    plugins = load_plugins(extra={"boom": boom})
    outcome = run(raw_config(seeds=[0, 1]), tmp_path, plugins, workers=1)
    results = by_key(outcome)
    for seed in (0, 1):
        failed = results[f"adam/seed-{seed}"]
        assert failed.status == "failed"
        assert failed.error == "RuntimeError: boom at step 5"
        assert failed.steps_done == 5
        error_txt = (Path(failed.run_dir) / "error.txt").read_text()
        assert "RuntimeError: boom at step 5" in error_txt and "Traceback" in error_txt
        assert results[f"sgd/seed-{seed}"].status == "completed"
        assert not (Path(results[f"sgd/seed-{seed}"].run_dir) / "error.txt").exists()
    # on_run_end is still called, with the failed status, for every run.
    assert sorted(boom.ended) == sorted([("sgd/seed-0", "completed"), ("adam/seed-0", "failed"),
                                         ("sgd/seed-1", "completed"), ("adam/seed-1", "failed")])
    data = read_results(outcome)
    assert data["status"] == "complete"
    runs = {r["key"]: r for r in data["runs"]}
    assert runs["adam/seed-0"]["status"] == "failed"
    assert runs["adam/seed-0"]["error"] == "RuntimeError: boom at step 5"
    assert {row["label"]: row["failed"] for row in data["summary"]} == {"sgd": 0, "adam": 2}


def test_interruption_stops_the_experiment_and_flushes_the_event_file(tmp_path):
    stop = RaiseAt(KeyboardInterrupt(), step=5, label="sgd")
    plugins = load_plugins(extra={"stop": stop})
    outcome = run(raw_config(seeds=[0, 1]), tmp_path, plugins, workers=1)
    assert outcome.status == "interrupted"
    statuses = [(r.key, r.status, r.error) for r in outcome.results]
    # Seed-major order: sgd/seed-0 is the first run; nothing after it starts.
    assert statuses == [
        ("sgd/seed-0", "interrupted", None),
        ("adam/seed-0", "interrupted", "not started"),
        ("sgd/seed-1", "interrupted", "not started"),
        ("adam/seed-1", "interrupted", "not started"),
    ]
    assert stop.ended == [("sgd/seed-0", "interrupted")]
    interrupted = outcome.results[0]
    assert interrupted.steps_done == 5

    data = read_results(outcome)
    assert data["status"] == "interrupted"
    assert [r["status"] for r in data["runs"]] == ["interrupted"] * 4
    assert {row["label"]: row["interrupted"] for row in data["summary"]} == {"sgd": 2, "adam": 2}

    accumulator = EventAccumulator(interrupted.run_dir, size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    accumulator.Reload()
    events = accumulator.Scalars("eval/loss")
    assert [e.step for e in events] == [0]
    assert events[0].value == pytest.approx(interrupted.eval_losses[0], rel=1e-6)
    assert [e.step for e in accumulator.Scalars("train/loss")] == [1, 2, 3, 4, 5]
