"""The `testbed` command end to end (click's CliRunner, tiny runs): run, validate, plugins, list;
every bad input is exit 1 with one "Error:" line, no traceback and nothing written."""

from __future__ import annotations

import io
import json
import math
import statistics
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from testbed import __version__
from testbed.cli.commands import main
from testbed.cli.progress import Progress

HEADER = "final eval loss (mean ± std)"

# A registering plugin, loaded through $TESTBED_PLUGINS (also by spawned workers).
EXTRA_OPTIMIZER = """
    import torch
    from testbed import Option, hookimpl

    @hookimpl
    def register_optimizers(register):
        register("plainsgd", lambda params, lr, momentum: torch.optim.SGD(params, lr=lr, momentum=momentum),
                 options={"momentum": Option(0.0, "momentum", min=0.0)}, doc="SGD from a test plugin")
"""


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def errors_of(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("Error:")]


def assert_one_error(result: Result, *fragments: str) -> str:
    """Exit 1, exactly one 'Error:' line (on stderr) containing every fragment, no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output
    (line,) = errors_of(result)
    assert line in result.stderr.splitlines()
    for fragment in fragments:
        assert fragment in line, line
    return line


def assert_nothing_written(logdir: Path, cwd: Path) -> None:
    assert not logdir.exists() or not any(logdir.rglob("*")), sorted(logdir.rglob("*"))
    assert not (cwd / "runs").exists()  # the default logdir was not used either
    assert not list(cwd.rglob("results.json"))
    assert not list(cwd.rglob("events.out.tfevents.*"))


@pytest.fixture
def logdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path / "logs"


@pytest.fixture
def config_path(write_yaml, tiny_raw) -> Path:
    return write_yaml(tiny_raw)


def load_results(logdir: Path, name: str = "tiny") -> dict:
    return json.loads((logdir / name / "results.json").read_text())


# ---------------------------------------------------------------- run
def test_run(config_path, logdir):
    result = invoke("run", config_path, "--logdir", logdir, "--set", "train.steps=25")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and not errors_of(result)
    out = result.stdout
    assert "experiment tiny: 4 runs (2 optimizers x 2 seeds), 25 steps each" in out
    table = out[out.index("optimizer  runs"):].splitlines()
    assert HEADER in table[0] and "diverged" in table[0]
    assert table[1].startswith("---------")
    assert table[2].split()[:2] == ["sgd", "2"] and table[3].split()[:2] == ["adam", "2"]
    assert "0/2" in table[2] and "0/2" in table[3]
    assert "complete in" in out
    # the non-tty progress display prints a line per finished run, on stderr
    assert "run sgd/seed-0 completed" in result.stderr and "4/4 runs done" in result.stderr

    directory = logdir / "tiny"
    data = load_results(logdir)
    assert data["experiment"] == "tiny" and data["status"] == "complete"
    assert data["versions"]["testbed"] == __version__ and "torch" in data["versions"]
    assert data["config"]["train"]["steps"] == 25 and data["config"]["train"]["seeds"] == [0, 1]
    runs = data["runs"]
    assert [r["key"] for r in runs] == ["sgd/seed-0", "adam/seed-0", "sgd/seed-1", "adam/seed-1"]
    for run in runs:
        assert run["status"] == "completed" and run["steps_done"] == 25
        assert isinstance(run["final_eval_loss"], float) and math.isfinite(run["final_eval_loss"])
        assert run["final_eval_loss"] == run["eval_losses"][-1]
        assert run["eval_steps"] == [0, 10, 20, 25]
        assert run["diverged_at"] is None and run["error"] is None
        run_dir = directory / run["label"] / f"seed-{run['seed']}"
        assert Path(run["run_dir"]).resolve() == run_dir.resolve()
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["final_eval_loss"] == run["final_eval_loss"]
        assert yaml.safe_load((run_dir / "config.yaml").read_text()) == data["config"]
        assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    # same seed: same init and the same prompts, so the step-0 eval loss is shared by the optimizers
    assert runs[0]["eval_losses"][0] == runs[1]["eval_losses"][0]

    rows = {row["label"]: row for row in data["summary"]}
    assert list(rows) == ["sgd", "adam"]
    for label, row in rows.items():
        finals = [r["final_eval_loss"] for r in runs if r["label"] == label]
        assert (row["runs"], row["completed"], row["diverged"], row["failed"]) == (2, 2, 0, 0)
        assert row["final_mean"] == pytest.approx(statistics.fmean(finals))
        assert row["final_std"] == pytest.approx(statistics.stdev(finals))
        assert f"{row['final_mean']:.4e}" in out


def test_run_in_worker_processes_matches_one_process(tmp_path, write_yaml, tiny_raw, plugin_module, logdir):
    """Two spawned workers (which load $TESTBED_PLUGINS themselves) give bit-identical results."""
    plugin_module("extra_optimizer_plugin", EXTRA_OPTIMIZER)
    tiny_raw["optimizers"].append({"name": "plainsgd", "lr": 0.01, "options": {"momentum": 0.5}})
    config = write_yaml(tiny_raw)
    one = invoke("run", config, "--logdir", logdir / "one", "--workers", "1")
    two = invoke("run", config, "--logdir", logdir / "two", "--workers", "2")
    for result in (one, two):
        assert result.exit_code == 0, result.output
        assert "Traceback" not in result.output
    first, second = load_results(logdir / "one"), load_results(logdir / "two")
    assert second["status"] == "complete" and len(second["runs"]) == 6
    assert {r["status"] for r in second["runs"]} == {"completed"}
    losses = lambda data: {r["key"]: (r["final_eval_loss"], r["eval_losses"]) for r in data["runs"]}  # noqa: E731
    assert losses(first) == losses(second)
    assert first["summary"] == second["summary"]
    assert second["versions"]["extra_optimizer_plugin"] == "$TESTBED_PLUGINS -"


def test_diverging_run_is_recorded_not_a_crash(write_yaml, tiny_raw, logdir):
    tiny_raw["train"]["seeds"] = 1
    config = write_yaml(tiny_raw)
    result = invoke("run", config, "--logdir", logdir, "--set", "optimizers.sgd.lr=1e6",
                    "--set", "train.clip_grad_norm=null")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and not errors_of(result)
    data = load_results(logdir)
    assert data["status"] == "complete"
    sgd, adam = data["runs"]
    assert sgd["status"] == "diverged" and isinstance(sgd["diverged_at"], int) and 1 <= sgd["diverged_at"] <= 20
    assert sgd["diverged_on"] in ("loss", "gradient", "eval loss")
    assert sgd["final_eval_loss"] is None  # NaN is written as null: strict JSON
    assert adam["status"] == "completed" and isinstance(adam["final_eval_loss"], float)
    row = data["summary"][0]
    assert (row["diverged"], row["completed"], row["final_mean"]) == (1, 0, None)
    sgd_line = next(line for line in result.stdout.splitlines() if line.startswith("sgd "))
    assert "1/1" in sgd_line
    assert "run sgd/seed-0 diverged" in result.stderr
    json.loads((logdir / "tiny" / "results.json").read_text(), parse_constant=pytest.fail)  # no NaN tokens


# ---------------------------------------------------------------- validate, plugins, list
# A task whose third training batch has covariates 1e4 times larger: with L = 1 the prediction grows
# like their cube (~1e11), so the loss is finite float32 but the gradient norm overflows.
SPIKY_TASK = """
    from testbed import hookimpl
    from testbed_std.tasks import GaussianTask

    class Spiky(GaussianTask):
        training_batches = 0  # per run: each run builds its own task

        def covariates(self, batch_size, generator):
            x = super().covariates(batch_size, generator)
            if batch_size == 64:  # a training batch (the eval batch has 32 prompts)
                self.training_batches += 1
                return x * 1e4 if self.training_batches == 3 else x
            return x

    @hookimpl
    def register_tasks(register):
        register("spiky", Spiky, doc="Gaussian prompts, one huge batch")
