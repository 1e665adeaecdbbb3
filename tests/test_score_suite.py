"""The benchmark suite and its candidates (testbed.score.suite, testbed.score.candidates): the shipped
suite loads and every workload parses against the installed plugins, budgets keep tuning and scoring
seeds apart and fit their time budget, search spaces give deterministic points, and candidates load
from a name, a YAML file or baselines.yaml with one clear error for bad input."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import yaml

from testbed.errors import ConfigError
from testbed.experiment.config import parse_config
from testbed.plugins import load_plugins
from testbed.plugins.registry import Registry
from testbed.score.candidates import (DEFAULT_LR_RANGE, SearchSpace, baselines, load_candidate,
                                      missing_baselines)
from testbed.score.suite import BENCHMARK, estimated_core_seconds, experiment_raw, load_suite

WORKLOADS = ["gaussian_n20", "gaussian_n5", "gamma_heavy_tail", "spherical", "anisotropic", "student_t_noise",
             "depth4", "mlp_features"]
BASELINES = ["sgd", "sgdm", "nesterov", "adam", "adamw", "rmsprop", "adagrad", "lion", "nadam", "radam",
             "adafactor"]

SAM_LIKE = """
import torch
from testbed import Option, hookimpl

@hookimpl
def register_optimizers(register):
    register("sam_like", lambda params, lr, rho: torch.optim.SGD(params, lr=lr),
             options={"rho": Option(0.05, "neighbourhood radius", min=0.0)}, doc="SGD with a rho option")
