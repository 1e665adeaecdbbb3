"""`testbed reproduce`: every suite file validates in both profiles; a --quick smoke run of one
experiment through to the report."""

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from testbed.cli.commands import main
from testbed.paper.reproduce import SUITE, quick_profile, suite_configs


def test_the_suite_validates_in_both_profiles(registry):
    from testbed.plugins import load_plugins

    plugins = load_plugins()
    full, quick = suite_configs(plugins), suite_configs(plugins, quick=True)
    names = {c.name.removeprefix("paper_") for c in full}
    assert {"setting1", "setting2", "setting3", "spherical", "softmax", "larger_model", "nonlinear",
            "depth_L2", "depth_L8", "generalized_smoothness_setting1"} <= names
    assert [c.name for c in quick] == [c.name for c in full]
    for small, large in zip(quick, full):
        assert small.train.steps <= min(150, large.train.steps)
        assert len(small.train.seeds) <= 2


def test_quick_profile_shrinks_budgets_and_keeps_seed_one():
    raw = {"train": {"steps": 10000, "batch_size": 1000, "seeds": 6},
           "optimizers": [{"name": "sgd", "tune": {"lr": [0.1, 0.2, 0.3, 0.4], "steps": 2000}}],
           "diagnostics": [{"name": "gradient_noise", "seeds": [1]}, {"name": "robust_condition_number"}]}
    quick = quick_profile(raw)
    assert quick["train"] == {"steps": 150, "batch_size": 200, "seeds": [0, 1]}
    assert quick["optimizers"][0]["tune"] == {"lr": [0.1, 0.3, 0.4], "steps": 30, "seeds": [0]}
    assert quick["diagnostics"][0]["options"] == {"samples": 100, "full_batch": 1000}
    assert raw["train"]["steps"] == 10000  # the input is left alone


def test_reproduce_quick_smoke(tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(SUITE / "setting1.yaml", suite)
    result = CliRunner().invoke(main, ["reproduce", "--quick", "--suite", str(suite), "--out", str(tmp_path / "out"),
                                       "--workers", "1"])
    assert result.exit_code == 0, result.output
    report = Path(tmp_path / "out" / "report")
    assert (report / "index.html").exists()
    assert (tmp_path / "out" / "runs" / "paper_setting1" / "results.json").exists()
    assert {p.name for p in (report / "figures").iterdir()} >= {
        f"paper_setting1-{kind}.png" for kind in ("loss", "gradient_noise-errors", "robust_condition_number-proxy",
                                                  "directional_smoothness-value")}
    assert "holds  Adam reaches a lower eval loss than SGD with momentum (L = 3" in result.output
    # Quick verdicts test the pipeline, not the paper: the console and the top of the page say so.
    assert result.output.startswith("quick profile: ") and "test the pipeline, not the paper" in result.output
    first = [line for line in (report / "report.md").read_text().splitlines() if line.strip()][1]
    assert first.startswith("Quick profile") and "test the pipeline, not the paper" in first
    assert first in (report / "index.html").read_text()
    # Started again, a reproduction goes on where it stopped: here nothing is left to run.
    before = (tmp_path / "out" / "runs" / "paper_setting1" / "results.json").read_text()
    again = CliRunner().invoke(main, ["reproduce", "--quick", "--suite", str(suite), "--out", str(tmp_path / "out"),
                                      "--workers", "1"])
    assert again.exit_code == 0, again.output
    assert "main: 4 runs already done (not run again), 0 resume from a checkpoint" in again.output
    after = json.loads((tmp_path / "out" / "runs" / "paper_setting1" / "results.json").read_text())
    assert [r["eval_losses"] for r in after["runs"]] == [r["eval_losses"] for r in json.loads(before)["runs"]]
    # --dry-run says what is left: nothing here.
    plan = CliRunner().invoke(main, ["reproduce", "--quick", "--suite", str(suite), "--out", str(tmp_path / "out"),
                                     "--dry-run"])
    assert plan.exit_code == 0, plan.output
    assert "paper_setting1: 4 runs: 4 done, 0 resume, 0 to run; about 0 s" in plan.output
    assert "estimated time left: 0 s" in plan.output


def test_reproduce_dry_run_prints_each_experiments_training_cost(tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(SUITE / "setting1.yaml", suite)
    plan = CliRunner().invoke(main, ["reproduce", "--quick", "--suite", str(suite), "--out", str(tmp_path / "out"),
                                     "--dry-run", "--workers", "2"])
    assert plan.exit_code == 0, plan.output
    lines = plan.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("experiment "))
    assert lines[header].split() == ["experiment", "runs", "x", "steps", "left", "ms/step", "core-s"]
    name, runs, times, steps, ms, core = lines[header + 1].split()
    assert (name, runs, steps) == ("paper_setting1", "4", "150") and float(ms) > 0
    assert float(core.replace(",", "")) == pytest.approx(600 * float(ms) / 1e3, rel=0.02, abs=1)
    assert lines[header + 2].startswith("total: ") and "on 2 workers" in lines[header + 2]