"""


def test_an_overflowing_gradient_norm_is_a_zeroed_step_not_divergence(write_yaml, tiny_raw, plugin_module, logdir):
    plugin_module("spiky_task", SPIKY_TASK)
    tiny_raw.update(task={"name": "spiky", "d": 3, "n": 6}, model={"layers": 1})
    tiny_raw["train"]["seeds"] = 1
    tiny_raw["eval"]["batch_size"] = 32
    result = invoke("run", write_yaml(tiny_raw), "--logdir", logdir)
    assert result.exit_code == 0, result.output
    for run in load_results(logdir)["runs"]:  # as torch's clip_grad_norm_ does: a zero step, then on
        assert (run["status"], run["zeroed_steps"], run["diverged_on"]) == ("completed", [3], None)


def test_float64_training_follows_the_float32_trajectory_in_finer_arithmetic(write_yaml, tiny_raw, logdir):
    tiny_raw["train"]["seeds"] = 1
    losses = {}
    for dtype in ("float32", "float64"):
        result = invoke("run", write_yaml(tiny_raw), "--logdir", logdir / dtype, "--set", f"train.dtype={dtype}")
        assert result.exit_code == 0, result.output
        losses[dtype] = [run["eval_losses"] for run in load_results(logdir / dtype)["runs"]]
    # the same init and prompts: the same curves to float32 precision, not bit for bit
    assert losses["float32"] != losses["float64"]
    for single, double in zip(losses["float32"], losses["float64"]):
        assert single == pytest.approx(double, rel=1e-4)


def test_validate(config_path, logdir):
    result = invoke("validate", config_path)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{config_path}: valid; experiment tiny, 4 runs"
    assert_nothing_written(logdir, logdir.parent)


def test_validate_show_prints_the_resolved_config(config_path):
    result = invoke("validate", config_path, "--show", "--set", "optimizers.adam.lr=1e-3", "--set", "train.seeds=3")
    assert result.exit_code == 0, result.output
    first, _, rest = result.stdout.partition("\n")
    assert first.endswith("valid; experiment tiny, 6 runs")
    resolved = yaml.safe_load(rest)
    assert resolved["train"]["seeds"] == [0, 1, 2]
    assert resolved["optimizers"][1] == {"name": "adam", "label": "adam", "lr": 0.001,
                                         "options": {"betas": [0.9, 0.9], "eps": 1e-8, "weight_decay": 0.0,
                                                     "amsgrad": False}}
    assert resolved["eval"]["seed"] == 99  # defaults are filled in


def test_default_name_is_the_file_stem(write_yaml, tiny_raw):
    del tiny_raw["name"]
    result = invoke("validate", write_yaml(tiny_raw, "my_exp.yaml"))
    assert result.exit_code == 0, result.output
    assert "experiment my_exp" in result.stdout


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and __version__ in result.output


def test_plugins():
    result = invoke("plugins")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "optimizers  (testbed 0.1.0, testbed_std.optimizers)" in out
    assert "tasks  (testbed 0.1.0, testbed_std.tasks)" in out
    assert "optimizers: adam, adamw, sgd, torch" in out
    assert "tasks: anisotropic, gamma, gaussian, nonlinear, spherical, student_t" in out
    assert "FAILED" not in out


def test_plugins_json():
    result = invoke("plugins", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["optimizers"]["distribution"] == "testbed" and rows["optimizers"]["version"] == "0.1.0"
    assert rows["optimizers"]["error"] is None
    assert "sgd" in rows["optimizers"]["registers"]["optimizer"]
    assert "gaussian" in rows["tasks"]["registers"]["task"]


def test_list_optimizers():
    result = invoke("list", "optimizers")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "sgd  [plugin optimizers]" in out and "adam  [plugin optimizers]" in out
    assert "    momentum: float, default 0.0" in out
    assert "    betas: list[float] of 2, default [0.9, 0.999]" in out
    assert "    class: str, required" in out


def test_list_tasks():
    result = invoke("list", "tasks")
    assert result.exit_code == 0, result.output
    assert "gamma  [plugin tasks]" in result.stdout
    assert "    shape: float, default 0.1" in result.stdout
    assert "gaussian  [plugin tasks]" in result.stdout


def test_list_diagnostics():
    result = invoke("list", "diagnostics")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert result.stdout.strip()  # the registered ones, or a line saying there are none


def test_list_unknown_kind_is_a_usage_error():
    result = invoke("list", "widgets")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Error: Invalid value for" in result.output and "widgets" in result.output


def test_bad_options_exit_1_with_one_message(write_yaml, tiny_raw):
    path = write_yaml(tiny_raw)
    for args, message in ((["--workers", "0"], "--workers"), (["--address", "x:1"], "only with --executor ray"),
                          (["--executor", "slurm"], "--executor"), (["--bogus"], "No such option")):
        result = invoke("run", str(path), *args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output and result.output.count("Error:") == 1 and "Traceback" not in result.output


# ---------------------------------------------------------------- bad input
BAD_CONFIGS = {
    "malformed": ("task: [unclosed\n", ["malformed YAML at line"]),
    "not-a-mapping": ("- sgd\n- adam\n", ["expected a mapping at the top level"]),
    "empty": ("", ["expected a mapping at the top level"]),
    "duplicate-key": ("name: a\nname: b\n", ["malformed YAML at line 2", "key 'name' is given twice"]),
    "unknown-top-key": ({"tsk": 1}, ["tsk: unknown key"]),
    "unknown-nested-key": ({"train": {"steps": 20, "stepz": 5}}, ["train.stepz: unknown option"]),
    "unknown-optimizer-option": ({"optimizers": [{"name": "sgd", "lr": 0.1},
                                                 {"name": "adam", "lr": 0.1, "options": {"betaz": [0.9, 0.9]}}]},
                                 ["optimizers[1].options.betaz"]),
    "wrong-type": ({"train": {"steps": "many"}}, ["train.steps", "expected int", "'many'"]),
    "wrong-list-length": ({"optimizers": [{"name": "adam", "lr": 0.1, "options": {"betas": [0.9]}}]},
                          ["optimizers[0].options.betas"]),
    "wrong-bool": ({"optimizers": [{"name": "sgd", "lr": 0.1, "options": {"nesterov": "yes"}}]},
                   ["optimizers[0].options.nesterov"]),
    "negative-lr": ({"optimizers": [{"name": "sgd", "lr": 0.1}, {"name": "adam", "lr": -0.01}]},
                    ["optimizers[1].lr", ">= 0"]),
    "unknown-optimizer": ({"optimizers": [{"name": "sgd", "lr": 0.1}, {"name": "lamb", "lr": 0.1}]},
                          ["optimizers[1].name", "'lamb'", "adam", "adamw", "sgd", "torch"]),
    "unknown-task": ({"task": {"name": "cauchy", "d": 3, "n": 6}},
                     ["task.name", "'cauchy'", "gamma", "gaussian", "student_t"]),
    "bad-task-option": ({"task": {"name": "anisotropic", "d": 3, "n": 6, "options": {"spectrum": [1, 2]}}},
                        ["task", "spectrum"]),
    "unknown-torch-class": ({"optimizers": [{"name": "torch", "lr": 0.1, "options": {"class": "Nope"}}]},
                            ["optimizers[0]", "'Nope'", "RMSprop"]),
    "duplicate-label": ({"optimizers": [{"name": "sgd", "lr": 0.1}, {"name": "sgd", "lr": 0.2}]},
                        ["optimizers", "'sgd'", "twice"]),
}


@pytest.mark.parametrize("command", ["run", "validate"])
@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config(case, command, write_yaml, tiny_raw, logdir):
    content, fragments = BAD_CONFIGS[case]
    if isinstance(content, dict):
        content = yaml.safe_dump({**tiny_raw, **content}, sort_keys=False)
    args = [command, write_yaml(content)] + (["--logdir", logdir] if command == "run" else [])
    result = invoke(*args)
    assert_one_error(result, *fragments)
    assert result.stdout == ""  # one clear message, nothing else
    assert_nothing_written(logdir, logdir.parent)


@pytest.mark.parametrize("command", ["run", "validate"])
def test_missing_config_file(command, logdir):
    result = invoke(command, logdir.parent / "nope.yaml", *(["--logdir", logdir] if command == "run" else []))
    assert_one_error(result, "cannot read config", "nope.yaml")
    assert_nothing_written(logdir, logdir.parent)


@pytest.mark.parametrize("command", ["run", "validate"])
def test_config_file_not_utf8(command, tmp_path, logdir):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    result = invoke(command, path, *(["--logdir", logdir] if command == "run" else []))
    assert_one_error(result, "latin1.yaml", "not a UTF-8 text file")
    assert_nothing_written(logdir, logdir.parent)


def test_logdir_that_is_a_file(config_path, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory")
    result = invoke("run", config_path, "--logdir", blocker)
    assert_one_error(result, "cannot prepare the log directory", "afile")
    assert not list(tmp_path.rglob("results.json"))


@pytest.mark.parametrize(("override", "fragments"), [
    ("train.steps", ["--set", "key.path=value"]),
    ("optimizers.lamb.lr=1", ["--set", "'lamb'"]),
    ("optimizers.7.lr=1", ["--set", "out of range"]),
    ("train.steps=[1", ["--set", "not valid YAML"]),
    ("train.steps=-3", ["train.steps", ">= 1"]),
    ("optimizers.adam.lr=-1", ["optimizers[1].lr"]),
    ("train.stepz=3", ["train.stepz"]),
])
def test_bad_set(override, fragments, config_path, logdir):
    result = invoke("run", config_path, "--logdir", logdir, "--set", override)
    assert_one_error(result, *fragments)
    assert result.stdout == ""
    assert_nothing_written(logdir, logdir.parent)


# ---------------------------------------------------------------- broken plugins
BROKEN = """
    raise RuntimeError("boom: a dependency is missing")
