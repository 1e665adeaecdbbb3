"""`testbed bench --flagship CONFIG`: the whole `testbed run` command timed in a subprocess, its runs'
time split into training and each diagnostic. The plumbing, on a tiny config (the real flagship,
examples/heavy_tail.yaml, takes minutes)."""

from __future__ import annotations

import json
import math

import yaml
from click.testing import CliRunner

from testbed.cli.commands import main

TINY_FLAGSHIP = {
    "name": "tiny_flagship",
    "task": {"name": "gaussian", "d": 3, "n": 6},
    "model": {"layers": 2},
    "train": {"steps": 20, "batch_size": 64, "seeds": [0, 1]},
    "eval": {"every": 10, "batch_size": 64},
    "optimizers": [{"name": "sgd", "lr": 0.01}],
    "diagnostics": [{"name": "directional_smoothness", "options": {"every": 5}},
                    {"name": "robust_condition_number", "seeds": [1], "options": {"every": 10}}],
    "workers": 1,
}


def test_the_flagship_line_times_the_command_and_splits_its_runs(tmp_path):
    config, numbers = tmp_path / "flagship.yaml", tmp_path / "flagship.json"
    config.write_text(yaml.safe_dump(TINY_FLAGSHIP))
    result = CliRunner().invoke(main, ["bench", "--flagship", str(config), "--json", str(numbers)])
    assert result.exit_code == 0, result.output
    data = json.loads(numbers.read_text())
    assert data["runs"] == 2 and data["status"] == "complete"
    assert data["wall_seconds"] > data["runner_seconds"] > data["run_seconds"] > data["training_seconds"] > 0
    diagnostics = data["diagnostic_seconds"]
    assert set(diagnostics) == {"directional_smoothness", "robust_condition_number"}
    assert all(seconds > 0 for seconds in diagnostics.values())
    assert math.isclose(data["training_seconds"] + sum(diagnostics.values()), data["run_seconds"])
    lines = result.output.splitlines()
    assert lines[0].startswith(f"flagship: testbed run {config}: ") and "2 runs, complete" in lines[0]
    assert "training" in lines[1] and "robust_condition_number" in lines[1] and "directional_smoothness" in lines[1]
    assert "engine / direct" not in result.output  # the step cases are not run with --flagship


def test_a_missing_flagship_config_is_one_error(tmp_path):
    result = CliRunner().invoke(main, ["bench", "--flagship", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: --flagship: no config file {str(tmp_path / 'absent.yaml')!r} "
        "(the flagship is examples/heavy_tail.yaml, in a checkout)"]


def test_a_failing_flagship_command_is_one_error_naming_its_message(tmp_path):
    config = tmp_path / "flagship.yaml"
    config.write_text(yaml.safe_dump({**TINY_FLAGSHIP, "optimizers": [{"name": "no_such_optimizer", "lr": 0.01}]}))
    result = CliRunner().invoke(main, ["bench", "--flagship", str(config)])
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: the flagship command failed (exit code 1): Error: ") and "no_such_optimizer" in line
