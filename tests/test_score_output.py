"""What `testbed score` shows, from synthetic records: the scorecard (scorecard.md, index.html, the
PNGs it references, the console lines), the shipped baseline results (JSON round trip, a rerun
compared with them), the leaderboard text, and the command's bad-input errors."""

from __future__ import annotations

import json
import math
import random
import re

import pytest
from click.testing import CliRunner, Result

from testbed.cli.commands import main
from testbed.errors import ResultsError
from testbed.score.leaderboard import (BaselineResults, compare_records, leaderboard_markdown, read_baselines,
                                       write_baselines)
from testbed.score.records import Scored, Scores, SeedRun, Trial
from testbed.score.scorecard import WorkloadInfo, build_scorecard, console_lines, write_scorecard

WORKLOADS = [WorkloadInfo("easy", "An easy workload", 0.3), WorkloadInfo("hard", "A hard workload", 0.05)]
NOTE = "quick profile: a smoke test of the pipeline, not a benchmark result"
LRS = (1e-3, 1e-2, 1e-1, 1.0)


def curve_runs(rate: float, seeds: int = 6, steps: int = 200, every: int = 20, diverged: int | None = None,
               noise: float = 0.1) -> tuple[SeedRun, ...]:
    """Per seed an exponential decay exp(-rate * step / 50) with multiplicative noise (its own RNG per
    seed); the seed ``diverged`` becomes inf at its 4th evaluation."""
    runs = []
    for seed in range(seeds):
        rng = random.Random(seed)
        eval_steps = list(range(0, steps + 1, every))
        losses = [math.exp(-rate * s / 50) * (1 + noise * rng.random()) for s in eval_steps]
        status = "completed"
        if seed == diverged:
            eval_steps, losses, status = eval_steps[:4], losses[:3] + [math.inf], "diverged"
        runs.append(SeedRun(seed, status, tuple(eval_steps), tuple(losses), 2.0, eval_steps[-1], eval_steps[-1]))
    return tuple(runs)


def record(workload: str, label: str, rate: float, at_edge: bool = False, **kwargs) -> Scored:
    trials = tuple(Trial({"lr": lr}, math.exp(-rate) * (1 + abs(math.log10(lr) + 2)) if lr < 1 else math.inf)
                   for lr in LRS)
    return Scored(workload, label, {"lr": 0.01}, at_edge, 0.5, trials, curve_runs(rate, **kwargs), "someopt")


def scores() -> Scores:
    """The candidate 'mine' is 1.5x faster than 'ref_a' on 'easy' on every seed; on 'hard' it ties
    'ref_a' except one diverged seed; 'ref_b' is slow everywhere and its lr sits at the edge."""
    return Scores().add([
        record("easy", "mine", 1.5), record("easy", "ref_a", 1.0), record("easy", "ref_b", 0.5, at_edge=True),
        record("hard", "mine", 1.0, diverged=2), record("hard", "ref_a", 1.0), record("hard", "ref_b", 0.2),
    ])


@pytest.fixture(scope="module")
def card():
    return build_scorecard("v1", "quick", "mine", ["ref_a", "ref_b"], WORKLOADS, scores(), note=NOTE)


def test_verdicts_steps_and_scores(card):
    assert card.verdicts[("easy", "ref_a")].verdict == "better"
    assert card.verdicts[("easy", "ref_b")].verdict == "better"
    # one diverged seed of five against a tie on the others: no verdict either way
    assert card.verdicts[("hard", "ref_a")].verdict == "no significant difference"
    # steps to target 0.3 of exp(-rate s/50)(1 + noise): mine 60 (rate 1.5), ref_a 80, ref_b 140 (first evals below)
    assert card.times["mine"]["easy"] == 60 and card.times["ref_a"]["easy"] == 80 and card.times["ref_b"]["easy"] == 140
    assert math.isinf(card.times["ref_b"]["hard"])
    assert [label for label, _ in card.ranking()][-1] == "ref_b"
    assert card.profile_scores["mine"] == pytest.approx(1.0)


