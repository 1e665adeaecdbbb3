"""Learning-rate tuning (the paper's protocol: best of a grid per setting and optimizer): the config
section, the selection rule, the pilot runs and what they leave on disk, and `testbed run`."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from tensorboard.backend.event_processing.event_accumulator import (
    STORE_EVERYTHING_SIZE_GUIDANCE,
    EventAccumulator,
)

from testbed import ConfigError, hookimpl
from testbed.cli.commands import main
from testbed.engine.specs import TuneSpec
from testbed.experiment.config import parse_config
from testbed.experiment.runner import plan_runs, run_experiment
from testbed.files.layout import RESULTS_FILE
from testbed.experiment.tuning import plan_pilots, select_lr, tuning_markdown
from testbed.plugins import load_plugins
from testbed.text import format_lr

GRID = [1e-6, 0.05, 1e6]  # barely trains, trains, diverges (no clipping)
TUNED_SGD = {"name": "sgd", "options": {"momentum": 0.0}, "tune": {"lr": GRID}}
ADAM = {"name": "adam", "lr": 0.01}


def raw_config(optimizers: list[dict[str, Any]] | None = None, seeds: int = 2, **train: Any) -> dict[str, Any]:
    return {
        "name": "exp",
        "task": {"name": "gaussian", "d": 3, "n": 6},
        "model": {"layers": 2},
        "optimizers": copy.deepcopy(optimizers or [TUNED_SGD, ADAM]),
        # GRID's "trains" point was chosen on the torch stream's prompts: on the philox stream's,
        # unclipped SGD at 0.05 diverges on seed 1 by step 21. Tuning itself does not care which.
        "train": {"steps": 30, "batch_size": 64, "seeds": seeds, "clip_grad_norm": None, "stream": "torch", **train},
        "eval": {"every": 10, "batch_size": 64},
        "workers": 1,
    }


def run(raw: dict[str, Any], logdir: Path, plugins=None, workers: int | None = None, **kwargs):
    plugins = plugins or load_plugins()
    return run_experiment(parse_config(raw, plugins.registry), plugins, logdir, workers=workers, **kwargs)


def results_json(outcome) -> dict[str, Any]:
    return json.loads((outcome.directory / RESULTS_FILE).read_text())


def texts(run_dir: str | Path) -> dict[str, str]:
    accumulator = EventAccumulator(str(run_dir), size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    accumulator.Reload()
    return {tag: accumulator.Tensors(tag)[0].tensor_proto.string_val[0].decode()
            for tag in accumulator.Tags()["tensors"] if tag.endswith("/text_summary")}


# ------------------------------------------------------------------ the tuned experiment
@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """sgd tuned over GRID (pilots of 20 steps), adam at a fixed lr; 2 seeds; one process."""
    logdir = tmp_path_factory.mktemp("tuning") / "runs"
    outcome = run(raw_config(optimizers=[{**TUNED_SGD, "tune": {"lr": GRID, "steps": 20}}, ADAM]), logdir)
    return outcome, results_json(outcome)


def test_tuning_picks_the_best_grid_point(tuned):
    outcome, data = tuned
    assert outcome.status == "complete" and data["status"] == "complete"
    record = data["tuning"]["sgd"]
    assert record["grid"] == GRID and record["steps"] == 20 and record["seeds"] == [0]
    assert record["chosen_lr"] == 0.05 and record["note"] is None
    pilots = {p["lr"]: p for p in record["pilots"]}
    assert list(pilots) == GRID and all(p["seed"] == 0 for p in pilots.values())
    assert pilots[1e-6]["status"] == "completed" and pilots[0.05]["status"] == "completed"
    assert pilots[0.05]["final_eval_loss"] < pilots[1e-6]["final_eval_loss"]
    assert pilots[1e6]["status"] == "diverged" and pilots[1e6]["final_eval_loss"] is None
    assert list(data["tuning"]) == ["sgd"]  # adam has no tune section

    # the main runs used the chosen lr; the untuned optimizer its own
    used = {(r.label, r.seed): r.lr for r in outcome.results}
    assert used == {("sgd", 0): 0.05, ("sgd", 1): 0.05, ("adam", 0): 0.01, ("adam", 1): 0.01}
    assert all(r.status == "completed" and r.steps_done == 30 for r in outcome.results)
    assert {r["key"]: r["lr"] for r in data["runs"]} == {"sgd/seed-0": 0.05, "sgd/seed-1": 0.05,
                                                         "adam/seed-0": 0.01, "adam/seed-1": 0.01}
    assert outcome.tuning["sgd"].chosen_lr == 0.05


def test_pilots_are_short_runs_without_diagnostics(tmp_path):
    raw = raw_config(optimizers=[{"name": "sgd", "tune": {"lr": [0.01, 0.05], "steps": 10, "seeds": 2}}], seeds=1)
    raw["diagnostics"] = [{"name": "block_norms"}]
    config = parse_config(raw, load_plugins().registry)
    pilots = plan_pilots(config, tmp_path / "exp")
    assert [(p.optimizer.lr, p.seed) for p in pilots] == [(0.01, 0), (0.01, 1), (0.05, 0), (0.05, 1)]
    assert all(p.pilot and p.config.diagnostics == () and p.config.train.steps == 10 for p in pilots)
    assert all(p.config.optimizers == (p.optimizer,) and p.optimizer.tune is None for p in pilots)
    assert pilots[3].run_dir == str(tmp_path / "exp" / "tuning" / "sgd" / "lr-0.05" / "seed-1")
    assert pilots[3].key == "tuning/sgd/lr-0.05/seed-1"
    assert [p.key for p in plan_runs(config, tmp_path / "exp")] == ["sgd/seed-0"]  # the main runs only

    outcome = run(raw, tmp_path)
    (pilot_summary,) = [p for p in outcome.tuning["sgd"].pilots if p.lr == 0.05 and p.seed == 1]
    assert pilot_summary.steps_done == 10 and pilot_summary.diagnostics == {}
    (main_run,) = outcome.results
    assert main_run.steps_done == 30 and main_run.diagnostics  # the main run keeps its diagnostics


def test_run_directories_and_tensorboard_text(tuned):
    outcome, data = tuned
    directory = outcome.directory
    for name in ("lr-1e-06", "lr-0.05", "lr-1e+06"):
        pilot = directory / "tuning" / "sgd" / name / "seed-0"
        assert any(f.name.startswith("events.out.tfevents") for f in pilot.iterdir()), pilot
        assert (pilot / "summary.json").exists()
        pilot_config = yaml.safe_load((pilot / "config.yaml").read_text())
        assert [o["label"] for o in pilot_config["optimizers"]] == ["sgd"]
        assert pilot_config["train"]["steps"] == 20 and pilot_config["diagnostics"] == []
        assert "tuning/text_summary" not in texts(pilot)

    for seed in (0, 1):
        run_dir = directory / "sgd" / f"seed-{seed}"
        table = texts(run_dir)["tuning/text_summary"]
        assert "| 0.05 |" in table and "**chosen**" in table and "diverged" in table
        chosen_row = next(line for line in table.splitlines() if "**chosen**" in line)
        assert chosen_row.startswith("| 0.05 |")
        # the config the run logs and saves has the lr it used
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert saved["optimizers"][0]["lr"] == 0.05
        assert "lr: 0.05" in texts(run_dir)["config/text_summary"]
        assert "tuning/text_summary" not in texts(directory / "adam" / f"seed-{seed}")
    # the experiment's config.yaml is the config as given
    assert yaml.safe_load((directory / "config.yaml").read_text())["optimizers"][0]["tune"]["lr"] == GRID


def test_a_second_attempt_starts_from_clean_tuning_directories(tmp_path):
    run(raw_config(optimizers=[{"name": "sgd", "tune": {"lr": [0.01, 0.02]}}], seeds=1, steps=5), tmp_path)
    stale = tmp_path / "exp" / "tuning" / "sgd" / "lr-0.01"
    assert stale.exists()
    run(raw_config(optimizers=[{"name": "sgd", "tune": {"lr": [0.03]}}], seeds=1, steps=5), tmp_path)
    assert not stale.exists() and (tmp_path / "exp" / "tuning" / "sgd" / "lr-0.03").exists()


def test_all_pilots_diverged_uses_the_smallest_lr_and_still_runs(tmp_path):
    outcome = run(raw_config(optimizers=[{"name": "sgd", "tune": {"lr": [1e7, 1e6]}}], seeds=1), tmp_path)
    record = results_json(outcome)["tuning"]["sgd"]
    assert record["chosen_lr"] == 1e6 and record["note"] == "all pilots diverged"
    assert [p["status"] for p in record["pilots"]] == ["diverged", "diverged"]
    steps = [p["diverged_at"] for p in record["pilots"]]
    assert all(isinstance(step, int) and step >= 1 for step in steps)
    text = tuning_markdown(outcome.tuning["sgd"])  # what TensorBoard shows: where each pilot diverged
    assert f"| 1e+06 | diverged at step {steps[1]} | **chosen** |" in text
    (main_run,) = outcome.results
    assert main_run.lr == 1e6 and main_run.status == "diverged"
    assert outcome.status == "complete"


class StopAt:
    """Raises KeyboardInterrupt at ``step`` of the first run, and records the runs' keys and phases."""

    def __init__(self, step: int):
        self.step, self.started = step, []

    @hookimpl
    def on_run_start(self, run):
        self.started.append(run.plan.key)

    @hookimpl
    def on_step_end(self, run, step, metrics):
        if step == self.step:
            raise KeyboardInterrupt


