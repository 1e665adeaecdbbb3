"""`testbed report` on a small synthetic log directory, and the claims logic on constructed data."""

import json
import math

import pytest
import torch
from click.testing import CliRunner
from torch.utils.tensorboard import SummaryWriter

from testbed.cli.commands import main
from testbed.paper.report import paper_extras
from testbed.report import make_report
from testbed.paper.claims import (FAILS, HOLDS, NOT_JUDGED, UNMEASURED, adam_beats_sgd, condition_ratios, depth, larger_model, noise_ordering)
from testbed.report.data import Experiment, Run

STEPS = [0, 250, 500, 750, 1000, 1250]


def config(task="gamma", layers=3, d=5, attention="linear"):
    return {"task": {"name": task, "d": d, "n": 20, "options": {}},
            "model": {"layers": layers, "parameterization": "block_sparse", "attention": attention},
            "train": {"steps": 1250, "batch_size": 1000, "seeds": [0, 1]}}


def run_record(label, seed, final, proxy, smooth, extra=None):
    diagnostics = {
        "robust_condition_number/proxy": [[s, proxy * (1 + s / 1000)] for s in STEPS],
        "directional_smoothness/value": [[s, smooth] for s in STEPS],
        "sharpness/lambda_max": [[s, 10 * smooth] for s in STEPS],
        **(extra or {}),
    }
    return {"key": f"{label}/seed-{seed}", "label": label, "optimizer": label, "seed": seed, "status": "completed",
            "final_eval_loss": final, "eval_steps": STEPS, "eval_losses": [1.0, 0.5, 0.3, 0.2, 0.15, final],
            "diagnostics": diagnostics, "run_dir": "elsewhere", "lr": {"sgd": 0.02, "adam": 0.01}[label]}


@pytest.fixture
def logdir(tmp_path):
    """One experiment: sgd and adam, 2 seeds, R_med, DS, noise (with its TensorBoard histogram) and
    generalized smoothness."""
    directory = tmp_path / "logs" / "synthetic"
    noise = {"gradient_noise/skewness": [[0, 2.5]], "gradient_noise/excess_kurtosis": [[0, 9.0]]}
    smoothness = {"generalized_smoothness/grad_norm": [[s, 0.1 * (s + 1)] for s in range(10)],
                  "generalized_smoothness/directional_smoothness": [[s, 0.05 * (s + 1) ** 2] for s in range(10)],
                  "generalized_smoothness/correlation": [[9, 0.99]]}
    runs = [run_record("sgd", 0, 0.30, 4.0, 2.0, noise), run_record("sgd", 1, 0.32, 6.0, 3.0),
            run_record("adam", 0, 0.20, 2.0, 0.1, smoothness), run_record("adam", 1, 0.22, 2.0, 0.2)]
    runs[1]["zeroed_steps"] = [500, 750]
    directory.mkdir(parents=True)
    (directory / "results.json").write_text(json.dumps({"experiment": "synthetic", "config": config(), "runs": runs}))
    writer = SummaryWriter(str(directory / "sgd" / "seed-0"))
    writer.add_histogram("diag/gradient_noise/errors", torch.tensor([0.1, 0.2, 0.2, 0.3, 0.9]), 0, bins=10)
    writer.close()
    return tmp_path / "logs"


def test_report_writes_every_figure_and_a_correct_table(logdir, tmp_path):
    out, claims = make_report([logdir], tmp_path / "report", paper_extras())
    names = sorted(p.name for p in (out / "figures").iterdir())
    # The loss, then each figure a standard diagnostic declares: <experiment>-<diagnostic>-<tag>.png
    assert names == [f"synthetic-{kind}.png" for kind in (
        "directional_smoothness-value", "generalized_smoothness-directional_smoothness", "gradient_noise-errors",
        "loss", "robust_condition_number-proxy", "sharpness-lambda_max")]
    assert all((out / "figures" / n).stat().st_size > 5000 for n in names)
    markdown = (out / "report.md").read_text()
    # R_med ratio sgd/adam at step 750: seed 0: 4*1.75 / (2*1.75) = 2, seed 1: 6/2 = 3 -> 2.50 (0.71)
    assert "| synthetic: sgd/adam R_med, mean (std) over seeds | 2.50 (0.71) | 2.50 (0.71) |" in markdown
    assert "| sgd | 0.02 | 2 | 0 | 0.31 | 2.5 |" in markdown  # mean final loss, median DS (medians 2 and 3)
    assert "| adam | 0.01 | 2 | 0 | 0.21 | 0.15 |" in markdown
    assert "Diverged runs" not in markdown
    assert "2 steps in 1 run(s) had a gradient norm that overflowed float32" in markdown
    for name in names:
        assert f"figures/{name}" in markdown and f"figures/{name}" in (out / "index.html").read_text()
    verdicts = {c.title: c.verdict for c in claims}
    assert verdicts[ADAM_CLAIM] == HOLDS
    assert verdicts["SGD's trajectory has a larger robust condition number than Adam's (L = 3 linear attention)"] == HOLDS
    assert verdicts["Adam's directional smoothness is smaller than SGD's"] == HOLDS
    assert verdicts["log gradient norm and log directional smoothness are positively correlated"] == HOLDS
    for precision in ("float32 (the authors' precision)", "float64"):
        assert verdicts[f"A larger model (L = 8, d = 20, n = 60) behaves the same way (Adam ahead), in {precision}"] == UNMEASURED


