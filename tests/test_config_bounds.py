"""Absurd sizes and out-of-range values fail at validation, in one line naming the key and the bound
(issue 11, defects 11 and 12): through `testbed validate` and `testbed run`, exit 1, no traceback,
nothing written. The absurd sizes run in a subprocess under a 4 GB address-space limit, which proves
that validation neither expands nor allocates what a config asks for."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from testbed.engine.build import build_optimizer
from testbed.experiment.config import parse_config
from testbed.engine.limits import MAX_YAML_NODES
from testbed.plugins import ENV_VAR

from shared_fixtures import TINY
from test_cli import assert_nothing_written, assert_one_error, invoke

COMMANDS = ["validate", "run"]
ASGD = {"name": "torch", "label": "asgd", "lr": 0.01, "options": {"class": "ASGD", "kwargs": {}}}


def tiny(**changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(TINY)
    raw.update(changes)
    return raw


def args_for(command: str, path: Path, logdir: Path, overrides: list[str]) -> list[str]:
    args = [command, str(path)] + (["--logdir", str(logdir)] if command == "run" else [])
    for override in overrides:
        args += ["--set", override]
    return args


# ---------------------------------------------------------------- absurd sizes (defect 11)


def absurd_cases() -> dict[str, tuple[str, list[str], list[str]]]:
    """name -> (config text, --set overrides, fragments of the one error line)."""
    base = yaml.safe_dump(tiny(), sort_keys=False)
    # A "billion laughs" in a keyword torch.optim stores: 2 KB of YAML, 10^9 values once expanded.
    nested = ", ".join(["&a0 [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"]
                       + [f"&a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)])
    optimizers = "\n".join(["optimizers:", "  - {name: sgd, lr: 0.01}", "  - name: torch", "    label: asgd",
                            "    lr: 0.01", "    options:", "      class: ASGD", "      kwargs:",
                            "        lambd: 0.0001", "        foreach: [%s]"]) + "\n"
    head = yaml.safe_dump({k: v for k, v in tiny().items() if k != "optimizers"}, sort_keys=False)
    grid = {"optimizers.sgd.options.momentum": [round(0.5 + i / 1000, 3) for i in range(100)],
            "optimizers.adam.lr": [round(0.001 + i / 10_000, 4) for i in range(100)],
            "train.log_every": list(range(1, 101)), "eval.every": list(range(1, 101))}
    twenty_points = {**tiny(), "sweep": {"grid": {"train.log_every": list(range(1, 21))}}}
    pilots = "optimizers.adam.tune={lr: [0.01, 0.02, 0.03, 0.04], seeds: 10000}"  # 60,000 runs a point with 2 x 10^4
    return {
        "a billion seeds": (base, ["train.seeds=1000000000"], ["train.seeds", "1000000000", "10000"]),
        "a billion tuning pilots": (base, ["optimizers.adam.tune={lr: [0.1, 0.2], seeds: 1000000000}"],
                                    ["optimizers[1].tune.seeds", "10000"]),
        "a hundred million sweep points": (yaml.safe_dump({**tiny(), "sweep": {"grid": grid}}, sort_keys=False), [],
                                           ["sweep", "100000000 points", "10000"]),
        "a sweep of 1,200,000 runs": (yaml.safe_dump(twenty_points), ["train.seeds=10000", pilots],
                                      ["sweep", "120000 runs in its first 2 of 20 points", "100000"]),
        "a million tuning pilots": (base, ["optimizers.adam.tune={lr: [%s], seeds: 10000}"
                                           % ", ".join(str(0.001 * (i + 1)) for i in range(100))],
                                    ["1000004 runs", "100000"]),
        "a billion YAML values in torch kwargs": (head + optimizers % nested, [],
                                                  ["YAML values", str(MAX_YAML_NODES), "aliases"]),
        "a recursive alias in torch kwargs": (head + optimizers % "&loop [*loop]", [], ["alias", "contains"]),
        "a config file of 12 MB": (base + ("# padding\n" * 1_200_000), [], ["larger than 10 MiB"]),
        "YAML nested 1000 levels deep": (base + "x: " + "[" * 1000 + "]" * 1000 + "\n", [], ["nested", "100 levels"]),
        "an integer of 5000 digits": (base.replace("lr: 0.01", "lr: 1" + "0" * 5000, 1), [],
                                      ["line", "an integer of 5001 digits"]),
        # Sizes in terabytes: more than any machine has, so the message does not depend on this one.
        "a model of terabytes": (base, ["task.d=10000", "train.batch_size=100000"],
                                 ["TB", "task.d=10000", "train.batch_size=100000", "of this machine"]),
        "a context of 10^11": (base, ["task.n=100000000000", "train.batch_size=1", "eval.batch_size=1"],
                               ["task.n=100000000000", "TB"]),
        "a batch of 10^10": (base, ["train.batch_size=10000000000"], ["train.batch_size=10000000000", "TB"]),
        "a feature map of width 10^10": (base, ["model.feature_map={hidden: [10000000000]}"],
                                         ["model.feature_map", "TB"]),
        "task.d above the bound": (base, ["task.d=1000000"], ["task.d", "<= 10000"]),
        "a million layers": (base, ["model.layers=1000000", "task.d=1"], ["model.layers", "<= 1000"]),
        "a trillion steps": (base, ["train.steps=1000000000000"], ["train.steps", "<= 1000000000"]),
        "10^15 noise samples": (base, ["diagnostics=[{name: gradient_noise, options: {samples: 1000000000000000}}]"],
                                ["diagnostics[0].options.samples", "<="]),
    }


ABSURD = absurd_cases()

# One process: import once, then limit the address space and give each command 10 s.
SUBPROCESS = """
import json, resource, signal, sys, time
from click.testing import CliRunner
from testbed.cli.commands import main