"""

CLASHING = """
    import torch
    from testbed import hookimpl

    @hookimpl
    def register_optimizers(register):
        register("adam", lambda params, lr: torch.optim.Adam(params, lr=lr), doc="another adam")
"""


def test_plugins_lists_a_broken_plugin_and_the_others(plugin_module):
    plugin_module("broken_test_plugin", BROKEN)
    result = invoke("plugins")
    assert result.exit_code == 1, result.output  # after listing every plugin
    assert "Traceback" not in result.output
    out = result.stdout
    line = next(i for i, text in enumerate(out.splitlines()) if text.startswith("broken_test_plugin"))
    assert "$TESTBED_PLUGINS" in out.splitlines()[line]
    failure = out.splitlines()[line + 1]
    assert "FAILED" in failure and "RuntimeError: boom: a dependency is missing" in failure
    assert "optimizers: adam, adamw, sgd, torch" in out  # the others still load
    assert "tasks: anisotropic, gamma, gaussian, nonlinear, spherical, student_t" in out

    rows = {row["name"]: row for row in json.loads(invoke("plugins", "--json").stdout)}
    assert rows["broken_test_plugin"]["error"] == "RuntimeError: boom: a dependency is missing"
    assert rows["optimizers"]["error"] is None


def test_list_with_a_broken_plugin_still_lists_the_others(plugin_module):
    plugin_module("broken_test_plugin", "import no_such_module_xyz\n")
    result = invoke("list", "optimizers")
    assert result.exit_code == 0, result.output
    assert "sgd  [plugin optimizers]" in result.stdout
    assert "broken_test_plugin" in result.stderr and "no_such_module_xyz" in result.stderr


@pytest.mark.parametrize("command", ["run", "validate"])
def test_run_with_a_broken_plugin(command, plugin_module, config_path, logdir):
    plugin_module("broken_test_plugin", BROKEN)
    result = invoke(command, config_path, *(["--logdir", logdir] if command == "run" else []))
    assert_one_error(result, "broken_test_plugin", "RuntimeError: boom")
    assert result.stdout == ""
    assert_nothing_written(logdir, logdir.parent)


def test_plugin_with_a_syntax_error(plugin_module, config_path, logdir):
    plugin_module("syntax_error_plugin", "def oops(:\n")
    assert "SyntaxError" in invoke("plugins").stdout
    assert_one_error(invoke("run", config_path, "--logdir", logdir), "syntax_error_plugin", "SyntaxError")
    assert_nothing_written(logdir, logdir.parent)


def test_run_with_a_clashing_plugin(plugin_module, config_path, logdir):
    plugin_module("clashing_test_plugin", CLASHING)
    result = invoke("run", config_path, "--logdir", logdir)
    line = assert_one_error(result, "'adam'", "'optimizers'", "'clashing_test_plugin'")
    assert "two plugins" in line
    assert_nothing_written(logdir, logdir.parent)


# ---------------------------------------------------------------- progress display
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_on_a_plain_stream():
    clock, stream = FakeClock(), io.StringIO()
    progress = Progress(total_runs=2, steps_per_run=10, stream=stream, interval=30.0, clock=clock)
    assert progress.eta() is None and "ETA -" in progress.status_line()
    progress({"event": "start", "key": "sgd/seed-0", "steps": 10})
    clock.now += 5
    progress({"event": "eval", "key": "sgd/seed-0", "step": 5, "loss": 0.5})
    assert progress.eta() == pytest.approx(15.0)  # 5 of 20 steps in 5 s
    assert progress.status_line() == "0/2 runs done | ETA 0m15s | sgd/seed-0 5/10, eval loss 5.000e-01"
    assert stream.getvalue() == ""  # no line before a run ends or the interval passes
    clock.now += 5
    progress({"event": "end", "key": "sgd/seed-0", "status": "completed"})
    assert stream.getvalue() == "run sgd/seed-0 completed, eval loss 5.000e-01  [1/2 runs done | ETA 0m10s]\n"
    progress({"event": "start", "key": "adam/seed-0", "steps": 10})
    clock.now += 31  # past the interval: a status line
    progress({"event": "eval", "key": "adam/seed-0", "step": 1, "loss": 2.0})
    last = stream.getvalue().splitlines()[-1]
    assert last.startswith("1/2 runs done | ETA ") and "adam/seed-0 1/10, eval loss 2.000e+00" in last
    clock.now += 1
    progress({"event": "end", "key": "adam/seed-0", "status": "diverged"})
    assert stream.getvalue().splitlines()[-1].startswith("run adam/seed-0 diverged, eval loss 2.000e+00  [2/2")
    before = stream.getvalue()
    progress.close()
    assert stream.getvalue() == before  # nothing to clean up on a plain stream
