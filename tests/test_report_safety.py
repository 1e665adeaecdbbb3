"""`testbed report` and `testbed reproduce` on hostile or broken input (issue 11, defects 2, 13, 15).

Names read from results.json never make a path outside --out; a report directory that cannot be
written, or a results.json that is not what testbed writes, gives one line and exit 1 (or the bad
experiment is skipped with one line when others are fine); unfinished runs are named; a quick
reproduction says on the page and on the console that its verdicts test the pipeline, not the paper."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from testbed.cli.commands import main
from testbed.experiment.config import parse_config
from testbed.errors import TestbedError
from testbed.files.safe_paths import path_under, safe_filename
from testbed.paper.reproduce import record_profile

from shared_fixtures import TINY

STEPS = [0, 50, 100]


def config() -> dict:
    return {"task": {"name": "gaussian", "d": 5, "n": 20, "options": {}},
            "model": {"layers": 3, "parameterization": "block_sparse", "attention": "linear"},
            "train": {"steps": 100, "batch_size": 100, "seeds": [0, 1]},
            "optimizers": [{"name": "sgd", "lr": 0.02}, {"name": "adam", "lr": 0.01}]}


def run(label: str, seed: int, final: float, lr: float = 0.01, status: str = "completed", **extra) -> dict:
    return {"key": f"{label}/seed-{seed}", "label": label, "optimizer": label, "seed": seed, "status": status,
            "final_eval_loss": final if status == "completed" else None, "eval_steps": STEPS,
            "eval_losses": [1.0, 0.5, final], "diagnostics": {}, "lr": lr, **extra}


def results(name: str, **fields) -> dict:
    runs = [run("sgd", 0, 0.3, 0.02), run("sgd", 1, 0.32, 0.02), run("adam", 0, 0.2), run("adam", 1, 0.22)]
    return {"experiment": name, "status": "complete", "config": config(), "runs": runs, **fields}


def write_experiment(directory: Path, data) -> Path:
    """results.json in ``directory``: ``data`` as JSON, or the text or bytes given."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "results.json"
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else json.dumps(data))
    return directory


def with_run_field(key: str, value) -> str:
    data = results("e")
    data["runs"][0][key] = value
    return json.dumps(data)


def report(*args: str) -> Result:
    result = CliRunner().invoke(main, ["report", *args])
    # An exception other than SystemExit reaching the runner is a traceback for a user.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def assert_one_error_line(result: Result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ------------------------------------------------------------------ defect 2: paths from file contents
def test_a_file_name_from_untrusted_text_stays_one_plain_name():
    assert safe_filename("paper_setting1") == "paper_setting1"  # ordinary names are kept as they are
    assert safe_filename("task.n=10,sgd.lr=0.005") == "task.n=10,sgd.lr=0.005"
    for hostile in ["../../x", "..", ".", "/etc/passwd", "a/b", "a\\b", "", "x" * 1000, "\x00", "é\ud800"]:
        name = safe_filename(hostile)
        assert name and "/" not in name and "\\" not in name and not name.startswith(".")
        assert len(name.encode()) <= 200
    # Two texts that differ never share a file name.
    assert safe_filename("a/b") != safe_filename("a_b") != safe_filename("a\\b")


def test_a_path_under_a_root_may_not_leave_it(tmp_path):
    assert path_under(tmp_path, "a", "seed-0") == tmp_path / "a" / "seed-0"
    for parts in [("..",), ("a", "..", "..", "x"), ("/etc",), ("a", "/b")]:
        with pytest.raises(TestbedError, match="outside"):
            path_under(tmp_path, *parts)


def test_names_from_results_never_write_outside_out(tmp_path):
    logs = tmp_path / "deep" / "er" / "logs"
    # A sweep named to climb out of figures/: two points, so that it gets a sensitivity figure.
    for index, lr in enumerate([0.01, 0.02]):
        data = results(f"../../x/{index}", sweep="../../x", point={"optimizers.adam.lr": lr})
        for r in data["runs"]:
            r["lr"] = lr if r["label"] == "adam" else 0.02
        write_experiment(logs / f"point{index}", data)
    for index, name in enumerate(["..", "../escape", "/tmp/absolute", "a/b"]):
        write_experiment(logs / f"e{index}", results(name))
    out = tmp_path / "deep" / "er" / "out"
    before = files_under(tmp_path)
    result = report(str(logs), "--out", str(out))
    assert result.exit_code == 0, result.output
    created = files_under(tmp_path) - before
    assert created and all(p == out or p.is_relative_to(out) for p in created), sorted(created)
    figures = {p.name for p in (out / "figures").iterdir()}
    assert sum(name.endswith("-loss.png") for name in figures) == 4  # one per experiment: none overwrote another
    assert sum(name.endswith("-lr-sensitivity.png") for name in figures) == 1
    markdown = (out / "report.md").read_text()
    assert all(f"figures/{name}" in markdown for name in figures)