def test_console_lines_say_the_note_first_then_one_line_per_workload(card):
    lines = console_lines(card)
    assert lines[0] == NOTE
    easy, hard, overall = lines[1:]
    assert easy.startswith("easy ") and "better than ref_a (x" in easy and "better than ref_b" in easy
    assert "steps to target: mine 60, ref_a 80, ref_b 140" in easy
    assert hard.startswith("hard ") and "no significant difference vs ref_a" in hard and "ref_b never" in hard
    assert overall.startswith("score (area under the performance profile") and "mine 1.000" in overall


def test_scorecard_files_contain_the_verdicts_and_their_figures(card, tmp_path):
    out = tmp_path / "score"
    drawn = write_scorecard(card, out)
    markdown = (out / "scorecard.md").read_text()
    page = (out / "index.html").read_text()
    assert markdown.splitlines()[0] == f"> {NOTE}"  # the caveat comes before anything else
    assert NOTE in page
    for text in ("| ref_a | better |", "| ref_a | no significant difference |", "(at the edge!)",
                 "Warning: ref_b on easy"):
        assert text in markdown, text
    assert "<td>better</td>" in page and "<td>no significant difference</td>" in page
    referenced = re.findall(r"\]\((figures/[^)]+\.png)\)", markdown)
    assert sorted(referenced) == sorted(re.findall(r"<img src='(figures/[^']+\.png)'", page))
    assert set(referenced) == {"figures/performance-profile.png", "figures/lr-sensitivity.png",
                               "figures/loss-easy.png", "figures/loss-hard.png"}
    for name in referenced:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(path for path, _ in drawn) == sorted(referenced)


def baseline_results() -> BaselineResults:
    records = [r for r in scores().records.values() if r.label != "mine"]
    return BaselineResults("v1", "quick", 12.5, "a test machine", tuple(records), 30.5, 4, 2)


def test_baseline_results_round_trip(tmp_path):
    results = baseline_results()
    path = write_baselines(tmp_path / "baselines-quick.json", results)
    again = read_baselines(path)
    # the diverged seed's inf is null in strict JSON and inf again once read
    assert again == results
    assert again.covers(["easy", "hard"], ["ref_a", "ref_b"]) and not again.covers(["easy"], ["mine"])
    data = json.loads(path.read_text())
    assert data["workloads"]["easy"]["ref_b"]["seeds"][0]["eval_steps"][:3] == [0, 20, 40]


def test_a_file_that_is_not_baseline_results_is_one_error(tmp_path):
    path = tmp_path / "baselines-quick.json"
    write_baselines(path, baseline_results())
    data = json.loads(path.read_text())
    del data["workloads"]["easy"]["ref_a"]["seeds"][0]["status"]
    path.write_text(json.dumps(data))
    with pytest.raises(ResultsError, match=r"baselines-quick.json is not a baseline results file: missing 'status'"):
        read_baselines(path)


def test_rerun_comparison_flags_a_changed_seed_and_accepts_rounding():
    shipped = baseline_results().records
    rounded = [Scored(r.workload, r.label, r.chosen, r.at_edge, r.sensitivity, r.trials,
                      tuple(SeedRun(s.seed, s.status, s.eval_steps, tuple(v * (1 + 3e-7) for v in s.eval_losses),
                                    s.seconds * 3, s.steps_done, s.gradient_evaluations) for s in r.runs), r.optimizer)
               for r in shipped]
    assert compare_records(shipped, rounded) == []  # float rounding and another machine's wall times
    changed = list(rounded)
    target = changed[0]
    runs = list(target.runs)
    losses = list(runs[3].eval_losses)
    losses[5] *= 1.001
    runs[3] = SeedRun(runs[3].seed, runs[3].status, runs[3].eval_steps, tuple(losses), runs[3].seconds,
                      runs[3].steps_done, runs[3].gradient_evaluations)
    changed[0] = Scored(target.workload, target.label, {"lr": 0.1}, target.at_edge, target.sensitivity,
                        target.trials, tuple(runs), target.optimizer)
    differences = compare_records(shipped, changed)
    assert differences == ["easy/ref_a: chosen lr=0.01 shipped, lr=0.1 rerun",
                           f"easy/ref_a: seed 3: eval loss at step 100: {shipped[0].runs[3].eval_losses[5]!r} "
                           f"shipped, {losses[5]!r} rerun"]


