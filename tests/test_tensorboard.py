"""What a run leaves for TensorBoard, read back two ways: with EventAccumulator, and through a real
TensorBoard server's HTTP API (what the browser sees)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import (
    STORE_EVERYTHING_SIZE_GUIDANCE,
    EventAccumulator,
)
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

from testbed.experiment.config import parse_config
from testbed.experiment.runner import run_experiment
from testbed.files.layout import RESULTS_FILE
from testbed.plugins import load_plugins

NAME = "exp"
STEPS, EVERY = 25, 10
LRS = {"sgd": 0.01, "adam": 0.001}
SEEDS = (0, 1)
SCALAR_TAGS = {"train/loss", "eval/loss", "eval/best_loss", "optim/grad_norm", "optim/lr", "perf/steps_per_sec"}
EVENT_FILE = "events.out.tfevents"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """One tiny experiment (2 optimizers x 2 seeds); returns (logdir, results.json data)."""
    logdir = tmp_path_factory.mktemp("tb") / "runs"
    plugins = load_plugins()
    raw = {
        "name": NAME,
        "task": {"name": "gaussian", "d": 3, "n": 10},
        "model": {"layers": 2},
        "optimizers": [{"name": label, "lr": lr} for label, lr in LRS.items()],
        "train": {"steps": STEPS, "batch_size": 64, "seeds": list(SEEDS)},
        "eval": {"every": EVERY, "batch_size": 128},
    }
    outcome = run_experiment(parse_config(raw, plugins.registry), plugins, logdir, workers=1)
    data = json.loads((logdir / NAME / RESULTS_FILE).read_text())
    assert [r["status"] for r in data["runs"]] == ["completed"] * 4
    return logdir, data, outcome


def load(run_dir: str | Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir), size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    accumulator.Reload()
    return accumulator


def expected_run_dirs(logdir: Path) -> set[Path]:
    return {logdir / NAME / label / f"seed-{seed}" for label in LRS for seed in SEEDS}


# ------------------------------------------------------------------ layout on disk
def test_one_directory_per_run_and_no_sub_runs(experiment):
    logdir, data, _ = experiment
    with_events = {Path(root) for root, _, files in os.walk(logdir) if any(EVENT_FILE in f for f in files)}
    assert with_events == expected_run_dirs(logdir) | {logdir / NAME}  # the root: the HParams columns only
    root = load(logdir / NAME)
    assert set(root.PluginTagToContent("hparams")) == {"_hparams_/experiment"}
    info = plugin_data_pb2.HParamsPluginData.FromString(root.PluginTagToContent("hparams")["_hparams_/experiment"])
    assert {m.name.tag for m in info.experiment.metric_infos} == {"eval/loss", "eval/best_loss"}
    assert {"optimizer", "lr", "seed", "options.momentum", "options.betas"} <= {h.name for h in info.experiment.hparam_infos}
    for run_dir in with_events - {logdir / NAME}:
        assert len([f for f in os.listdir(run_dir) if EVENT_FILE in f]) == 1, run_dir
        assert (run_dir / "config.yaml").is_file() and (run_dir / "summary.json").is_file()
    assert {Path(r["run_dir"]) for r in data["runs"]} == expected_run_dirs(logdir)


# ------------------------------------------------------------------ scalars
def test_scalar_tags_steps_and_values(experiment):
    logdir, data, _ = experiment
    for run in data["runs"]:
        accumulator = load(run["run_dir"])
        assert SCALAR_TAGS <= set(accumulator.Tags()["scalars"]), run["key"]
        for tag in accumulator.Tags()["scalars"]:
            steps = [e.step for e in accumulator.Scalars(tag)]
            assert all(a < b for a, b in zip(steps, steps[1:])), f"{run['key']} {tag}: steps {steps}"
            assert tag.split("/")[0] in {"train", "eval", "optim", "perf", "diag"}, tag

        evals = accumulator.Scalars("eval/loss")
        assert [e.step for e in evals] == run["eval_steps"] == [0, 10, 20, 25]
        assert [e.value for e in evals] == pytest.approx(run["eval_losses"], rel=1e-6)
        (best,) = accumulator.Scalars("eval/best_loss")
        assert best.step == STEPS and best.value == pytest.approx(run["best_eval_loss"], rel=1e-6)

        assert [e.step for e in accumulator.Scalars("train/loss")] == list(range(1, STEPS + 1))
        assert [e.step for e in accumulator.Scalars("optim/grad_norm")] == list(range(1, STEPS + 1))
        lrs = accumulator.Scalars("optim/lr")
        assert [e.value for e in lrs] == pytest.approx([LRS[run["label"]]] * STEPS, rel=1e-6)
        speeds = accumulator.Scalars("perf/steps_per_sec")
        assert [e.step for e in speeds] == [10, 20, 25] and all(e.value > 0 for e in speeds)


def test_tags_do_not_depend_on_the_optimizer(experiment):
    logdir, data, _ = experiment
    tags = {run["key"]: frozenset(load(run["run_dir"]).Tags()["scalars"]) for run in data["runs"]}
    assert len(set(tags.values())) == 1, tags


# ------------------------------------------------------------------ text, hparams, layout
def test_config_text_hparams_and_custom_scalar_layout(experiment):
    logdir, data, _ = experiment
    for run in data["runs"]:
        accumulator = load(run["run_dir"])
        assert "config/text_summary" in accumulator.Tags()["tensors"]
        (text,) = accumulator.Tensors("config/text_summary")
        body = text.tensor_proto.string_val[0].decode()
        assert f"name: {NAME}" in body and "steps: 25" in body

        hparams = accumulator.PluginTagToContent("hparams")
        assert "_hparams_/session_start_info" in hparams
        start = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
        values = start.session_start_info.hparams
        assert values["optimizer"].string_value == run["label"]
        assert values["seed"].number_value == run["seed"]
        assert values["lr"].number_value == pytest.approx(LRS[run["label"]])

        assert "custom_scalars__config__" in accumulator.PluginTagToContent("custom_scalars")
        (layout_event,) = accumulator.Tensors("custom_scalars__config__")
        layout = layout_pb2.Layout.FromString(layout_event.tensor_proto.string_val[0])
        charted = {tag for category in layout.category for chart in category.chart
                   for tag in chart.multiline.tag}
        assert {"eval/loss", "train/loss", "optim/grad_norm", "optim/lr"} <= charted


# ------------------------------------------------------------------ a real TensorBoard server
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read().decode())


def _start_server(logdir: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    """Start TensorBoard on a free port; retry on another port if it exits (the port was taken)."""
    for _ in range(3):
        port = _free_port()
        log = open(log_path, "w")
        server = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
             "--port", str(port), "--load_fast=false", "--reload_interval", "1"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        time.sleep(0.5)
        if server.poll() is None:
            return server, f"http://127.0.0.1:{port}"
    raise AssertionError(f"TensorBoard did not start:\n{log_path.read_text()}")


def test_tensorboard_server_serves_the_runs(experiment, tmp_path):
    logdir, data, _ = experiment
    expected = {f"{NAME}/{label}/seed-{seed}" for label in LRS for seed in SEEDS} | {NAME}
    server, base = _start_server(logdir, tmp_path / "tensorboard.log")
    try:
        runs: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if server.poll() is not None:
                pytest.fail(f"TensorBoard exited:\n{(tmp_path / 'tensorboard.log').read_text()}")
            try:
                runs = _get_json(f"{base}/data/runs")
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                runs = []
            if set(runs) >= expected:
                break
            time.sleep(0.5)
        assert set(runs) == expected, f"runs: {runs}\n{(tmp_path / 'tensorboard.log').read_text()}"

        for run in data["runs"]:
            name = Path(run["run_dir"]).relative_to(logdir).as_posix()
            query = urllib.parse.urlencode({"run": name, "tag": "eval/loss"})
            points = _get_json(f"{base}/data/plugin/scalars/scalars?{query}")
            assert [step for _, step, _ in points] == run["eval_steps"]
            assert [value for _, _, value in points] == pytest.approx(run["eval_losses"], rel=1e-6)
            assert all(wall_time > 0 for wall_time, _, _ in points)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _post_json(url: str, body: dict):
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"})
    with urllib.request.urlopen(request, timeout=20) as response:
        return json.loads(response.read().decode())


def test_hparams_dashboard_lists_every_run_of_a_sweep_with_its_swept_keys(tmp_path):
    from testbed.experiment.runner import run_sweep
    from testbed.experiment.sweep import expand

    plugins = load_plugins()
    raw = {
        "name": "sw", "task": {"name": "gaussian", "d": 3, "n": 10}, "model": {"layers": 2},
        "optimizers": [{"name": "sgd", "lr": 0.01}, {"name": "adam", "lr": 0.001}],
        "train": {"steps": 10, "batch_size": 32, "seeds": 1}, "eval": {"every": 5, "batch_size": 64},
        "sweep": {"grid": {"task.n": [6, 10]}, "zip": {"optimizers.adam.lr": [0.001, 0.01]}},
    }
    outcome = run_sweep(expand(raw, plugins.registry), plugins, tmp_path / "runs", workers=1)
    expected = {Path(r.run_dir).relative_to(tmp_path / "runs" / "sw").as_posix(): r for r in outcome.results}
    assert len(expected) == 8
    server, base = _start_server(tmp_path / "runs" / "sw", tmp_path / "tensorboard.log")
    try:
        deadline, groups = time.monotonic() + 60, []
        body = {"experimentName": "", "allowedStatuses": ["STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_UNKNOWN",
                                                          "STATUS_RUNNING"],
                "colParams": [], "startIndex": 0, "sliceSize": 100}
        while time.monotonic() < deadline and len(groups) < len(expected):
            try:
                groups = _post_json(f"{base}/data/plugin/hparams/session_groups", body)["sessionGroups"]
            except (urllib.error.URLError, ConnectionError, TimeoutError, KeyError):
                groups = []
            time.sleep(0.5)
        assert {g["name"] for g in groups} == set(expected), (tmp_path / "tensorboard.log").read_text()
        columns = _post_json(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
        assert {"task.n", "optimizers.adam.lr", "lr", "optimizer"} <= {h["name"] for h in columns["hparamInfos"]}
        for group in groups:
            result = expected[group["name"]]
            assert group["hparams"]["task.n"] == float(group["name"].split("task.n=")[1].split(",")[0])
            assert group["hparams"]["lr"] == pytest.approx(result.lr)
            metrics = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
            assert metrics["eval/loss"] == pytest.approx(result.final_eval_loss, rel=1e-6)
            assert metrics["eval/best_loss"] == pytest.approx(result.best_eval_loss, rel=1e-6)
            assert group["sessions"][0]["status"] == "STATUS_SUCCESS"
    finally:
        server.terminate()
        server.wait(timeout=10)