def test_a_run_label_that_climbs_out_of_its_experiment_is_not_followed(tmp_path):
    data = results("climb")
    data["runs"][0]["label"] = "../../elsewhere"
    logs = tmp_path / "logs"
    write_experiment(logs / "climb", data)
    write_experiment(logs / "fine", results("fine"))
    result = report(str(logs), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert "climb" in result.output and "outside" in result.output  # skipped, with its reason
    assert "## fine" in (tmp_path / "out" / "report.md").read_text()


# ------------------------------------------------------------------ defect 13: report side
def test_out_under_a_regular_file_is_one_error_line(tmp_path):
    logs = write_experiment(tmp_path / "logs" / "e", results("e"))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert_one_error_line(report(str(logs), "--out", str(blocker / "report")), "cannot write", str(blocker))


def test_out_under_proc_is_one_error_line(tmp_path):
    logs = write_experiment(tmp_path / "logs" / "e", results("e"))
    assert_one_error_line(report(str(logs), "--out", "/proc/testbed-report"), "cannot write", "/proc/testbed-report")


@pytest.mark.parametrize("content, fragment", [
    ("[1, 2, 3]", "not a JSON object"),
    ('{"experiment": "e", "config": {"task": ', "cannot read"),
    (json.dumps({k: v for k, v in results("e").items() if k != "config"}), "'config'"),
    (json.dumps({**results("e"), "runs": [{"label": "sgd", "status": "completed"}]}), "'seed'"),
    (json.dumps({**results("e"), "runs": {"sgd": 1}}), "'runs'"),
    (json.dumps({**results("e"), "config": {**config(), "task": {"name": "gaussian"}}}), "'d'"),
    (json.dumps({**results("e"), "experiment": 7}), "'experiment'"),
    (with_run_field("final_eval_loss", "low"), "'final_eval_loss' is a string"),
    (with_run_field("final_eval_loss", 10 ** 400), "final_eval_loss"),
    (with_run_field("eval_losses", [1.0, -2.0]), "eval_losses"),
    (with_run_field("diagnostics", {"x/y": [[0]]}), "'x/y'"),
    (with_run_field("seed", True), "'seed' is a boolean"),
    (json.dumps(results("e")).replace('"experiment": "e"', '"experiment": "\\ud800"'), "not valid Unicode"),
    (b'{"experiment": "\xff"}', "cannot read"),
    ("[" * 100_000 + "]" * 100_000, "cannot read"),
])
def test_a_broken_results_file_alone_is_one_error_line(tmp_path, content, fragment):
    path = tmp_path / "logs" / "e" / "results.json"
    write_experiment(path.parent, content)
    result = report(str(tmp_path / "logs"), "--out", str(tmp_path / "out"))
    assert_one_error_line(result, str(path), fragment)


def test_a_broken_experiment_is_skipped_with_one_line_when_others_are_fine(tmp_path):
    logs = tmp_path / "logs"
    write_experiment(logs / "bad", "[]")
    write_experiment(logs / "good", results("good"))
    result = report(str(logs), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if "bad" in line]
    assert len(warnings) == 1 and warnings[0].startswith("Warning: skipped ") and "not a JSON object" in warnings[0]
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "## good" in markdown and "Skipped" in markdown and str(logs / "bad" / "results.json") in markdown


def test_interrupted_and_failed_runs_are_named_on_the_console_and_the_page(tmp_path):
    data = results("partial", status="interrupted")
    data["runs"][1] = run("sgd", 1, 0.0, 0.02, status="interrupted", error="not started")
    data["runs"][2] = run("adam", 0, 0.0, status="failed", error="RuntimeError: boom")
    write_experiment(tmp_path / "logs" / "partial", data)
    result = report(str(tmp_path / "logs"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("partial:"))
    assert "sgd seed 1 interrupted" in line and "adam seed 0 failed (RuntimeError: boom)" in line
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "sgd seed 1 interrupted (not started)" in markdown and "adam seed 0 failed (RuntimeError: boom)" in markdown
    assert "The experiment was interrupted" in markdown
    assert "adam seed 0 failed (RuntimeError: boom)" in (tmp_path / "out" / "index.html").read_text()


# ------------------------------------------------------------------ defect 15: the profile on the page
def first_paragraph(markdown: str) -> str:
    """The first paragraph under the page's title."""
    return [line for line in markdown.splitlines() if line.strip()][1]


# A quick reproduction's own page and console: tests/test_reproduce.py::test_reproduce_quick_smoke.
def test_the_profile_record_applies_only_to_the_config_it_names(tmp_path, registry):
    """`testbed report` on a reproduction's runs knows their profile from what reproduce recorded."""
    logs = tmp_path / "logs"
    for name, profile in [("a", "full"), ("b", "quick")]:
        experiment = parse_config({**TINY, "name": name}, registry)
        data = results(name)
        data["config"] = json.loads(json.dumps(experiment.to_dict()))
        write_experiment(logs / name, data)
        record_profile(logs, experiment, profile)
    only_full = report(str(logs / "a"), "--out", str(tmp_path / "r1"))
    assert only_full.exit_code == 0, only_full.output
    assert first_paragraph((tmp_path / "r1" / "report.md").read_text()).startswith("Full profile (testbed reproduce)")
    mixed = report(str(logs), "--out", str(tmp_path / "r2"))
    assert mixed.exit_code == 0 and "test the pipeline, not the paper" in mixed.output, mixed.output
    page = (tmp_path / "r2" / "report.md").read_text()
    assert "test the pipeline, not the paper. Experiments: b." in page and "states it. Experiments: a." in page
    # A later `testbed run` into the same directory is no reproduction: the record no longer applies.
    data = json.loads((logs / "b" / "results.json").read_text())
    data["config"]["train"]["steps"] = 21
    write_experiment(logs / "b", data)
    later = report(str(logs / "b"), "--out", str(tmp_path / "r3"))
    assert later.exit_code == 0 and "Quick profile" not in later.output
    assert "Quick profile" not in (tmp_path / "r3" / "report.md").read_text()