def test_leaderboard_ranks_every_optimizer_and_says_where_it_ran(card):
    board = build_scorecard("v1", "full", None, [], WORKLOADS, scores(), note=None)
    text = leaderboard_markdown(board, BaselineResults("v1", "full", 600.0, "a test machine", ()))
    rows = [line for line in text.splitlines() if re.match(r"\| \d ", line)]
    assert rows[0].startswith("| 1 | mine | 1.000 | 60 | ")
    assert rows[-1].startswith("| 3 | ref_b |") and rows[-1].endswith("| 140 | never |")
    assert "--suite v1` in 10.0 minutes on a test machine." in text
    assert "Targets: easy 0.3, hard 0.05." in text


def test_leaderboard_says_what_its_runs_cost_and_shows_its_figures():
    board = build_scorecard("v1", "full", None, [], WORKLOADS, scores(), note=None)
    results = BaselineResults("v1", "full", 90.0, "here", (), run_seconds=7200.0, executed=3, cached=5)
    figures = [("figures/performance-profile.png", "The profile")]
    text = leaderboard_markdown(board, results, figures=figures)
    assert ("in 1.5 minutes on here: 3 runs executed, 5 found done. The 8 runs' own wall times sum to "
            "2.00 core-hours.") in text
    assert "![The profile](figures/performance-profile.png)" in text


# ------------------------------------------------------------------ the command's bad input
def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, ["score", *args])


def assert_one_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_unknown_optimizer_is_one_error(tmp_path):
    result = invoke("no_such_optimizer", "--out", str(tmp_path / "score"))
    assert_one_error(result, "unknown optimizer 'no_such_optimizer'")
    assert not (tmp_path / "score").exists()


def test_unknown_workload_is_one_error(tmp_path):
    result = invoke("sgd", "--workloads", "no_such_workload", "--out", str(tmp_path / "score"))
    assert_one_error(result, "unknown workload 'no_such_workload'")
    assert not (tmp_path / "score").exists()


def test_unknown_profile_is_one_error(tmp_path):
    result = invoke("sgd", "--profile", "medium", "--out", str(tmp_path / "score"))
    assert_one_error(result, "--profile", "medium")


def test_unknown_reference_is_one_error(tmp_path):
    result = invoke("sgd", "--against", "no_such_baseline", "--out", str(tmp_path / "score"))
    assert_one_error(result, "unknown reference 'no_such_baseline'")


def test_no_optimizer_is_one_error(tmp_path):
    assert_one_error(invoke("--out", str(tmp_path / "score")), "missing OPTIMIZER")


def test_equal_scores_share_a_rank():
    twins = Scores().add([record(w.name, label, 1.0) for w in WORKLOADS for label in ("x", "y")]
                         + [record(w.name, "slow", 0.2) for w in WORKLOADS])
    board = build_scorecard("v1", "full", None, [], WORKLOADS, twins)
    assert [(rank, label) for rank, label, _ in board.ranks()] == [(1, "x"), (1, "y"), (3, "slow")]
    text = leaderboard_markdown(board, BaselineResults("v1", "full", 60.0, "here", ()))
    rows = [line for line in text.splitlines() if re.match(r"\| \d ", line)]
    assert [row.split(" | ")[:2] for row in rows] == [["| 1", "x"], ["| 1", "y"], ["| 3", "slow"]]


def test_the_leaderboards_scorecard_has_no_verdict_table(tmp_path):
    board = build_scorecard("v1", "full", None, [], WORKLOADS, scores(), note=None)
    write_scorecard(board, tmp_path)
    markdown = (tmp_path / "scorecard.md").read_text()
    assert "| optimizer | chosen |" in markdown
    assert "verdict" not in markdown and "None" not in markdown
