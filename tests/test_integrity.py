"""Issue 11, defects 1, 5 and 10: what a run directory holds is never trusted blindly and never lost.

- A checkpoint loads with ``torch.load(weights_only=True)``: a crafted one cannot execute code, and
  every checkpoint the engine writes (standard optimizers and diagnostics) loads that way.
- A summary.json that is unreadable or implausible means "not finished": the run is redone and the
  file kept aside; results.json of a finished attempt survives an attempt that dies.
- An event file deleted or cut short while the run writes it is recorded in the run's result.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml
from click.testing import CliRunner

from testbed.engine import checkpoint
from testbed.experiment.cache import run_id
from testbed.cli.commands import main
from testbed.experiment.config import parse_config
from testbed.engine.loop import train
from testbed.experiment.runner import plan_runs, run_experiment
from testbed.files.layout import CHECKPOINT_FILE
from testbed.plugins import ENV_VAR, load_plugins

from shared_fixtures import TINY


def tiny(**train: Any) -> dict[str, Any]:
    """TINY with one optimizer (sgd) and the given train settings."""
    raw = copy.deepcopy(TINY)
    raw["optimizers"] = raw["optimizers"][:1]
    raw["train"].update({"seeds": 1, **train})
    return raw


def run_cli(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real `testbed` command in its own process (and session, so that it can kill its whole
    process group), without $TESTBED_PLUGINS unless ``env`` sets it."""
    environment = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    return subprocess.run([sys.executable, "-m", "testbed.cli", *map(str, args)], env={**environment, **(env or {})},
                          capture_output=True, text=True, timeout=300, start_new_session=True)


def plans_of(raw: dict[str, Any], logdir: Path, plugins=None):
    """The experiment's run plans, each with its run id, as `testbed run` makes them."""
    plugins = plugins or load_plugins()
    config = parse_config(raw, plugins.registry)
    return [replace(p, run_id=run_id(p, plugins)) for p in plan_runs(config, logdir / config.name)]


def stop_after(step: int) -> Callable[[], bool]:
    """A should_stop that asks the run to stop (with a checkpoint) after ``step`` steps."""
    calls = iter(range(1, 10**9))
    return lambda: next(calls) >= step