def test_interruption_during_tuning_stops_everything(tmp_path):
    stop = StopAt(step=5)
    phases = []
    outcome = run(raw_config(), tmp_path, load_plugins(extra={"stop": stop}), workers=1,
                  on_phase=lambda phase: phases.append(phase.name))
    assert outcome.status == "interrupted" and phases == ["tuning"]
    assert stop.started == ["tuning/sgd/lr-1e-06/seed-0"]  # no other pilot, no main run started
    assert all(r.status == "interrupted" and r.error == "not started" for r in outcome.results)
    assert {r.label: r.lr for r in outcome.results} == {"sgd": None, "adam": 0.01}
    data = results_json(outcome)
    assert data["status"] == "interrupted"
    record = data["tuning"]["sgd"]
    assert record["chosen_lr"] is None and record["note"] == "tuning interrupted"
    assert [p["status"] for p in record["pilots"]] == ["interrupted"] * 3


def test_report_and_phases_cover_pilots_and_main_runs(tmp_path):
    events, phases = [], []
    run(raw_config(seeds=1), tmp_path, report=events.append,
        on_phase=lambda phase: phases.append((phase.name, len(phase.plans), phase.steps_per_run, {t.label for t in phase.tuning})))
    assert phases == [("tuning", 3, 30, set()), ("main", 2, 30, {"sgd"})]
    ended = [e["key"] for e in events if e["event"] == "end"]
    assert ended == ["tuning/sgd/lr-1e-06/seed-0", "tuning/sgd/lr-0.05/seed-0", "tuning/sgd/lr-1e+06/seed-0",
                     "sgd/seed-0", "adam/seed-0"]


