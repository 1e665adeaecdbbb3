"""Sweeps: expansion of grid / zip / explicit points, their validation, run identity and the cache
(a finished sweep runs nothing again; --force and any change of option do), --dry-run, and the
HParams each run carries."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from testbed.experiment.cache import identity, run_id
from testbed.cli.commands import main
from testbed.errors import ConfigError
from testbed.experiment.runner import plan_runs, run_sweep
from testbed.plugins import load_plugins
from testbed.experiment.sweep import expand

from shared_fixtures import TINY

SWEEP = {"zip": {"optimizers.sgd.lr": [0.01, 0.02, 0.05], "optimizers.adam.lr": [0.001, 0.002, 0.005]}}


def swept(sweep=SWEEP, **train):
    raw = copy.deepcopy(TINY)
    raw["train"].update({"steps": 12, "seeds": 2, **train})
    raw["eval"]["every"] = 4
    raw["sweep"] = copy.deepcopy(sweep)
    return raw


def points(raw, registry):
    return [p.point.as_dict() for p in expand(raw, registry).points]


# ------------------------------------------------------------------ expansion
def test_grid_is_the_cartesian_product_in_key_order(registry):
    raw = swept({"grid": {"task.n": [4, 8], "optimizers.adam.lr": [0.1, 0.2, 0.3]}})
    assert points(raw, registry) == [{"task.n": n, "optimizers.adam.lr": lr} for n in (4, 8) for lr in (0.1, 0.2, 0.3)]
    sweep = expand(raw, registry)
    assert [p.config.task.n for p in sweep.points] == [4, 4, 4, 8, 8, 8]
    assert [p.config.optimizers[1].lr for p in sweep.points] == [0.1, 0.2, 0.3] * 2
    assert all(p.config.optimizers[0].lr == 0.01 for p in sweep.points)  # untouched entries stay
    assert sweep.points[0].directory == "tiny/task.n=4,adam.lr=0.1"
    assert sweep.keys == ["task.n", "optimizers.adam.lr"]


def test_zip_groups_and_explicit_points_multiply(registry):
    raw = swept({"zip": SWEEP["zip"], "points": [{"task.name": "gaussian", "task.options": {}},
                                                  {"model.layers": 3}]})
    got = points(raw, registry)
    assert len(got) == 6
    assert got[0] == {"optimizers.sgd.lr": 0.01, "optimizers.adam.lr": 0.001, "task.name": "gaussian",
                      "task.options": {}}
    assert got[5] == {"optimizers.sgd.lr": 0.05, "optimizers.adam.lr": 0.005, "model.layers": 3}
    configs = expand(raw, registry).points
    assert configs[0].config.task.name == "gaussian" and configs[1].config.model.layers == 3


def test_a_config_without_a_sweep_is_one_point_in_its_own_directory(registry):
    sweep = expand(copy.deepcopy(TINY), registry)
    assert not sweep.swept and len(sweep.points) == 1 and sweep.points[0].directory == "tiny"


@pytest.mark.parametrize("sweep, message", [
    ({"grid": {"task.n": []}}, "sweep.grid.task.n: expected a non-empty list"),
    ({"zip": {"task.n": [4, 8], "model.layers": [1]}}, "sweep.zip: the lists must have equal lengths"),
    ({"grid": {"task.n": [4]}, "points": [{"task.n": 8}]}, "task.n is swept twice"),
    ({"grid": {"task.nn": [4]}}, "sweep point task.nn=4: task.nn: unknown key"),
    ({"grid": {"optimizers.lion.lr": [0.1]}}, "no list item labelled or named 'lion'"),
    ({"grid": {"model.layers": ["three"]}}, "sweep point model.layers=three: model.layers"),
    ({"grid": {"name": ["x"]}}, "'name' cannot be swept"),
    ({"points": [{"task.n": 4}, {"task.n": 4}]}, "the point task.n=4 is given twice"),
    ({"grids": {}}, "sweep.grids: unknown key"),
    ([1, 2], "sweep: expected a mapping"),
])
def test_bad_sweeps_are_one_clear_error(registry, sweep, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        expand(swept(sweep), registry)


def test_a_bad_sweep_on_the_command_line_exits_1_without_writing(write_yaml, tmp_path):
    path = write_yaml(swept({"grid": {"train.steps": [5, -1]}}))
    result = CliRunner().invoke(main, ["run", str(path), "--logdir", str(tmp_path / "runs")])
    assert result.exit_code == 1
    assert "Error: sweep point train.steps=-1: train.steps" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ run identity
def test_run_id_follows_what_decides_the_run(registry):
    plugins = load_plugins()
    sweep = expand(swept(), registry)
    first, second = (plan_runs(p.config, p.directory) for p in sweep.points[:2])
    ids = lambda plans: {(p.optimizer.label, p.seed): run_id(p, plugins) for p in plans}  # noqa: E731
    a, b = ids(first), ids(second)
    assert len(set(a.values())) == 4  # every optimizer x seed differs
    assert all(a[key] != b[key] for key in a)  # both lrs differ between the points
    # Only the other optimizer entry changes: this entry's runs keep their id.
    raw = swept({"grid": {"optimizers.adam.lr": [0.001, 0.002]}})
    one, two = (plan_runs(p.config, p.directory) for p in expand(raw, registry).points)
    assert ids(one)[("sgd", 0)] == ids(two)[("sgd", 0)] and ids(one)[("adam", 0)] != ids(two)[("adam", 0)]
    content = identity(first[0], plugins)
    assert content["versions"]["optimizers"] == content["versions"]["tasks"] == f"testbed {content['versions']['testbed']}"
    assert "seeds" not in content["train"] and content["seed"] == 0
    # train.dtype came after run ids: at its default it leaves them as they were; float64 is a new run.
    assert "dtype" not in content["train"]
    in_float64 = expand(swept(dtype="float64"), registry).points[0]
    assert ids(plan_runs(in_float64.config, in_float64.directory))[("sgd", 0)] != a[("sgd", 0)]
    # float64 moved to the compiled kernel (issue 15): its runs name that arithmetic, float32's do not.
    assert identity(plan_runs(in_float64.config, in_float64.directory)[0], plugins)["train"]["arithmetic"] == "compiled kernel"
    assert "arithmetic" not in content["train"]
    # A new version of the plugin that provides the optimizer makes a new run.
    plugins.infos = [dataclasses.replace(i, version="99.0") if i.name == "optimizers" else i for i in plugins.infos]
    assert run_id(first[0], plugins) != a[("sgd", 0)]


# ------------------------------------------------------------------ the cache
def run_cli(*args):
    result = CliRunner().invoke(main, ["run", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def per_run(logdir, name="tiny"):
    """run_dir -> (eval losses, run id) over every results.json under the sweep."""
    found = {}
    for path in sorted((logdir / name).rglob("results.json")):
        for run in json.loads(path.read_text())["runs"]:
            found[run["run_dir"]] = (run["eval_losses"], run["run_id"], run["status"])
    return found


def test_a_finished_sweep_runs_nothing_again_and_force_runs_it_all(write_yaml, tmp_path):
    path, logdir = write_yaml(swept()), tmp_path / "runs"
    first = run_cli(path, "--logdir", logdir, "--workers", 2)  # worker processes, then in-process: same results
    assert "12 runs executed" in first
    before = per_run(logdir)
    assert len(before) == 12 and all(status == "completed" for _, _, status in before.values())
    sweep = json.loads((logdir / "tiny" / "sweep.json").read_text())
    assert sweep["keys"] == ["optimizers.sgd.lr", "optimizers.adam.lr"] and len(sweep["points"]) == 3

    for run_dir, (_, rid, _) in before.items():  # each result is its own run's (not another point's)
        assert json.loads((Path(run_dir) / "summary.json").read_text())["run_id"] == rid
        assert f"/{json.loads((Path(run_dir) / 'summary.json').read_text())['label']}/" in run_dir
    again = run_cli(path, "--logdir", logdir, "--workers", 1)
    assert "nothing to run: all 12 runs are already done" in again and "0 runs executed" in again
    assert per_run(logdir) == before  # results.json rebuilt from the cache, unchanged

    forced = run_cli(path, "--logdir", logdir, "--workers", 1, "--force")
    assert "12 runs executed" in forced and per_run(logdir) == before  # same numbers when redone


def test_a_divergence_recorded_by_the_older_engine_is_run_again(write_yaml, tmp_path):
    raw = swept()
    del raw["sweep"]
    raw["optimizers"][0]["lr"] = 1e6  # SGD diverges on a non-finite loss
    raw["train"]["clip_grad_norm"] = None
    path, logdir = write_yaml(raw), tmp_path / "runs"
    run_cli(path, "--logdir", logdir, "--workers", 1)
    diverged = [Path(d) for d, (_, _, status) in per_run(logdir).items() if status == "diverged"]
    assert diverged
    for run_dir in diverged:  # as written before the engine recorded what was non-finite
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["diverged_on"] in ("loss", "gradient", "eval loss")
        del summary["diverged_on"]
        (run_dir / "summary.json").write_text(json.dumps(summary))
    output = run_cli(path, "--logdir", logdir, "--workers", 1)
    assert f"{len(diverged)} runs executed" in output


def test_changing_an_option_makes_new_runs_only_where_it_applies(write_yaml, tmp_path):
    raw = swept()
    logdir = tmp_path / "runs"
    run_cli(write_yaml(raw), "--logdir", logdir, "--workers", 1)
    before = per_run(logdir)
    raw["optimizers"][1]["options"]["betas"] = [0.9, 0.99]  # Adam's runs change, SGD's do not
    output = run_cli(write_yaml(raw), "--logdir", logdir, "--workers", 1)
    assert "6 runs executed" in output and "6 already done" in output
    after = per_run(logdir)
    for run_dir, (losses, rid, _) in after.items():
        if "/sgd/" in run_dir:
            assert (losses, rid) == before[run_dir][:2]
        else:
            assert rid != before[run_dir][1] and losses[0] == before[run_dir][0][0]  # same init, new run


def test_runs_shared_by_points_run_once_and_each_point_gets_them(write_yaml, tmp_path):
    logdir = tmp_path / "runs"
    output = run_cli(write_yaml(swept({"grid": {"optimizers.adam.lr": [0.001, 0.002]}})), "--logdir", logdir,
                     "--workers", 1)
    assert "6 runs executed" in output  # SGD's 2 seeds once, Adam's 2 seeds x 2 lrs
    runs = per_run(logdir)
    assert len(runs) == 8
    sgd = {d: v for d, v in runs.items() if "/sgd/" in d}
    for seed in (0, 1):
        copies = [v for d, v in sgd.items() if d.endswith(f"seed-{seed}")]
        assert len(copies) == 2 and copies[0] == copies[1]
    for run_dir in runs:  # every point's directory is complete on its own (TensorBoard, report)
        assert any(p.name.startswith("events.out.tfevents") for p in Path(run_dir).iterdir())


# ------------------------------------------------------------------ --dry-run
def test_dry_run_shows_the_plan_without_running(write_yaml, tmp_path):
    path, logdir = write_yaml(swept()), tmp_path / "runs"
    output = run_cli(path, "--logdir", logdir, "--dry-run")
    assert "sweep tiny: 3 points over optimizers.sgd.lr, optimizers.adam.lr" in output
    assert "12 runs: 0 done, 0 resume from a checkpoint, 12 to run" in output
    assert "estimated time:" in output and not logdir.exists()
    run_cli(path, "--logdir", logdir, "--workers", 1)
    output = run_cli(path, "--logdir", logdir, "--dry-run")
    assert "12 runs: 12 done, 0 resume from a checkpoint, 0 to run" in output
    assert "estimated time: 0 s" in output


def test_dry_run_of_a_tuned_sweep_waits_for_tuning_until_the_pilots_are_done(write_yaml, tmp_path):
    raw = swept({"grid": {"model.layers": [1, 2]}})
    raw["optimizers"][0]["tune"] = {"lr": [0.01, 0.02], "steps": 6}
    path, logdir = write_yaml(raw), tmp_path / "runs"
    output = run_cli(path, "--logdir", logdir, "--dry-run")
    assert "4 learning-rate pilot runs: 0 done, 0 resume from a checkpoint, 4 to run" in output
    assert "8 runs: 0 done, 0 resume from a checkpoint, 4 to run, 4 wait for learning-rate tuning" in output
    run_cli(path, "--logdir", logdir, "--workers", 1)
    output = run_cli(path, "--logdir", logdir, "--dry-run")
    assert "4 learning-rate pilot runs: 4 done" in output and "8 runs: 8 done" in output


# ------------------------------------------------------------------ hparams
def test_each_run_logs_the_swept_keys_that_apply_to_it(registry, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    sweep = expand(swept({"grid": {"task.n": [4, 6]}, "zip": {"optimizers.adam.lr": [0.001, 0.002]}}), registry)
    outcome = run_sweep(sweep, load_plugins(), tmp_path, workers=1)
    for result in outcome.results:
        accumulator = EventAccumulator(result.run_dir)
        accumulator.Reload()
        content = accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        values = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
        n = int(yaml.safe_load(result.run_dir.split("task.n=")[1].split(",")[0]))
        assert values["task.n"].number_value == n
        assert ("optimizers.adam.lr" in values) == (result.label == "adam")
        if result.label == "adam":
            assert values["optimizers.adam.lr"].number_value == result.lr


# ------------------------------------------------------------------ the report of a sweep
def test_report_of_a_sweep_has_sensitivity_curves_and_the_best_configuration(write_yaml, tmp_path):
    import statistics

    from testbed.report import make_report

    logdir = tmp_path / "runs"
    run_cli(write_yaml(swept()), "--logdir", logdir, "--workers", 1)
    out, _ = make_report([logdir], tmp_path / "report")
    assert (out / "figures" / "tiny-lr-sensitivity.png").stat().st_size > 10_000
    finals: dict[tuple[str, float], list[float]] = {}
    for path in (logdir / "tiny").rglob("results.json"):
        for r in json.loads(path.read_text())["runs"]:
            finals.setdefault((r["label"], r["lr"]), []).append(r["final_eval_loss"])
    text = (out / "report.md").read_text()
    assert "## sweep tiny" in text and "3 points over optimizers.sgd.lr, optimizers.adam.lr" in text
    for label in ("sgd", "adam"):
        lr, values = min(((lr, v) for (l, lr), v in finals.items() if l == label),
                         key=lambda item: statistics.fmean(item[1]))
        row = f"| {label} | optimizers.{label}.lr={lr} | {lr:g} | {statistics.fmean(values):.4g} " \
              f"({statistics.stdev(values):.2g}) | 2 | 0 | 3 |"
        assert row in text
    assert "## tiny/" not in text  # points are summarized by the sweep, not one section each
