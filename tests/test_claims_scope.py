"""The paper's claims in `testbed report` use only the experiments they are about (issue 14, point 11):
a plugin's task (a Gaussian mixture), a standard task with other options than the paper's, or a model
other than the paper's is no evidence for "Adam < SGD in Settings 1-3", even with sgd and adam runs."""

from __future__ import annotations

import json
from pathlib import Path

from testbed.paper.claims import paper_experiment
from testbed.paper.report import paper_extras
from testbed.report import make_report
from testbed.report.data import Experiment
from testbed.report.render import FAILS, HOLDS, UNMEASURED

ADAM_CLAIM = "Adam reaches a lower eval loss than SGD with momentum (L = 3 linear attention: Settings 1-3, spherical)"
SMOOTHNESS_CLAIM = "Adam's directional smoothness is smaller than SGD's"
STEPS = [0, 250, 500]


def setting3(**task_options) -> dict:
    """Setting 3's config as a results.json holds it (every option resolved), with ``task_options`` changed."""
    return {"task": {"name": "gamma", "d": 5, "n": 20,
                     "options": {"shape": 0.1, "scale": None, "label_noise": 0.0, **task_options}},
            "model": {"layers": 3, "parameterization": "block_sparse", "attention": "linear", "init_std": 0.05,
                      "feature_map": None},
            "optimizers": [{"name": "sgd", "label": "sgd", "lr": 0.02, "options": {"momentum": 0.9}},
                           {"name": "adam", "label": "adam", "lr": 0.02, "options": {"betas": [0.9, 0.9]}}],
            "train": {"steps": 500, "batch_size": 64, "seeds": [0, 1]}}


def mixture() -> dict:
    """A plugin's task with the paper's shape of experiment (d = 5, L = 3, sgd and adam)."""
    config = setting3()
    config["task"] = {"name": "gaussian_mixture", "d": 5, "n": 20, "options": {"components": 3}}
    return config


def write_experiment(root: Path, name: str, config: dict, sgd: float, adam: float) -> None:
    """A results.json of two seeds per optimizer, final eval losses ``sgd`` and ``adam``, and the
    directional smoothness ordered as the losses are."""
    runs = []
    for label, final in (("sgd", sgd), ("adam", adam)):
        for seed in (0, 1):
            runs.append({"key": f"{label}/seed-{seed}", "label": label, "optimizer": label, "seed": seed,
                         "status": "completed", "final_eval_loss": final, "eval_steps": STEPS,
                         "eval_losses": [1.0, 0.5, final], "run_dir": "elsewhere", "lr": 0.02,
                         "diagnostics": {"directional_smoothness/value": [[s, final] for s in STEPS]}})
    directory = root / name
    directory.mkdir(parents=True)
    (directory / "results.json").write_text(json.dumps({"experiment": name, "config": config, "runs": runs}))


def claims_of(root: Path, out: Path) -> dict[str, tuple[str, str]]:
    _, claims = make_report([root], out, paper_extras())
    return {claim.title: (claim.verdict, claim.evidence) for claim in claims}


def test_a_plugin_task_is_no_evidence_for_the_papers_claims(tmp_path):
    logs = tmp_path / "logs"
    write_experiment(logs, "setting3", setting3(), sgd=0.3, adam=0.1)  # the paper's: Adam ahead
    write_experiment(logs, "mixture", mixture(), sgd=0.1, adam=0.3)  # a plugin task: SGD ahead
    claims = claims_of(logs, tmp_path / "report")
    verdict, evidence = claims[ADAM_CLAIM]
    assert verdict == HOLDS, evidence
    assert "setting3" in evidence and "mixture" not in evidence
    verdict, evidence = claims[SMOOTHNESS_CLAIM]
    assert verdict == HOLDS and "mixture" not in evidence, evidence


def test_only_a_plugin_task_leaves_the_claims_unmeasured(tmp_path):
    logs = tmp_path / "logs"
    write_experiment(logs, "mixture", mixture(), sgd=0.1, adam=0.3)
    claims = claims_of(logs, tmp_path / "report")
    assert claims[ADAM_CLAIM][0] == UNMEASURED and claims[SMOOTHNESS_CLAIM][0] == UNMEASURED
    assert all(verdict == UNMEASURED for verdict, _ in claims.values()), claims


def test_the_paper_experiment_alone_still_decides(tmp_path):
    logs = tmp_path / "logs"
    write_experiment(logs, "setting3", setting3(), sgd=0.1, adam=0.3)
    assert claims_of(logs, tmp_path / "report")[ADAM_CLAIM][0] == FAILS


def paper(config: dict) -> bool:
    return paper_experiment(Experiment("x", None, config))


def test_the_papers_settings_are_told_by_task_options_model_and_optimizers():
    assert paper(setting3())
    assert not paper(mixture())
    assert not paper(setting3(shape=0.5))  # a lighter tail than the paper's Setting 3
    assert not paper(setting3(label_noise=0.1))
    other_init = setting3()
    other_init["model"]["init_std"] = 0.5
    assert not paper(other_init)
    feature_map = setting3()
    feature_map["model"]["feature_map"] = {"hidden": [30], "out_dim": None}
    assert not paper(feature_map)
    renamed = setting3()
    renamed["optimizers"][1] = {"name": "lion", "label": "adam", "lr": 0.02, "options": {}}  # labelled adam
    assert not paper(renamed)
    sparse = {"task": {"name": "gaussian", "d": 5, "n": 20, "options": {}},  # options left out: the defaults
              "model": {"layers": 3, "parameterization": "block_sparse", "attention": "softmax"}}
    assert paper(sparse)
    nonlinear = {"task": {"name": "nonlinear", "d": 5, "n": 20,
                          "options": {"hidden": 10, "teacher_seed": 3, "label_noise": 0.0}},
                 "model": {"layers": 3, "parameterization": "full", "attention": "linear",
                           "feature_map": {"hidden": [30], "out_dim": None}}}
    assert paper(nonlinear)