def test_without_a_tune_section_nothing_changes(tmp_path):
    phases = []
    outcome = run(raw_config(optimizers=[{"name": "sgd", "lr": 0.05}], seeds=1), tmp_path,
                  on_phase=lambda phase: phases.append(phase.name))
    assert phases == ["main"] and outcome.tuning == {}
    assert "tuning" not in results_json(outcome)
    assert not (outcome.directory / "tuning").exists()
    assert outcome.results[0].lr == 0.05


def test_pilots_in_worker_processes_match_one_process(tmp_path):
    # three pilots share a pool of two workers (pilot keys must be unique there); the one main run
    # runs in the driver (a pool of one is never started), which keeps this test to one pool start
    raw = raw_config(optimizers=[TUNED_SGD], seeds=1)
    one, two = (results_json(run(raw, tmp_path / name, workers=workers)) for name, workers in (("a", 1), ("b", 2)))
    assert two["tuning"]["sgd"]["chosen_lr"] == 0.05
    assert two["tuning"] == one["tuning"]
    assert [(r["key"], r["lr"], r["eval_losses"]) for r in two["runs"]] == \
        [(r["key"], r["lr"], r["eval_losses"]) for r in one["runs"]]


# ------------------------------------------------------------------ the selection rule
def test_select_lr_takes_the_lowest_mean_loss():
    assert select_lr({0.01: 0.5, 0.1: 0.2, 1.0: 0.3}) == (0.1, None)


def test_select_lr_ties_go_to_the_smaller_lr():
    assert select_lr({0.1: 0.2, 0.01: 0.2, 1.0: 0.3}) == (0.01, None)


def test_select_lr_never_picks_a_diverged_point():
    assert select_lr({0.01: 5.0, 0.1: math.inf, 1.0: math.nan}) == (0.01, None)


def test_select_lr_when_everything_diverged():
    assert select_lr({0.5: math.inf, 0.05: math.inf, 5.0: math.nan}) == (0.05, "all pilots diverged")


def test_pilot_score_is_the_mean_and_inf_when_any_pilot_did_not_complete(tuned):
    outcome, _ = tuned
    record = outcome.tuning["sgd"]
    scores = record.scores()
    assert scores[1e6] == math.inf
    assert scores[0.05] == pytest.approx(next(p.final_eval_loss for p in record.pilots if p.lr == 0.05))


def test_format_lr_is_compact_and_exact():
    assert [format_lr(v) for v in (0.02, 1e-05, 1.0, 1e6, 0.5)] == ["0.02", "1e-05", "1", "1e+06", "0.5"]
    assert format_lr(0.0123456789) == "0.0123456789"  # %g would round it


# ------------------------------------------------------------------ config
def tuned_raw(tune: Any, **entry: Any) -> dict[str, Any]:
    return {"task": {"name": "gaussian", "d": 3, "n": 5},
            "optimizers": [{"name": "sgd", "tune": tune, **entry}]}


def config_error(raw: dict[str, Any], registry) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, registry)
    return str(info.value)