# ================================================================== defect 1: checkpoints execute no code
class CreatesFile:
    """Unpickling this object opens (creates) ``path``: what a hostile checkpoint could do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_a_checkpoint_that_would_execute_code_is_never_loaded(tmp_path):
    raw, logdir, marker = tiny(), tmp_path / "logs", tmp_path / "payload-ran"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    (plan,) = plans_of(raw, logdir)
    run_dir = Path(plan.run_dir)
    run_dir.mkdir(parents=True)
    torch.save({"run_id": plan.run_id, "step": 10, "model": CreatesFile(marker), "optimizer": {},
                "data_stream": torch.zeros(1), "global_random": {}, "diagnostics": {}, "result": {},
                "event_files": {}}, run_dir / CHECKPOINT_FILE)

    dry = run_cli("run", config, "--logdir", logdir, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert not marker.exists(), "--dry-run executed the checkpoint's payload"
    assert f"{plan.run_dir}  [lr 0.01, 20 steps]  to run" in dry.stdout

    real = run_cli("run", config, "--logdir", logdir)
    assert real.returncode == 0, real.stderr
    assert not marker.exists(), "testbed run executed the checkpoint's payload"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps_done"] == 20
    assert summary["resumed_from"] == []  # started over, not resumed from the crafted step 10


ALL_DIAGNOSTICS = [
    {"name": "gradient_noise", "options": {"samples": 4, "full_batch": 128, "bins": 5, "steps": [0, 5]}},
    {"name": "robust_condition_number", "options": {"every": 5}},
    {"name": "directional_smoothness", "options": {"every": 5}},
    {"name": "generalized_smoothness", "options": {"every": 1, "stop": 15}},
    {"name": "block_norms", "options": {"every": 5}},
    {"name": "sharpness", "options": {"every": 5, "iterations": 3}},
]
STANDARD_OPTIMIZERS = [
    {"name": "sgd", "lr": 0.01, "options": {"momentum": 0.9}},
    {"name": "adam", "lr": 0.01},
    {"name": "adamw", "lr": 0.01},
    {"name": "torch", "lr": 0.01, "options": {"class": "RMSprop"}},
]


def test_every_standard_plugin_state_checkpoints_in_the_safe_format(tmp_path):
    """A checkpoint with each standard optimizer's state, every standard diagnostic's state and the
    global random states loads with weights_only=True (before the fix: numpy's state, an ndarray,
    and each diagnostic's Schedule could not)."""
    raw = tiny(steps=20)
    raw["optimizers"], raw["diagnostics"] = STANDARD_OPTIMIZERS, ALL_DIAGNOSTICS
    plugins = load_plugins()
    for plan in plans_of(raw, tmp_path, plugins):
        result = train(plan, plugins, should_stop=stop_after(10))
        assert result.status == "interrupted" and result.warnings == [], (plan.key, result.warnings)
        data = torch.load(Path(plan.run_dir) / CHECKPOINT_FILE, weights_only=True)
        assert data["step"] == 10 and data["optimizer"]["state"], plan.key
        assert checkpoint.load(Path(plan.run_dir), plan.run_id) is not None


def test_global_random_states_survive_the_safe_format(tmp_path):
    import random

    import numpy as np

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.normal()  # numpy caches a second gaussian: part of its state
    saved = checkpoint.global_random_state()
    torch.save(saved, tmp_path / "state.pt")
    expected = (random.random(), np.random.normal(), float(torch.rand(1)))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    checkpoint.set_global_random_state(torch.load(tmp_path / "state.pt", weights_only=True))
    assert (random.random(), np.random.normal(), float(torch.rand(1))) == expected


UNSAFE_DIAGNOSTIC = """
    from testbed import Diagnostic, Scalar, hookimpl, schedule_from, schedule_options

    class Window:
        def __init__(self):
            self.values = []

    class Holder(Diagnostic):
        def __init__(self, **schedule):
            self.schedule = schedule_from(schedule)
            self.window = Window()  # not a plain value: refused by torch.load(weights_only=True)

        def measure(self, probe, step):
            self.window.values.append(step)
            return [Scalar("count", len(self.window.values))]

    @hookimpl
    def register_diagnostics(register):
        register("holder", lambda **o: Holder(**o), options=schedule_options(every=5))
"""


def test_a_plugin_state_that_cannot_load_safely_is_not_checkpointed_and_said_so(tmp_path, plugin_module):
    plugin_module("unsafe_state_plugin", UNSAFE_DIAGNOSTIC)
    raw = tiny()
    raw["diagnostics"] = [{"name": "holder"}]
    plugins = load_plugins()
    (plan,) = plans_of(raw, tmp_path, plugins)
    result = train(plan, plugins, should_stop=stop_after(10))
    assert result.status == "interrupted"
    assert not (Path(plan.run_dir) / CHECKPOINT_FILE).exists()
    (warning,) = result.warnings
    assert "checkpoint" in warning and "holder" in warning and "Window" in warning, warning
    summary = json.loads((Path(plan.run_dir) / "summary.json").read_text())
    assert summary["warnings"] == [warning]


# ================================================================== defect 5: implausible summaries
def _without(key: str) -> Callable[[dict], Any]:
    return lambda s: {k: v for k, v in s.items() if k != key}


def _with(**changes: Any) -> Callable[[dict], Any]:
    return lambda s: {**s, **changes}


BAD_SUMMARIES: dict[str, Callable[[dict], Any]] = {
    "a string": lambda s: "completed",
    "a list": lambda s: [1, 2, 3],
    "eval_losses null": _with(eval_losses=None),
    "eval_losses missing": _without("eval_losses"),
    "eval_steps and eval_losses of different lengths": lambda s: {**s, "eval_steps": s["eval_steps"][:-1]},
    "a loss that is a string": lambda s: {**s, "eval_losses": [*s["eval_losses"][:-1], "0.5"]},
    "an unknown status": _with(status="finished"),
    "a completed run whose final loss is not a number": _with(final_eval_loss="0.5"),
    "a completed run without a final loss": _with(final_eval_loss=None),
    "a required field missing": _without("key"),
    "a field of the wrong type": _with(steps_done="20"),
}
NOT_JSON = "not JSON"
CASES = [*BAD_SUMMARIES, NOT_JSON]


@pytest.fixture(scope="module")
def redone(tmp_path_factory) -> dict[str, Any]:
    """A finished tiny experiment (one seed per case, and seed 0 left intact), each case's bad
    summary.json written into its run, then `testbed run --dry-run` and `testbed run` on it."""
    tmp = tmp_path_factory.mktemp("bad_summaries")
    raw, logdir = tiny(seeds=len(CASES) + 1), tmp / "logs"
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(ENV_VAR, raising=False)
        plugins = load_plugins()
        run_experiment(parse_config(raw, plugins.registry), plugins, logdir, workers=1)
    run_dirs = {case: logdir / "tiny" / "sgd" / f"seed-{seed}" for seed, case in enumerate(CASES, start=1)}
    written = {}
    for case, run_dir in run_dirs.items():
        summary = json.loads((run_dir / "summary.json").read_text())
        written[case] = '{"status": "compl' if case == NOT_JSON else json.dumps(BAD_SUMMARIES[case](summary))
        (run_dir / "summary.json").write_text(written[case])
    dry = run_cli("run", config, "--logdir", logdir, "--dry-run")
    real = run_cli("run", config, "--logdir", logdir)
    return {"dry": dry, "real": real, "run_dirs": run_dirs, "written": written, "logdir": logdir}


def test_bad_summaries_neither_crash_nor_count_as_done(redone):
    for name in ("dry", "real"):
        process = redone[name]
        assert process.returncode == 0, (name, process.stderr)
        assert "Traceback" not in process.stderr and "Error" not in process.stderr, (name, process.stderr)
    assert "1 done" in redone["dry"].stdout and f"{len(CASES)} to run" in redone["dry"].stdout
    assert f"({len(CASES)} runs executed, 0 of them resumed; 1 already done)" in redone["real"].stdout


@pytest.mark.parametrize("case", CASES)
def test_a_bad_summary_is_redone_and_kept_aside(redone, case):
    run_dir = redone["run_dirs"][case]
    assert f"{run_dir}  [lr 0.01, 20 steps]  to run" in redone["dry"].stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps_done"] == 20
    kept = list(run_dir.glob("summary.invalid-*.json"))
    assert [p.read_text() for p in kept] == [redone["written"][case]]


def test_report_reads_the_redone_experiment(redone, tmp_path):
    """A hand-edited summary (eval_losses: null) once passed as cached and crashed `testbed report`."""
    result = CliRunner().invoke(main, ["report", str(redone["logdir"]), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report" / "report.md").exists()


def test_a_kept_aside_summary_is_never_overwritten(tmp_path):
    from testbed.experiment.cache import set_aside_invalid_summary
    from testbed.files.layout import SUMMARY_FILE

    for text in ("[1]", '"x"'):
        (tmp_path / SUMMARY_FILE).write_text(text)
        set_aside_invalid_summary(tmp_path)
    assert sorted(p.read_text() for p in tmp_path.glob("summary.invalid-*.json")) == ['"x"', "[1]"]
    assert not (tmp_path / SUMMARY_FILE).exists()


# A plugin that SIGKILLs `testbed run` (its whole process group: the driver and any worker) at step 10,
# as a crash of the machine would. run_cli starts each command in a session of its own.
KILLER = """
    import os, signal
    from testbed import hookimpl

    @hookimpl
    def on_step_end(run, step, metrics):
        if step == 10:
            os.killpg(os.getpgid(0), signal.SIGKILL)
"""


@pytest.mark.slow
def test_an_attempt_that_dies_keeps_the_previous_results(tmp_path):
    raw, logdir = tiny(), tmp_path / "logs"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    plugins = load_plugins()
    run_experiment(parse_config(raw, plugins.registry), plugins, logdir, workers=1)
    results = logdir / "tiny" / "results.json"
    finished = results.read_text()
    (tmp_path / "killer_plugin.py").write_text(KILLER.replace("\n    ", "\n"))

    killed = run_cli("run", config, "--logdir", logdir, "--force",
                         env={ENV_VAR: "killer_plugin", "PYTHONPATH": str(tmp_path)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not results.exists(), "a results.json after a killed attempt would pass as its result"
    assert (logdir / "tiny" / "results.previous.json").read_text() == finished

    again = run_cli("run", config, "--logdir", logdir)
    assert again.returncode == 0, again.stderr
    assert json.loads(results.read_text())["status"] == "complete"
    assert not (logdir / "tiny" / "results.previous.json").exists()  # superseded by the new results


# ================================================================== defect 10: event files lost mid-run
EVENT_FILE_DELETER = """
    from pathlib import Path
    from testbed import hookimpl

    @hookimpl
    def on_step_end(run, step, metrics):
        if step == 10:
            run.logger.flush()
            for path in Path(run.plan.run_dir).glob("events.out.tfevents.*"):
                path.unlink()
"""


def test_an_event_file_deleted_mid_run_is_recorded(tmp_path, plugin_module):
    plugin_module("event_file_deleter", EVENT_FILE_DELETER)
    plugins = load_plugins()
    outcome = run_experiment(parse_config(tiny(), plugins.registry), plugins, tmp_path, workers=1)
    (result,) = outcome.results
    assert result.status == "completed" and result.steps_done == 20  # the numbers are fine
    (warning,) = result.warnings
    (event_file,) = Path(result.run_dir).glob("events.out.tfevents.*")  # recreated by later writes
    assert event_file.name in warning and "TensorBoard" in warning, warning
    assert json.loads((Path(result.run_dir) / "summary.json").read_text())["warnings"] == [warning]
    assert json.loads((tmp_path / "tiny" / "results.json").read_text())["runs"][0]["warnings"] == [warning]


def test_a_complete_log_has_no_warning_fresh_or_resumed(tmp_path):
    plugins = load_plugins()
    (plan,) = plans_of(tiny(checkpoint_every=5), tmp_path, plugins)
    assert train(plan, plugins, should_stop=stop_after(12)).status == "interrupted"
    resumed = train(plan, plugins)
    assert resumed.resumed_from == [12] and resumed.status == "completed"
    assert resumed.warnings == []


def test_a_resumed_run_checks_the_event_files_of_before_its_checkpoint(tmp_path):
    plugins = load_plugins()
    (plan,) = plans_of(tiny(), tmp_path, plugins)
    assert train(plan, plugins, should_stop=stop_after(12)).status == "interrupted"
    (before,) = Path(plan.run_dir).glob("events.out.tfevents.*")
    with open(before, "r+b") as handle:  # someone cuts the first attempt's log short
        handle.truncate(before.stat().st_size // 2)
    resumed = train(plan, plugins)
    assert resumed.resumed_from == [12] and resumed.status == "completed"
    (warning,) = resumed.warnings
    assert before.name in warning, warning


def test_the_cli_warns_once_for_a_run_with_a_damaged_log(tmp_path, plugin_module, monkeypatch):
    plugin_module("event_file_deleter", EVENT_FILE_DELETER)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny(seeds=2)))
    result = CliRunner().invoke(main, ["run", "config.yaml", "--logdir", "logs"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 2 and "sgd/seed-0" in warnings[0] and "sgd/seed-1" in warnings[1], warnings
