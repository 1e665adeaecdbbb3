"""`testbed score` end to end on a suite of one's own (``--suite DIR``): the leaderboard command ships
per-seed baseline results and figures, a later score takes its references from them and runs only
the candidate, ``--rerun-baselines`` reruns the references and reports where they differ from the
shipped file, and the shipped suite's versions (v1 kept, v2 the latest). Real tiny runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from testbed.cli.commands import main
from testbed.score.leaderboard import read_baselines
from testbed.score.suite import BENCHMARK, latest_version, load_suite, suite_location, versions

SUITE = {
    "version": "v1",
    "profiles": {"quick": {"note": "a test profile: tiny runs, not a benchmark"}},
    "budgets": {"quick": {"steps": 30, "eval_every": 10, "scoring_seeds": [0, 1], "tuning_seeds": [1000],
                          "trials": 2, "trial_steps": 20}},
    "common": {"model": {"layers": 2}, "train": {"batch_size": 64}, "eval": {"batch_size": 64}},
    "workloads": {"tiny": {"title": "A tiny workload", "heavy_tailed": False, "target": 0.9,
                           "seconds_per_step": 0.001, "config": {"task": {"name": "gaussian", "d": 3, "n": 6}}}},
}
BASELINES = {"baselines": {"adam": {"name": "adam", "search": {"lr": [0.003, 0.03]}},
                           "sgd": {"name": "sgd", "search": {"lr": [0.01, 0.1]}}}}


def score(*args: str):
    """`testbed score ARGS` in this process (its runs in one worker process), output and exit code."""
    result = CliRunner().invoke(main, ["score", "--workers", "1", *args])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A suite of one's own with its leaderboard shipped (``--baselines-only --ship``) beside it."""
    directory = tmp_path_factory.mktemp("benchmark") / "v1"
    directory.mkdir()
    (directory / "suite.yaml").write_text(yaml.safe_dump(SUITE))
    (directory / "baselines.yaml").write_text(yaml.safe_dump(BASELINES))
    result = score("--baselines-only", "--ship", "--suite", str(directory),
                   "--out", str(directory.parent / "leaderboard"))
    assert result.exit_code == 0, result.output
    return directory


def test_the_leaderboard_ships_its_results_and_figures(suite_dir: Path) -> None:
    shipped = read_baselines(suite_dir / "baselines-quick.json")
    assert {(r.workload, r.label) for r in shipped.records} == {("tiny", "adam"), ("tiny", "sgd")}
    assert shipped.executed == 2 * (2 + 2) and shipped.cached == 0 and shipped.run_seconds > 0
    board = (suite_dir / "LEADERBOARD.md").read_text()
    figures = [line.split("](")[1].rstrip(")") for line in board.splitlines() if line.startswith("![")]
    assert sorted(figures) == ["figures/loss-tiny.png", "figures/lr-sensitivity.png",
                               "figures/performance-profile.png"]
    for figure in figures:
        assert (suite_dir / figure).read_bytes()[:4] == b"\x89PNG"
    assert "8 runs executed, 0 found done" in board


def test_a_score_takes_its_references_from_the_shipped_results(suite_dir: Path, tmp_path: Path) -> None:
    result = score("adamw", "--against", "adam,sgd", "--suite", str(suite_dir), "--out", str(tmp_path / "s"))
    assert result.exit_code == 0, result.output
    assert "adam, sgd: the shipped per-seed results of baselines-quick.json" in result.output
    assert "running adamw;" in result.output
    assert "4 runs executed, 0 already done" in result.output  # 2 trials + 2 scoring seeds: adamw only
    assert not (tmp_path / "s/runs/v1/quick/tiny/adam").exists()


def test_rerun_baselines_agrees_with_the_shipped_results_and_names_a_difference(suite_dir: Path,
                                                                                 tmp_path: Path) -> None:
    args = ("adamw", "--against", "adam,sgd", "--suite", str(suite_dir), "--rerun-baselines")
    result = score(*args, "--out", str(tmp_path / "a"))
    assert result.exit_code == 0, result.output
    assert "rerun baselines: no differences from the shipped results beyond float rounding" in result.output

    path = suite_dir / "baselines-quick.json"
    original = path.read_text()
    data = json.loads(original)
    seed = data["workloads"]["tiny"]["sgd"]["seeds"][1]
    seed["eval_losses"][2] *= 1.01  # a shipped number that this machine does not reproduce
    try:
        path.write_text(json.dumps(data))
        result = score(*args, "--out", str(tmp_path / "b"))
    finally:
        path.write_text(original)
    assert result.exit_code == 0, result.output
    assert "rerun baselines: 1 differences from the shipped results" in result.output
    assert f"tiny/sgd: seed 1: eval loss at step 20: {seed['eval_losses'][2]!r} shipped" in result.output


def test_the_shipped_suites_keep_v1_and_v2_is_the_latest() -> None:
    assert versions() == ["v1", "v2"] and latest_version() == "v2"
    v1, v2 = load_suite("v1"), load_suite()
    assert v2.version == "v2"
    # v2 changed only the full profile's targets: its runs (configs, budgets) are v1's.
    assert [(w.name, dict(w.base), w.budgets) for w in v1.workloads] == \
        [(w.name, dict(w.base), w.budgets) for w in v2.workloads]
    assert any(a.target != b.target for a, b in zip(v1.workloads, v2.workloads))
    assert (BENCHMARK / "v2" / "baselines.yaml").read_text().split("\n", 1)[1] == \
        (BENCHMARK / "v1" / "baselines.yaml").read_text().split("\n", 1)[1]


def test_suite_names_a_version_or_a_directory(suite_dir: Path, tmp_path: Path) -> None:
    assert suite_location("v1") == ("v1", BENCHMARK)
    assert suite_location(str(suite_dir)) == ("v1", suite_dir.resolve().parent)
    result = score("adam", "--suite", "v9", "--out", str(tmp_path / "s"))
    assert result.exit_code == 1 and "unknown suite version 'v9'; versions: v1, v2" in result.output
