"""The scoring protocol (testbed/score/protocol.py): tuning trials on tuning seeds, the best trial
chosen, its scoring runs on disjoint scoring seeds, cached runs not rerun; and the engine's count of
gradient evaluations (RunResult.gradient_evaluations). Real runs of a tiny suite, read back from
their run directories."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

import score_plugins
from testbed.engine.run import RunResult
from testbed.experiment.cache import summary_problem
from testbed.experiment.config import parse_config
from testbed.experiment.runner import run_experiment
from testbed.plugins import Plugins, load_plugins
from testbed.score.candidates import Candidate, SearchSpace
from testbed.score.protocol import TrialResult, choose, run_protocol, trial_score
from testbed.score.suite import Budget, Profile, Suite, Workload

BUDGET = Budget(steps=30, eval_every=10, scoring_seeds=(0, 1), tuning_seeds=(1000,), trials=3, trial_steps=20)
BASE = {"task": {"name": "gaussian", "d": 3, "n": 6}, "model": {"layers": 2},
        "train": {"batch_size": 64}, "eval": {"batch_size": 64}}


def tiny_suite(*names: str) -> Suite:
    """A suite of tiny workloads (d=3, n=6, 7, ..., 20-step trials, 30-step scoring runs) with one
    profile. Each has its own n: workloads with the same config would share their runs (same ids)."""
    workloads = tuple(Workload(name, f"tiny {name}", {**BASE, "task": {**BASE["task"], "n": 6 + i}}, 0.5,
                               {"quick": BUDGET}, False, 0.001)
                      for i, name in enumerate(names or ("tiny",)))
    return Suite("v1", workloads, {"quick": Profile("quick", "a test profile")})


def candidate(label: str, optimizer: str, low: float = 1e-3, high: float = 1e-1, **options) -> Candidate:
    """A candidate searching lr in [low, high] (3 trials: low, the geometric middle, high)."""
    return Candidate(label, optimizer, options, SearchSpace((low, high)))


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    """The installed plugins and the planted ones (in this process: runs execute here, one by one)."""
    return load_plugins(extra={"score_plugins": score_plugins})


def summaries(directory: Path) -> dict[str, dict]:
    """Every run's summary.json under ``directory``, by its path relative to it (<label>/seed-<s>)."""
    return {str(path.parent.relative_to(directory)): json.loads(path.read_text())
            for path in sorted(directory.glob("*/seed-*/summary.json"))}


def robust_final(losses: list[float]) -> float:
    """The median of the last three evaluations, computed here by hand."""
    return statistics.median(losses[-3:])


@pytest.fixture(scope="module")
def scored(plugins: Plugins, tmp_path_factory: pytest.TempPathFactory):
    """One protocol run: adam (lr in [1e-3, 1e-1]), sgd with a grid far too small (the best is its
    highest lr: an edge) and the closure optimizer twice, on one tiny workload."""
    root = tmp_path_factory.mktemp("score")
    candidates = [candidate("adam", "adam"), candidate("sgd", "sgd", 1e-6, 1e-5), candidate("twice", "twice")]
    return root, candidates, run_protocol(tiny_suite(), "quick", candidates, plugins, root)


def test_the_choice_is_the_trial_with_the_lowest_median_robust_final_loss(scored) -> None:
    root, _, data = scored
    assert data.status == "complete"
    for label in ("adam", "sgd", "twice"):
        tuning = summaries(root / "runs/v1/quick/tiny" / label / "tuning")
        assert sorted(tuning) == ["t00/seed-1000", "t01/seed-1000", "t02/seed-1000"]
        by_trial = {key.split("/")[0]: robust_final(run["eval_losses"]) for key, run in tuning.items()}
        best = min(by_trial, key=by_trial.get)
        result = data.results["tiny", label]
        assert result.choice.point["lr"] == tuning[f"{best}/seed-1000"]["lr"]
        assert result.choice.score == by_trial[best]
        assert [t.score for t in result.trials] == [by_trial[t] for t in ("t00", "t01", "t02")]
        scoring = summaries(root / "runs/v1/quick/tiny" / label / "scoring")
        assert sorted(scoring) == [f"{label}/seed-0", f"{label}/seed-1"]
        assert {run["lr"] for run in scoring.values()} == {result.choice.point["lr"]}
        assert all(run["steps_done"] == BUDGET.steps and run["status"] == "completed" for run in scoring.values())
        assert [r.eval_losses for r in result.runs] == [scoring[f"{label}/seed-{s}"]["eval_losses"] for s in (0, 1)]


