"""The deep experiments in both precisions (issue 15 item 4): the suite's float64 files are twins of
their float32 ones, and the report gives the depth and larger-model claims a verdict per precision,
each with its evidence. Real tiny runs through `testbed reproduce --quick`."""

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from testbed.cli.commands import main
from testbed.paper.reproduce import SUITE, suite_configs

DEPTH = "More layers: lower loss for both optimizers and a larger Adam-SGD gap"
LARGER = "A larger model (L = 8, d = 20, n = 60) behaves the same way (Adam ahead)"
FLOAT32, FLOAT64 = "in float32 (the authors' precision)", "in float64"


def test_each_float64_file_is_its_float32_twin_but_for_the_precision():
    twins = sorted(SUITE.glob("*_float64.yaml"))
    assert {p.stem for p in twins} == {"depth_L6_float64", "depth_L8_float64", "larger_model_float64"}
    for path in twins:
        wide = yaml.safe_load(path.read_text())
        narrow = yaml.safe_load((SUITE / path.name.replace("_float64", "")).read_text())
        assert wide["train"].pop("dtype") == "float64" and "dtype" not in narrow["train"]
        assert wide.pop("name") == narrow.pop("name") + "_float64"
        assert wide == narrow


def test_the_quick_profile_keeps_the_float64_experiments(registry):
    from testbed.plugins import load_plugins

    dtypes = {c.name: c.train.dtype for c in suite_configs(load_plugins(), quick=True)}
    for name in ("depth_L6", "depth_L8", "larger_model"):
        assert (dtypes[f"paper_{name}"], dtypes[f"paper_{name}_float64"]) == ("float32", "float64")


def experiment(name: str, layers: int, adam_lr: float, dtype: str | None = None, d: int = 5, n: int = 20) -> dict:
    """A tiny paper-shaped experiment: SGDM and Adam, 2 seeds, 20 steps of 64 prompts."""
    train = {"steps": 20, "batch_size": 64, "clip_grad_norm": 1.0, "seeds": 2, **({"dtype": dtype} if dtype else {})}
    return {"name": name, "task": {"name": "gaussian", "d": d, "n": n},
            "model": {"layers": layers, "parameterization": "block_sparse", "attention": "linear", "init_std": 0.05},
            "train": train, "eval": {"every": 10, "batch_size": 64, "seed": 99},
            "optimizers": [{"name": "sgd", "lr": 0.01, "options": {"momentum": 0.9}},
                           {"name": "adam", "lr": adam_lr, "options": {"betas": [0.9, 0.9]}}]}


@pytest.fixture(scope="module")
def reproduction(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A tiny depth study and larger model, reproduced: at L = 6 Adam's lr 0.1 overflows float32
    (every Adam run diverges) and trains in float64, as the paper's deep runs do."""
    root = tmp_path_factory.mktemp("float64")
    suite = root / "suite"
    suite.mkdir()
    for config in (experiment("paper_depth_L2", 2, 0.01), experiment("paper_depth_L6", 6, 0.1),
                   experiment("paper_depth_L6_float64", 6, 0.1, "float64"),
                   experiment("paper_larger", 8, 0.001, d=20, n=60),
                   experiment("paper_larger_float64", 8, 0.001, "float64", d=20, n=60)):
        (suite / f"{config['name']}.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(main, ["reproduce", "--quick", "--suite", str(suite), "--out", str(root / "out"),
                                       "--workers", "1"])
    assert result.exit_code == 0, result.output
    return result.output, root / "out" / "report"


def claim_rows(report: Path) -> dict[str, tuple[str, str]]:
    """{claim title: (verdict, evidence)} from report.md's claims table."""
    rows = {}
    for line in (report / "report.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 3 and cells[1].startswith("**"):
            rows[cells[0]] = (cells[1].strip("*"), cells[2])
    return rows


def test_the_depth_claim_has_a_verdict_in_each_precision(reproduction):
    output, report = reproduction
    rows = claim_rows(report)
    verdict, evidence = rows[f"{DEPTH}, {FLOAT32}"]
    assert verdict == "not judged" and evidence.startswith("not judged: 2 of 8 runs diverged")
    assert "L=6: SGD" in evidence and "Adam no run finished (2 of 2 diverged)" in evidence
    verdict, evidence = rows[f"{DEPTH}, {FLOAT64}"]
    assert verdict in ("holds", "does not hold") and "diverged" not in evidence
    assert "L=2 in float32 (no float64 runs)" in evidence and "SGD/Adam" in evidence.split("L=6:")[1]
    # The console lists both verdicts too.
    assert f"not judged  {DEPTH}, {FLOAT32}" in output
    assert f"{verdict:>13}  {DEPTH}, {FLOAT64}" in output


def test_the_larger_model_claim_has_a_verdict_in_each_precision(reproduction):
    _, report = reproduction
    rows = claim_rows(report)
    for precision, name in ((FLOAT32, "paper_larger"), (FLOAT64, "paper_larger_float64")):
        verdict, evidence = rows[f"{LARGER}, {precision}"]
        assert verdict in ("holds", "does not hold") and evidence.startswith(f"{name}: Adam ")
    page = (report / "index.html").read_text()
    assert f"{LARGER}, in float64" in page and "class='not-judged'" in page
