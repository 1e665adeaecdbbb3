"""Smoke test of scripts/hostile_sweep.py, the hostile sweep of issue 11: its case list, a few of its
cases run through its own API against the real CLI, and that its checks catch what they are for."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterator

import pytest
import yaml

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "hostile_sweep.py"
CATEGORIES = {"configs", "files", "signals", "plugins", "disk", "concurrency"}


@pytest.fixture(scope="module")
def sweep() -> Iterator[ModuleType]:
    """The script, imported by path (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("hostile_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def settings(sweep: ModuleType, base: Path):
    return sweep.Settings(base, timeout=120, memory=4 * 2**30, command=sweep.testbed_command())


def test_the_sweep_has_over_a_hundred_cases_with_unique_names_in_every_category(sweep):
    cases = sweep.all_cases()
    names = [case.name for case in cases]
    assert len(cases) >= 100
    assert len(set(names)) == len(names)
    assert {case.category for case in cases} == CATEGORIES


def test_configs_are_written_as_yaml_that_reads_back_as_the_same_values(sweep):
    # PyYAML reads 1e-05 (no dot) as a string: the script must spell it 1.0e-05
    config = sweep.tiny({"optimizers.0.lr": 1e-05, "train.clip_grad_norm": float("inf")})
    assert yaml.safe_load(sweep.to_yaml(config)) == config


def test_a_few_fast_cases_pass(sweep, tmp_path):
    chosen = ["yaml-unclosed-bracket", "unknown-task-key", "cli-list-unknown-kind"]
    cases = [case for case in sweep.all_cases() if case.name in chosen]
    rows = sweep.run_sweep(cases, settings(sweep, tmp_path), jobs=2)
    assert [(row.name, row.verdict) for row in rows] == [(name, "PASS") for name in chosen], \
        [row.problems for row in rows]


def test_the_checks_catch_a_wrong_exit_code_and_a_write_outside_the_allowed_place(sweep, tmp_path):
    wrong_exit = sweep.config_case("expects-success", "name: [\n", exits=sweep.DONE)
    # a plugin that writes next to the working directory when imported: `testbed plugins` may write nowhere
    escape = sweep.Case("writes-outside", "plugins", (sweep.testbed("plugins"),),
                        plugins={"escaper": "open('../escaped.txt', 'w').close()\n"})
    rows = sweep.run_sweep([wrong_exit, escape], settings(sweep, tmp_path), jobs=2)
    assert rows[0].verdict.startswith("FAIL: validate#1: exit 1, expected 0"), rows[0].problems
    assert rows[1].verdict.startswith("FAIL: plugins#1: wrote outside where it may"), rows[1].problems
    assert "Error: " in rows[0].stderr  # the table shows the command's error line