def test_a_choice_at_the_edge_of_the_grid_is_warned_about(scored) -> None:
    _, _, data = scored
    sgd = data.results["tiny", "sgd"]
    assert sgd.choice.point["lr"] == 1e-5 and sgd.choice.edge == "highest" and sgd.choice.at_edge
    assert ("sgd on tiny: the chosen lr 1e-05 is the highest of its search space; the best may lie outside it"
            in data.warnings)
    assert [w.split(":")[0] for w in data.warnings] == [f"{r.label} on tiny" for r in data.results.values()
                                                         if r.choice.at_edge]


def test_tuning_and_scoring_seeds_are_disjoint(scored) -> None:
    root, candidates, _ = scored
    for c in candidates:
        directory = root / "runs/v1/quick/tiny" / c.label
        tuning = {path.name for path in directory.glob("tuning/*/seed-*")}
        scoring = {path.name for path in directory.glob("scoring/*/seed-*")}
        assert tuning == {"seed-1000"} and scoring == {"seed-0", "seed-1"}
        seeds = {run["seed"] for run in summaries(directory / "tuning").values()}
        assert seeds == set(BUDGET.tuning_seeds) and not seeds & set(BUDGET.scoring_seeds)


def test_a_closure_optimizer_is_charged_its_gradient_evaluations(scored) -> None:
    root, _, data = scored
    for label, per_step in (("adam", 1), ("sgd", 1), ("twice", 2)):
        for run in data.results["tiny", label].runs:
            assert run.gradient_evaluations == per_step * BUDGET.steps
        for run in summaries(root / "runs/v1/quick/tiny" / label / "tuning").values():
            assert run["gradient_evaluations"] == per_step * BUDGET.trial_steps


def test_phases_are_named_and_a_second_score_runs_only_the_new_candidate(plugins: Plugins, tmp_path: Path) -> None:
    suite = tiny_suite("first", "second")
    first = [candidate("adam", "adam")]
    phases: list[tuple[str, int]] = []
    data = run_protocol(suite, "quick", first, plugins, tmp_path,
                        on_phase=lambda phase: phases.append((phase.name, len(phase.plans))))
    per_candidate = BUDGET.trials * len(BUDGET.tuning_seeds) + len(BUDGET.scoring_seeds)  # runs per workload
    assert data.executed == 2 * per_candidate and data.cached == 0
    assert phases == [("tuning", 2 * BUDGET.trials), ("scoring", 2 * len(BUDGET.scoring_seeds))]
    again = run_protocol(suite, "quick", [*first, candidate("alias", "adam_alias")], plugins, tmp_path)
    assert again.executed == 2 * per_candidate and again.cached == 2 * per_candidate
    for workload in ("first", "second"):
        adam, alias = again.results[workload, "adam"], again.results[workload, "alias"]
        assert adam.runs == data.results[workload, "adam"].runs  # read back from the cache, unchanged
        # Adam under another name: the same trials, the same choice, the same numbers
        assert alias.choice == adam.choice
        assert [r.eval_losses for r in alias.runs] == [r.eval_losses for r in adam.runs]


def test_tuning_cannot_rescue_the_planted_random_sign_adam(plugins: Plugins, tmp_path: Path) -> None:
    wide = [candidate("adam", "adam", 1e-4, 1.0), candidate("random_sign", "random_sign_adam", 1e-4, 1.0)]
    data = run_protocol(tiny_suite(), "quick", wide, plugins, tmp_path)
    adam, planted = data.results["tiny", "adam"], data.results["tiny", "random_sign"]
    assert planted.choice.score > 1.2 * adam.choice.score
    for good, bad in zip(adam.runs, planted.runs):  # paired by seed: worse on every one
        assert good.seed == bad.seed and robust_final(bad.eval_losses) > 1.2 * robust_final(good.eval_losses)


