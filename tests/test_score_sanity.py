"""Issue 13's sanity checks of `testbed score`, end to end through testbed.score.scoring on a tiny suite
of its own (two workloads, d=3, n=6, 40 steps, 4 tuning trials, 6 scoring seeds: the fewest a verdict
needs): Adam under another name, given exactly Adam's options and search space, gets "no significant
difference" against Adam on every workload and Adam's score; a planted bad optimizer that no learning
rate rescues (Adam with a random sign per coordinate, tests/score_plugins.py) ranks last."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import score_plugins
from testbed.experiment.executors.local import LocalExecutor
from testbed.plugins import Plugins, load_plugins
from testbed.score.scorecard import console_lines
from testbed.score.scoring import ScoreOutcome, ScoreRequest, run_score
from testbed.score.stats import NO_DIFFERENCE, WORSE

pytestmark = pytest.mark.slow  # about 25 s: 100 real runs and two scorecards with their figures

BUDGET = {"steps": 40, "eval_every": 10, "scoring_seeds": [0, 1, 2, 3, 4, 5], "tuning_seeds": [1000],
          "trials": 4, "trial_steps": 40}
TARGET = 0.9  # tuned adam and sgd cross it within 40 steps; random_sign_adam stays above 1.2
SUITE = {
    "version": "v1",
    "profiles": {"quick": {"note": "a tiny test profile"}},
    "budgets": {"quick": BUDGET},
    "common": {"model": {"layers": 2}, "train": {"batch_size": 64}, "eval": {"batch_size": 64}},
    "workloads": {
        "gaussian": {"title": "tiny Gaussian", "heavy_tailed": False, "target": TARGET, "seconds_per_step": 0.001,
                     "config": {"task": {"name": "gaussian", "d": 3, "n": 6}}},
        "gamma": {"title": "tiny Gamma", "heavy_tailed": True, "target": TARGET, "seconds_per_step": 0.001,
                  "config": {"task": {"name": "gamma", "d": 3, "n": 6, "options": {"shape": 0.5}}}},
    },
}
ADAM = {"name": "adam", "options": {"betas": [0.9, 0.9]}, "search": {"lr": [0.003, 0.3]}}
BASELINES = {"baselines": {"adam": ADAM, "sgd": {"name": "sgd", "search": {"lr": [0.01, 1.0]}}}}
# Adam under another name: exactly adam's options and search space, so its runs are adam's
ALIAS = {**ADAM, "name": "adam_alias", "label": "adam_alias"}
WORKLOADS = list(SUITE["workloads"])
RUNS_PER_CANDIDATE = len(WORKLOADS) * (BUDGET["trials"] * len(BUDGET["tuning_seeds"]) + len(BUDGET["scoring_seeds"]))


def write(path: Path, data: dict) -> Path:
    """``data`` as a YAML file at ``path`` (its directory created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    """The installed plugins and the planted optimizers (runs execute in this process, one by one)."""
    return load_plugins(extra={"score_plugins": score_plugins})


@pytest.fixture(scope="module")
def scores(plugins: Plugins, tmp_path_factory: pytest.TempPathFactory) -> tuple[ScoreOutcome, ScoreOutcome]:
    """Two scores into one directory against adam and sgd: first the alias (runs the references too),
    then random_sign_adam (finds the references' runs done)."""
    root = tmp_path_factory.mktemp("sanity")
    write(root / "benchmark/v1/suite.yaml", SUITE)
    write(root / "benchmark/v1/baselines.yaml", BASELINES)
    alias = write(root / "adam_alias.yaml", ALIAS)
    outcomes = []
    for optimizer in (str(alias), "random_sign_adam"):
        request = ScoreRequest(optimizer, "quick", against=("adam", "sgd"), out=root / "score",
                               root=root / "benchmark")
        outcomes.append(run_score(request, plugins, LocalExecutor(1)))
    return outcomes[0], outcomes[1]


def test_adam_under_another_name_is_no_different_from_adam_and_gets_its_score(scores) -> None:
    card = scores[0].card
    assert scores[0].status == "complete" and card.candidate == "adam_alias"
    for workload in WORKLOADS:
        comparison = card.verdicts[(workload, "adam")]
        assert comparison.verdict == NO_DIFFERENCE and len(comparison.seeds) == 6
        assert comparison.log_ratios == (0.0,) * 6  # the same runs, seed by seed
        assert card.scores.get(workload, "adam_alias").chosen == card.scores.get(workload, "adam").chosen
    assert card.profile_scores["adam_alias"] == card.profile_scores["adam"] > 0
    assert card.times["adam_alias"] == card.times["adam"]
    said = console_lines(card)
    assert sum(f"{NO_DIFFERENCE} vs adam (x1," in line for line in said) == len(WORKLOADS)


def test_random_sign_adam_ranks_last_and_is_worse_than_adam_everywhere(scores) -> None:
    card = scores[1].card
    ranking = card.ranking()
    assert [label for label, _ in ranking][-1] == "random_sign_adam"
    assert card.profile_scores["random_sign_adam"] < min(card.profile_scores["adam"], card.profile_scores["sgd"])
    for workload in WORKLOADS:
        assert card.verdicts[(workload, "adam")].verdict == WORSE


def test_the_second_score_runs_only_its_own_optimizer(scores) -> None:
    first, second = scores
    assert first.executed == 3 * RUNS_PER_CANDIDATE and first.cached == 0  # alias, adam, sgd
    assert second.executed == RUNS_PER_CANDIDATE and second.cached == 2 * RUNS_PER_CANDIDATE
    for workload in WORKLOADS:  # the references read back from their run directories, unchanged
        for label in ("adam", "sgd"):
            assert second.card.scores.get(workload, label).runs == first.card.scores.get(workload, label).runs