def test_tune_section_is_parsed(registry):
    config = parse_config(tuned_raw({"lr": ["1e-3", 0.01], "steps": 100, "seeds": 3}), registry)
    (sgd,) = config.optimizers
    assert sgd.tune == TuneSpec((0.001, 0.01), 100, (0, 1, 2))
    assert sgd.lr == 0.001  # the placeholder: the first grid value
    defaults = parse_config(tuned_raw({"lr": [0.1]}, lr=0.5), registry).optimizers[0]
    assert defaults.tune == TuneSpec((0.1,), None, (0,)) and defaults.lr == 0.5
    assert parse_config(tuned_raw(None, lr=0.5), registry).optimizers[0].tune is None


@pytest.mark.parametrize("tune", [{"lr": [0.001, 0.01], "steps": 50, "seeds": [1, 4]}, {"lr": [0.3]}, None])
def test_tune_round_trips_through_to_dict(registry, tune):
    config = parse_config(tuned_raw(tune, lr=0.2), registry)
    assert parse_config(config.to_dict(), registry) == config
    assert parse_config(yaml.safe_load(yaml.safe_dump(config.to_dict())), registry) == config


@pytest.mark.parametrize("tune, entry, message", [
    ({"steps": 10}, {}, "optimizers[0].tune.lr: a grid of learning rates is required"),
    ({"lrs": [0.1]}, {}, "optimizers[0].tune.lrs: unknown key"),
    ({"lr": []}, {}, "optimizers[0].tune.lr: expected a non-empty list"),
    ({"lr": 0.1}, {}, "optimizers[0].tune.lr: expected a non-empty list"),
    ({"lr": [0.1, -0.01]}, {}, "optimizers[0].tune.lr[1]: must be >= 0.0"),
    ({"lr": [0.1, "fast"]}, {}, "optimizers[0].tune.lr[1]: expected float"),
    ({"lr": [0.1, 0.01, "1e-1"]}, {}, "optimizers[0].tune.lr: grid values must be distinct, 0.1 is given twice"),
    ({"lr": [0.1], "steps": 0}, {}, "optimizers[0].tune.steps: must be >= 1"),
    ({"lr": [0.1], "seeds": [0, 0]}, {}, "optimizers[0].tune.seeds: seeds must be distinct"),
    ({"lr": [0.1], "seeds": 0}, {}, "optimizers[0].tune.seeds: a count must be >= 1"),
    ([0.1, 0.2], {}, "optimizers[0].tune: expected a mapping"),
    ({"lr": [0.1]}, {"lr": -1}, "optimizers[0].lr: must be >= 0.0"),
    ({"lr": [0.1]}, {"label": "tuning"}, "optimizers[0].label: 'tuning' is reserved"),
])
def test_tune_validation_errors(registry, tune, entry, message):
    assert message in config_error(tuned_raw(tune, **entry), registry)


def test_lr_is_required_without_a_tune_section(registry):
    raw = {"task": {"name": "gaussian", "d": 3, "n": 5}, "optimizers": [{"name": "sgd"}]}
    assert "optimizers[0].lr: a learning rate is required" in config_error(raw, registry)


def test_tune_grid_can_be_overridden_with_set(tmp_path):
    from testbed.experiment.config import apply_overrides

    raw = apply_overrides(tuned_raw({"lr": [0.1]}), ["optimizers.sgd.tune.lr=[0.2, 2e-1]"])
    assert "grid values must be distinct" in config_error(raw, load_plugins().registry)


# ------------------------------------------------------------------ the command
def test_cli_run_prints_the_tuned_lr_and_the_table(tmp_path):
    config = tmp_path / "tuned.yaml"
    config.write_text(yaml.safe_dump(raw_config(seeds=1)))
    result = CliRunner().invoke(main, ["run", str(config), "--logdir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert "learning-rate tuning first: 3 pilot runs for sgd" in result.output
    line = next(line for line in result.output.splitlines() if line.startswith("tuned sgd:"))
    assert line.startswith("tuned sgd: lr 0.05 (best of 3; pilot loss ") and "1 of 3 pilots diverged" in line
    assert "final eval loss (mean ± std)" in result.output
    assert "run tuning/sgd/lr-0.05/seed-0 completed" in result.output  # pilots show in the progress
    assert result.output.index("tuned sgd:") < result.output.index("run sgd/seed-0 completed")
    assert (tmp_path / "runs" / "exp" / "tuning" / "sgd" / "lr-0.05" / "seed-0").is_dir()


def test_validate_counts_the_pilot_runs(tmp_path):
    config = tmp_path / "tuned.yaml"
    config.write_text(yaml.safe_dump(raw_config()))
    result = CliRunner().invoke(main, ["validate", str(config)])
    assert result.exit_code == 0, result.output
    assert "experiment exp, 4 runs after 3 learning-rate pilot runs" in result.output  # 3 grid values x seed 0