def test_choose_ties_go_to_the_smaller_lr_and_sensitivity_counts_trials_within_2x() -> None:
    def trial(lr: float, *finals: float, status: str = "completed") -> TrialResult:
        runs = tuple(RunResult("k", "t", "adam", seed, status, 30, "d", 1.0, eval_steps=[10, 20, 30],
                               eval_losses=[9.0, 9.0, final]) for seed, final in enumerate(finals))
        return TrialResult(f"t{lr}", {"lr": lr}, runs)

    # medians over seeds of the median of the last three losses (9, 9, final): 9 for all but the last
    spiky = [trial(0.1, 1.0, 1.0), trial(0.01, 9.0), trial(0.001, 20.0, 8.0, 8.0)]
    assert [t.score for t in spiky] == [9.0, 9.0, 9.0]
    choice = choose(spiky)
    assert choice.point == {"lr": 0.001} and choice.edge == "lowest" and choice.sensitivity == 1.0

    def flat(lr: float, loss: float, status: str = "completed") -> TrialResult:
        runs = (RunResult("k", "t", "adam", 0, status, 30, "d", 1.0, eval_steps=[10, 20, 30],
                          eval_losses=[loss] * 3),)
        return TrialResult(f"t{lr}", {"lr": lr}, runs)

    trials = [flat(0.001, 4.0), flat(0.01, 1.0), flat(0.1, 1.9), flat(1.0, 2.1), flat(10.0, 1.0, "diverged")]
    choice = choose(trials)
    assert choice.point == {"lr": 0.01} and choice.edge is None and choice.score == 1.0
    assert choice.sensitivity == 2 / 5  # 1.0 and 1.9 are within 2x of 1.0; 2.1, 4.0 and inf are not
    failed = [flat(0.01, math.nan, "failed"), flat(0.1, 1.0, "diverged")]
    assert [t.score for t in failed] == [math.inf, math.inf]
    assert choose(failed).point == {"lr": 0.01} and choose(failed).sensitivity == 0.0
    assert trial_score(trials[-1].runs) == math.inf


def test_a_summary_written_before_gradient_evaluations_is_still_a_finished_run(plugins: Plugins, tmp_path: Path,
                                                                                tiny_raw: dict) -> None:
    tiny_raw["train"]["seeds"] = 1
    config = parse_config(tiny_raw, plugins.registry)
    first = run_experiment(config, plugins, tmp_path)
    assert [r.gradient_evaluations for r in first.results] == [20, 20]
    for run in first.results:
        path = Path(run.run_dir) / "summary.json"
        data = json.loads(path.read_text())
        del data["gradient_evaluations"]
        assert summary_problem(data) is None
        path.write_text(json.dumps(data))
    again = run_experiment(config, plugins, tmp_path)
    assert [r.gradient_evaluations for r in again.results] == [0, 0]  # read back: not rerun
    assert [r.eval_losses for r in again.results] == [r.eval_losses for r in first.results]


def test_a_run_read_back_after_diverging_on_its_eval_loss_scores_inf(plugins: Plugins, tmp_path: Path,
                                                                      tiny_raw: dict) -> None:
    """Strict JSON saves the non-finite eval loss a run diverged on as null; read back from the cache,
    it is a float again (NaN), so the trial scores inf instead of failing."""
    tiny_raw["train"]["seeds"] = 1
    config = parse_config(tiny_raw, plugins.registry)
    first = run_experiment(config, plugins, tmp_path)
    path = Path(first.results[0].run_dir) / "summary.json"
    data = json.loads(path.read_text())
    data.update(status="diverged", diverged_at=20, diverged_on="eval loss", final_eval_loss=None)
    data["eval_losses"][-1] = None
    path.write_text(json.dumps(data))
    again = run_experiment(config, plugins, tmp_path)
    read_back = again.results[0]
    assert read_back.status == "diverged" and read_back.seconds == first.results[0].seconds  # not rerun
    assert read_back.eval_losses[:-1] == first.results[0].eval_losses[:-1] and math.isnan(read_back.eval_losses[-1])
    assert trial_score([read_back]) == math.inf