def too_slow(signum, frame):
    raise TimeoutError("still running after 10 s")

# Import, load and validate a tiny config once (lazy imports, the compiled kernel) before the limit:
# the limit and the clock are on what the commands themselves allocate and take.
CliRunner().invoke(main, ["validate", sys.argv[1]])
size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
limit = max(4 * 2**30, size + 2 * 2**30)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
signal.signal(signal.SIGALRM, too_slow)
for args in json.load(sys.stdin):
    start = time.perf_counter()
    signal.alarm(10)
    result = CliRunner().invoke(main, args)
    signal.alarm(0)
    print(json.dumps({"exit_code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr,
                      "seconds": time.perf_counter() - start,
                      "exception": None if isinstance(result.exception, SystemExit) else repr(result.exception)}),
          flush=True)
"""


@pytest.fixture(scope="module")
def absurd_results(tmp_path_factory) -> dict[tuple[str, str], dict]:
    """Every absurd case through validate and run, in one subprocess under an address-space limit:
    (case, command) -> exit code, output, seconds, any exception and the run's log directory."""
    tmp = tmp_path_factory.mktemp("absurd")
    warm_up = tmp / "tiny.yaml"
    warm_up.write_text(yaml.safe_dump(tiny()))
    calls, keys, logdirs = [], [], []
    for i, (name, (text, overrides, _)) in enumerate(ABSURD.items()):
        path = tmp / f"case{i}.yaml"
        path.write_text(text)
        for command in COMMANDS:
            calls.append(args_for(command, path, tmp / f"logs{i}", overrides))
            keys.append((name, command))
            logdirs.append(tmp / f"logs{i}")
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}  # the installed plugins only
    completed = subprocess.run([sys.executable, "-c", SUBPROCESS, str(warm_up)], input=json.dumps(calls), capture_output=True,
                               text=True, timeout=600, cwd=tmp, env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = [json.loads(line) for line in completed.stdout.splitlines()]
    return {key: {**result, "logdir": logdir} for key, result, logdir in zip(keys, results, logdirs)}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", list(ABSURD))
def test_absurd_sizes_fail_at_once_without_allocating(case, command, absurd_results):
    result = absurd_results[(case, command)]
    assert result["exception"] is None, result["exception"]  # e.g. a MemoryError at the limit
    assert result["exit_code"] == 1, result
    assert "Traceback" not in result["stderr"] + result["stdout"]
    assert result["stdout"] == ""
    (line,) = [line for line in result["stderr"].splitlines() if line.startswith("Error:")]
    fragments = ABSURD[case][2]
    assert all(fragment in line for fragment in fragments), (fragments, line)
    assert result["seconds"] < 2.0, result["seconds"]  # loading plugins and parsing: typically 0.1 s
    assert not result["logdir"].exists()


# ---------------------------------------------------------------- out-of-range values (defect 12)
OUT_OF_RANGE: dict[str, tuple[Any, list[str], list[str]]] = {
    "eval.seed of 2^64": (tiny(), ["eval.seed=18446744073709551616"], ["eval.seed", "9223372036854775807"]),
    "a training seed of 2^63": (tiny(), ["train.seeds=[0, 9223372036854775808]"],
                                ["train.seeds[1]", "9223372036854775807"]),
    "a pilot seed of 2^64": (tiny(), ["optimizers.adam.tune={lr: [0.1], seeds: [18446744073709551616]}"],
                             ["optimizers[1].tune.seeds[0]", "9223372036854775807"]),
    "an lr above float32": (tiny(), ["optimizers.sgd.lr=1.0e39"], ["optimizers[0].lr", "3.4028234663852886e+38"]),
    "an lr of 10^400": (tiny(), ["optimizers.sgd.lr=1" + "0" * 400], ["optimizers[0].lr", "finite", "too large"]),
    "an lr grid value above float32": (tiny(), ["optimizers.adam.tune={lr: [0.1, 1.0e39]}"],
                                       ["optimizers[1].tune.lr[1]", "3.4028234663852886e+38"]),
    "an infinite eps": (tiny(), ["optimizers.adam.options.eps=.inf"], ["optimizers[1].options.eps", "finite"]),
    "a nan beta": (tiny(), ["optimizers.adam.options.betas=[0.9, .nan]"], ["optimizers[1].options.betas[1]", "finite"]),
    "a name of 300 characters": (tiny(name="n" * 300), [], ["name", "100 characters", "300"]),
    "a label of 300 characters": (tiny(), ["optimizers.sgd.label=" + "l" * 300],
                                  ["optimizers[0].label", "100 characters", "300"]),
    "a diagnostic seed that is not trained": (tiny(diagnostics=[{"name": "block_norms", "seeds": [7]}]), [],
                                              ["diagnostics[0].seeds", "7", "train.seeds", "0, 1"]),
    "a text in torch kwargs": (tiny(optimizers=[{**ASGD, "options": {"class": "ASGD",
                                                                     "kwargs": {"lambd": "small"}}}]),
                               [], ["optimizers[0]", "kwargs.lambd", "number", "'small'"]),
    "a mapping in torch kwargs": (tiny(optimizers=[{**ASGD, "options": {"class": "ASGD",
                                                                        "kwargs": {"foreach": {"a": [1]}}}}]),
                                  [], ["optimizers[0]", "kwargs.foreach", "{'a': [1]}"]),
    "a nan in torch kwargs": (tiny(optimizers=[{**ASGD, "options": {"class": "ASGD", "kwargs": {"alpha": math.nan}}}]),
                              [], ["optimizers[0]", "kwargs.alpha", "finite"]),
    "a short tuple in torch kwargs": (tiny(optimizers=[{**ASGD, "options": {"class": "Rprop",
                                                                            "kwargs": {"etas": [0.5]}}}]),
                                      [], ["optimizers[0]", "kwargs.etas", "2 numbers"]),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", list(OUT_OF_RANGE))
def test_out_of_range_values_fail_at_validation(case, command, write_yaml, tmp_path, monkeypatch):
    raw, overrides, fragments = OUT_OF_RANGE[case]
    monkeypatch.chdir(tmp_path)
    logdir = tmp_path / "logs"
    path = write_yaml(copy.deepcopy(raw))
    result = invoke(*args_for(command, path, logdir, overrides))
    assert_one_error(result, *fragments)
    assert result.stdout == ""
    assert_nothing_written(logdir, tmp_path)


def test_a_numeric_text_in_torch_kwargs_is_the_number(write_yaml, tmp_path, monkeypatch, registry):
    """YAML 1.1 reads 1e-4 (no dot) as a string: the run uses the number, as for every other option."""
    text = yaml.safe_dump(tiny(optimizers=[ASGD]), sort_keys=False)
    text = text.replace("kwargs: {}", "kwargs: {lambd: 1e-4, t0: 1e3}")
    raw = yaml.safe_load(text)
    assert raw["optimizers"][0]["options"]["kwargs"] == {"lambd": "1e-4", "t0": "1e3"}  # the premise
    config = parse_config(raw, registry)
    optimizer = build_optimizer(config.optimizers[0], registry, [torch.zeros(2, requires_grad=True)])
    group = optimizer.param_groups[0]
    assert group["lambd"] == 1e-4 and isinstance(group["lambd"], float)
    assert group["t0"] == 1000.0
    monkeypatch.chdir(tmp_path)
    path = write_yaml(text)
    result = invoke("run", path, "--logdir", tmp_path / "logs", "--set", "train.seeds=1")
    assert result.exit_code == 0, result.output
    (run,) = json.loads((tmp_path / "logs" / "tiny" / "results.json").read_text())["runs"]
    assert run["status"] == "completed"


def test_the_bounds_leave_room_for_real_experiments(registry):
    """Names and labels of 100 characters, 10,000 seeds, an lr just below float32's maximum."""
    raw = tiny(name="n" * 100)
    raw["optimizers"][0]["label"] = "l" * 100
    raw["train"]["seeds"] = 10_000
    raw["optimizers"][1]["lr"] = 3.4e38
    raw["diagnostics"] = [{"name": "block_norms", "seeds": [9_999]}]
    config = parse_config(raw, registry)
    assert len(config.train.seeds) == 10_000 and config.optimizers[1].lr == 3.4e38