"""


@pytest.fixture(scope="module")
def suite():
    return load_suite("v1")


@pytest.fixture
def suite_copy(tmp_path: Path):
    """A writable copy of suite v1 under tmp_path/v1 and a function to edit its suite.yaml."""
    shutil.copytree(BENCHMARK / "v1", tmp_path / "v1")
    path = tmp_path / "v1" / "suite.yaml"

    def edit(change) -> None:
        raw = yaml.safe_load(path.read_text())
        change(raw)
        path.write_text(yaml.safe_dump(raw))

    return tmp_path, edit


# ------------------------------------------------------------------ the suite
def test_the_suite_has_the_issue_workloads_and_both_profiles(suite):
    assert suite.version == "v1"
    assert [w.name for w in suite.workloads] == WORKLOADS
    assert list(suite.profiles) == ["quick", "full"]
    assert "smoke test" in suite.profile("quick").note
    assert {w.name for w in suite.workloads if w.heavy_tailed} == {"gamma_heavy_tail", "student_t_noise"}
    for workload in suite.workloads:
        assert set(workload.budgets) == {"quick", "full"} and workload.title and workload.target > 0


def test_every_workload_parses_against_the_installed_plugins(suite, registry):
    adam = next(c for c in baselines("v1", registry) if c.label == "adam")
    for workload in suite.workloads:
        budget = workload.budgets["quick"]
        point = adam.space.points(budget.trials)[0]
        raw = experiment_raw(workload, budget, [adam.entry(point)], budget.scoring_seeds, budget.steps,
                             f"{workload.name}-adam")
        config = parse_config(raw, registry)
        assert config.train.steps == budget.steps and config.train.seeds == budget.scoring_seeds
        assert config.eval.every == budget.eval_every and config.eval.seed == 99
        assert config.optimizers[0].lr == point["lr"] and list(config.optimizers[0].options["betas"]) == [0.9, 0.9]
        assert raw["optimizers"][0] is not adam.entry(point)  # the entry was copied in
    assert suite.select(["depth4"]).workloads[0].base["model"]["layers"] == 4  # merged over the common model


def test_budgets_keep_tuning_and_scoring_seeds_apart(suite):
    for workload in suite.workloads:
        full, quick = workload.budgets["full"], workload.budgets["quick"]
        # six scoring seeds: the fewest with which a verdict is possible (testbed/score/stats.py)
        assert len(full.scoring_seeds) == 6 and len(full.tuning_seeds) == 1 and full.trials == 8
        assert len(quick.scoring_seeds) == 6 and len(quick.tuning_seeds) == 1 and quick.trials == 4
        assert quick.target is not None and quick.target > workload.target  # a short run's own target
        for budget in (full, quick):
            assert not set(budget.scoring_seeds) & set(budget.tuning_seeds)
            assert budget.steps <= full.steps and budget.eval_every <= budget.trial_steps


def test_the_full_leaderboard_fits_two_and_a_half_hours_on_two_cores(suite):
    hours_on_two_cores = estimated_core_seconds(suite, "full", len(BASELINES)) / 2 / 3600
    assert hours_on_two_cores <= 2.5
    assert estimated_core_seconds(suite, "quick", 3) / 2 / 60 <= 10  # one candidate and two references
    # the estimate is the protocol's count of steps: trials x tuning seeds x trial steps + scoring runs
    one = suite.select(["gaussian_n20"])
    budget = one.workloads[0].budgets["full"]
    steps = budget.trials * budget.trial_steps + 6 * budget.steps
    assert estimated_core_seconds(one, "full", 2, {"gaussian_n20": 0.5}) == pytest.approx(2 * steps * 0.5)


def test_select_keeps_the_suite_order_and_names_unknown_workloads(suite):
    assert [w.name for w in suite.select(["depth4", "spherical"]).workloads] == ["spherical", "depth4"]
    with pytest.raises(ConfigError, match="unknown workload 'gausian'.*gaussian_n20"):
        suite.select(["gausian"])
    with pytest.raises(ConfigError, match="unknown profile 'fast'.*quick, full"):
        suite.profile("fast")


def test_a_seed_used_for_tuning_and_scoring_is_refused(suite_copy):
    root, edit = suite_copy
    edit(lambda raw: raw["budgets"]["full"].update(tuning_seeds=[4]))
    with pytest.raises(ConfigError, match="seed 4 is both a tuning and a scoring seed"):
        load_suite("v1", root)


@pytest.mark.parametrize("change, message", [
    (lambda raw: raw["workloads"]["depth4"]["config"]["train"].update(steps=10) if "train" in
     raw["workloads"]["depth4"]["config"] else raw["workloads"]["depth4"]["config"].update(train={"steps": 10}),
     "depth4.config.train.steps: set by the scoring protocol"),
    (lambda raw: raw["workloads"]["spherical"].update(targt=0.1), "spherical.targt: unknown key"),
    (lambda raw: raw["workloads"]["spherical"].update(budgets={"slow": {}}), "budgets.slow: unknown profile"),
    (lambda raw: raw["profiles"]["quick"].update(note=""), "quick.note: a profile needs a note"),
    (lambda raw: raw["budgets"]["quick"].update(trials=0), "budgets.quick.trials"),
])
def test_a_broken_suite_file_is_one_config_error(suite_copy, change, message):
    root, edit = suite_copy
    edit(change)
    with pytest.raises(ConfigError, match=message):
        load_suite("v1", root)


def test_an_unknown_suite_version_lists_the_versions():
    with pytest.raises(ConfigError, match="unknown suite version 'v0'; versions: .*v1"):
        load_suite("v0")


# ------------------------------------------------------------------ search spaces
def test_points_are_a_deterministic_log_grid_spanning_the_range():
    space = SearchSpace((1e-4, 1.0))
    points = space.points(8)
    assert points == space.points(8) and len(points) == 8
    lrs = [p["lr"] for p in points]
    assert lrs[0] == 1e-4 and lrs[-1] == 1.0 and lrs == sorted(lrs)
    ratios = [math.log10(b / a) for a, b in zip(lrs, lrs[1:])]
    assert all(r == pytest.approx(4 / 7, abs=0.01) for r in ratios)  # log-uniform, rounded to 3 digits
    assert all(set(p) == {"lr"} for p in points)


def test_points_cross_the_learning_rates_with_other_options():
    space = SearchSpace((0.001, 0.1), (("rho", (0.01, 0.05)),))
    points = space.points(8)
    assert len(points) == 8
    assert [p["lr"] for p in points] == [0.001, 0.001, 0.00464, 0.00464, 0.0215, 0.0215, 0.1, 0.1]
    assert {(p["lr"], p["rho"]) for p in points} == {(lr, rho) for lr in (0.001, 0.00464, 0.0215, 0.1)
                                                     for rho in (0.01, 0.05)}
    assert space.points(4) == [{"lr": 0.001, "rho": 0.01}, {"lr": 0.001, "rho": 0.05},
                               {"lr": 0.1, "rho": 0.01}, {"lr": 0.1, "rho": 0.05}]


@pytest.mark.parametrize("values, trials", [((0.01, 0.02, 0.05), 8), ((0.01, 0.02, 0.05, 0.1), 4)])
def test_other_values_that_do_not_fit_the_trials_are_refused(values, trials):
    with pytest.raises(ConfigError, match=f"must divide the {trials} tuning trials evenly"):
        SearchSpace((0.001, 0.1), (("rho", values),)).points(trials)


# ------------------------------------------------------------------ candidates
def test_a_registered_name_is_a_candidate_with_the_default_space(registry):
    candidate = load_candidate("adam", registry)
    assert (candidate.label, candidate.optimizer, dict(candidate.options)) == ("adam", "adam", {})
    assert candidate.space == SearchSpace(DEFAULT_LR_RANGE)
    assert candidate.entry({"lr": 0.01}, "t00") == {"name": "adam", "label": "t00", "lr": 0.01, "options": {}}


def test_a_yaml_file_declares_options_and_a_search_over_rho(plugin_module, write_yaml):
    plugin_module("sam_like_plugin", SAM_LIKE)
    registry = load_plugins().registry
    path = write_yaml({"name": "sam_like", "search": {"lr": [0.001, 0.1], "rho": [0.01, 0.05]}}, "my_sam.yaml")
    candidate = load_candidate(str(path), registry)
    assert (candidate.label, candidate.optimizer) == ("my_sam", "sam_like")  # label: the file's stem
    assert candidate.space.others == (("rho", (0.01, 0.05)),)
    entry = candidate.entry(candidate.space.points(4)[1])
    assert entry == {"name": "sam_like", "label": "my_sam", "lr": 0.001, "options": {"rho": 0.05}}
    labelled = write_yaml({"name": "sgd", "label": "heavy_ball", "options": {"momentum": 0.5}}, "hb.yaml")
    candidate = load_candidate(str(labelled), registry)
    assert candidate.label == "heavy_ball" and candidate.entry({"lr": 0.1})["options"] == {"momentum": 0.5}


@pytest.mark.parametrize("data, message", [
    ({"name": "adamm"}, "bad.yaml: name: unknown optimizer 'adamm'; available: adam"),
    ({"name": "adam", "lr": 0.1}, "bad.yaml: lr: unknown key"),
    ({"name": "adam", "options": {"beta": 0.9}}, "bad.yaml: options.beta: unknown option"),
    ({"name": "adam", "search": {"lr": [0.1, 0.01]}}, r"search.lr: the range \[0.1, 0.01\] is empty"),
    ({"name": "adam", "search": {"lr": [0.0, 0.01]}}, r"search.lr\[0\]"),
    ({"name": "adam", "search": {"lr": 0.01}}, r"search.lr: expected a range \[low, high\]"),
    ({"name": "adam", "search": {"rho": [0.1, 0.2]}}, "search.rho: 'adam' has no option 'rho'"),
    ({"name": "sgd", "options": {"momentum": 0.9}, "search": {"momentum": [0.5, 0.9]}}, "also fixed in options"),
    ({"name": "sgd", "search": {"momentum": [-1.0, 0.9]}}, r"search.momentum\[0\]"),
    ({"name": "sgd", "label": "tuning"}, "label: expected letters"),
    ("just text", "bad.yaml: expected a mapping"),
])
def test_a_bad_candidate_file_is_one_config_error_naming_the_file_and_key(registry, write_yaml, data, message):
    path = write_yaml({"x": data} if isinstance(data, str) else data, "bad.yaml")
    if isinstance(data, str):
        path.write_text(data)
    with pytest.raises(ConfigError, match=message):
        load_candidate(str(path), registry)


def test_an_unknown_name_or_a_missing_file_is_a_config_error(registry, tmp_path):
    with pytest.raises(ConfigError, match="unknown optimizer 'adamm' .*available: adam"):
        load_candidate("adamm", registry)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_candidate(str(tmp_path / "missing.yaml"), registry)


# ------------------------------------------------------------------ baselines
def test_all_eleven_baselines_load_and_run_in_one_experiment(suite, registry):
    candidates = baselines("v1", registry)
    assert [c.label for c in candidates] == BASELINES  # lion: testbed_lion is in the dev environment
    assert missing_baselines("v1", registry) == []
    by_label = {c.label: c for c in candidates}
    assert by_label["adam"].options == {"betas": [0.9, 0.9]}  # the paper's betas
    assert by_label["sgdm"].options == {"momentum": 0.9} and by_label["sgd"].options == {}
    assert by_label["nesterov"].options == {"momentum": 0.9, "nesterov": True}
    assert by_label["adafactor"].options == {"class": "Adafactor"}
    workload = suite.workloads[0]
    budget = workload.budgets["full"]
    entries = [c.entry(c.space.points(budget.trials)[3]) for c in candidates]
    config = parse_config(experiment_raw(workload, budget, entries, (0,), 5, "all"), registry)
    assert [spec.label for spec in config.optimizers] == BASELINES


def test_a_baseline_whose_plugin_is_missing_is_skipped_with_a_note(registry):
    without_lion = Registry({kind: {name: entry for name, entry in entries.items() if name != "lion"}
                             for kind, entries in registry.entries.items()})
    assert [c.label for c in baselines("v1", without_lion)] == [b for b in BASELINES if b != "lion"]
    notes = missing_baselines("v1", without_lion)
    assert len(notes) == 1 and "'lion'" in notes[0] and "testbed_lion" in notes[0]