def test_report_command(logdir, tmp_path):
    result = CliRunner().invoke(main, ["report", str(logdir), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "holds" in result.output and (tmp_path / "r" / "index.html").exists()


def test_report_on_a_directory_without_results(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.count("Error:") == 1 and "no results.json" in result.output


def experiment(name, finals, cfg=None, extra=None):
    e = Experiment(name, None, cfg or config())
    for label, losses in finals.items():
        for seed, loss in enumerate(losses):
            e.runs.append(Run(label, seed, "completed", loss, [0, 100], [1.0, loss],
                              (extra or {}).get(label, {}), "nowhere"))
    return e


ADAM_CLAIM = "Adam reaches a lower eval loss than SGD with momentum (L = 3 linear attention: Settings 1-3, spherical)"


def test_claim_that_holds_and_one_that_does_not():
    holds = adam_beats_sgd([experiment("a", {"sgd": [0.3, 0.4], "adam": [0.1, 0.2]})])
    fails = adam_beats_sgd([experiment("a", {"sgd": [0.3, 0.4], "adam": [0.1, 0.2]}),
                            experiment("b", {"sgd": [0.1], "adam": [0.5]})])
    assert holds.verdict == HOLDS and "SGD/Adam 2.33" in holds.evidence
    assert fails.verdict == FAILS and "b: Adam 0.5 vs SGD 0.1" in fails.evidence
    assert adam_beats_sgd([experiment("c", {"lion": [0.1]})]).verdict == UNMEASURED
    # Softmax attention (or another depth) has a claim of its own: a tie there does not count here.
    softmax = experiment("s", {"sgd": [3.9], "adam": [3.9]}, config(attention="softmax"))
    assert adam_beats_sgd([experiment("a", {"sgd": [0.3], "adam": [0.1]}), softmax]).verdict == HOLDS


def test_noise_ordering_and_depth_claims():
    def noisy(task, skew):
        return experiment(task, {"sgd": [0.1]}, config(task),
                          {"sgd": {"gradient_noise/skewness": [[0, skew]]}})
    ordered = noise_ordering([noisy("gamma", 3.0), noisy("gaussian", 0.6), noisy("spherical", 0.2)])
    unordered = noise_ordering([noisy("gamma", 0.1), noisy("gaussian", 0.6), noisy("spherical", 0.2)])
    assert ordered.verdict == HOLDS and unordered.verdict == FAILS
    deeper_better = [experiment(f"L{L}", {"sgd": [s], "adam": [a]}, config("gaussian", L))
                     for L, s, a in ((2, 0.4, 0.3), (4, 0.3, 0.1), (8, 0.2, 0.02))]
    assert depth(deeper_better).verdict == HOLDS
    gap_shrinks = [experiment(f"L{L}", {"sgd": [s], "adam": [a]}, config("gaussian", L))
                   for L, s, a in ((2, 0.4, 0.1), (4, 0.3, 0.2))]
    result = depth(gap_shrinks)
    assert result.verdict == FAILS and "L=2" in result.evidence
    # With tuned depth-study experiments at two depths or more, a fixed-rate one (L = 3) is left out.
    tuned = [experiment(f"L{L}", {"sgd": [s], "adam": [a]}, {**config("gaussian", L), "optimizers": [
        {"name": "sgd", "tune": {"lr": [0.1]}}, {"name": "adam", "tune": {"lr": [0.1]}}]})
        for L, s, a in ((2, 0.4, 0.3), (4, 0.3, 0.1))]
    fixed = experiment("L3", {"sgd": [0.01], "adam": [0.001]}, config("gaussian", 3))
    result = depth(tuned + [fixed])
    assert result.verdict == HOLDS and "L=3" not in result.evidence


def diverge(e, label, at=100, on="loss"):
    for run in e.runs_of(label):
        run.status, run.final_eval_loss, run.diverged_at, run.diverged_on = "diverged", None, at, on
    return e


def test_the_divergence_paragraph_says_where_and_on_what():
    from testbed.report import divergence_paragraph

    e = experiment("deep", {"sgd": [0.1, 0.2], "adam": [0.1, 0.2]})
    assert divergence_paragraph(e) is None
    diverge(e, "adam", at=300, on="gradient")
    e.runs[-1].diverged_at, e.runs[-1].diverged_on = 1200, "loss"
    assert divergence_paragraph(e) == "Diverged runs: adam 2 of 2 (steps 300-1200; non-finite gradient 1, loss 1)."


def test_a_depth_where_every_run_of_an_optimizer_diverged_is_not_judged():
    study = [experiment(f"L{L}", {"sgd": [s, s], "adam": [a, a]}, config("gaussian", L))
             for L, s, a in ((2, 0.4, 0.3), (4, 0.3, 0.1), (6, 0.2, 0.02))]
    assert depth(study).verdict == HOLDS
    diverge(study[2], "adam")
    study[2].runs[0].status, study[2].runs[0].final_eval_loss = "diverged", None  # one SGD seed too
    result = depth(study)  # fewer than half of Adam's runs at L = 6 completed: no verdict on the survivors
    assert result.verdict == NOT_JUDGED and result.evidence.startswith("not judged: 3 of 12 runs diverged")
    assert "L=6: SGD 0.2 (1 of 2 diverged), Adam no run finished (2 of 2 diverged)" in result.evidence
    assert "L=4: SGD 0.3, Adam 0.1, SGD/Adam 3.00" in result.evidence
    large = experiment("big", {"sgd": [0.2], "adam": [0.1]}, config("gaussian", 8, d=20))
    assert larger_model([large]).verdict == HOLDS
    result = larger_model([diverge(large, "adam")])
    assert result.verdict == NOT_JUDGED and "Adam no run finished (1 of 1 diverged) vs SGD 0.2" in result.evidence


def test_condition_ratios_pair_by_seed():
    e = experiment("x", {"sgd": [0.1, 0.1], "adam": [0.1, 0.1]})
    for run, value in zip(e.runs, (9.0, 3.0, 3.0, 1.0)):  # sgd seeds 0, 1; adam seeds 0, 1
        run.diagnostics["robust_condition_number/proxy"] = [[750, value]]
    mean, std, count = condition_ratios(e, (750,), "sgd", "adam")[750]
    assert (mean, count) == (3.0, 2) and math.isclose(std, 0.0)


def test_condition_gap_claims_on_constructed_ratios():
    from testbed.paper.claims import condition_gap_depth, condition_gap_heavy_tails

    def with_ratio(name, cfg, ratio):
        e = experiment(name, {"sgd": [0.1], "adam": [0.1]}, cfg)
        e.runs[0].diagnostics["robust_condition_number/proxy"] = [[750, ratio], [1250, ratio]]
        e.runs[1].diagnostics["robust_condition_number/proxy"] = [[750, 1.0], [1250, 1.0]]
        return e

    heavier = [with_ratio("s3", config("gamma"), 3.0), with_ratio("s1", config("gaussian"), 1.5)]
    assert condition_gap_heavy_tails(heavier, (750, 1250)).verdict == HOLDS
    lighter = [with_ratio("s3", config("gamma"), 1.2), with_ratio("s1", config("gaussian"), 1.5)]
    result = condition_gap_heavy_tails(lighter, (750, 1250))
    assert result.verdict == FAILS and "gamma 1.20, gaussian 1.50" in result.evidence
    growing = [with_ratio(f"L{L}", config("gaussian", L), r) for L, r in ((2, 1.1), (4, 2.0), (8, 4.0))]
    assert condition_gap_depth(growing, (750, 1250)).verdict == HOLDS
    shrinking = [with_ratio(f"L{L}", config("gaussian", L), r) for L, r in ((2, 2.0), (4, 1.0))]
    assert condition_gap_depth(shrinking, (750, 1250)).verdict == FAILS
    assert condition_gap_depth(growing[:1], (750, 1250)).verdict == UNMEASURED


def test_condition_number_claim_is_the_papers_table_only():
    from testbed.paper.claims import condition_number

    def with_ratio(name, cfg, ratio):
        e = experiment(name, {"sgd": [0.1], "adam": [0.1]}, cfg)
        e.runs[0].diagnostics["robust_condition_number/proxy"] = [[750, ratio]]
        e.runs[1].diagnostics["robust_condition_number/proxy"] = [[750, 1.0]]
        return e

    main_comparison = with_ratio("s1", config("gaussian"), 2.0)
    depth_two = with_ratio("L2", config("gaussian", 2), 0.9)  # judged by the depth claim instead
    result = condition_number([main_comparison, depth_two], (750,))
    assert result.verdict == HOLDS and "L2" not in result.evidence
    assert condition_number([with_ratio("s1", config("gaussian"), 0.5)], (750,)).verdict == FAILS


def test_figures_show_runs_that_all_diverged(tmp_path):
    from testbed.report.figures import diagnostic_curves, loss_curves

    e = diverge(experiment("deep", {"adam": [0.1, 0.2]}, extra={"adam": {"sharpness/lambda_max": [[0, 2.0]]}}), "adam")
    for path in (loss_curves(e, tmp_path / "loss.png"),
                 diagnostic_curves(e, "sharpness/lambda_max", "lambda_max", tmp_path / "sharpness.png")):
        assert path is not None and path.read_bytes().startswith(b"\x89PNG")
