"""Run identity and the result cache.

A run's id is a hash of everything that decides its numbers and its outputs: the task, model,
training and evaluation settings, its optimizer entry (with the learning rate it runs at), the
diagnostics that apply to it, its seed, and the versions of testbed, torch and of the plugins that
provide its task, optimizer and diagnostics. Its experiment name, the other optimizer entries and
the seed list are not part of it, so two sweep points that share a run share its id.

A version names a release, not a plugin its author is editing: for the providing plugins that come
from a working tree (installed from a local directory, editable or not, or named in
$TESTBED_PLUGINS: see testbed.plugins.source) the id also hashes their source, so an edited update
rule gives new ids and new runs instead of stale cached numbers. Released plugins (a wheel, an
index) add nothing, so their ids are what they were before source hashes existed (shipped results
and users' caches stay valid). The hashes go into the run's summary too (``plugin_code``), so that
a rerun can say that a plugin's code changed (``changed_plugins``).

A run whose directory holds a ``summary.json`` with its id and a finished status (completed or
diverged: both are outcomes of the protocol) is not run again; a failed or interrupted one is, and
so is a divergence recorded before the engine told divergence from an overflowing gradient norm.

A summary.json that is not JSON, or not plausibly a run's result (not an object, a field missing or
of the wrong type, eval steps and losses that do not pair up, an unknown status, a completed run
without a final loss...), means "not finished" too: the run is redone, and the file is kept aside as
``summary.invalid-<n>.json`` in its run directory, never silently deleted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any

from testbed.engine.provenance import core_versions
from testbed.files.json_io import plain_data
from testbed.files.layout import SUMMARY_FILE, invalid_summary_name
from testbed.plugins import Plugins
from testbed.engine.run import STATUSES, RunPlan, RunResult
from testbed.engine.specs import DiagnosticSpec

FINISHED = ("completed", "diverged")
# Train settings added after run ids were: at these defaults they leave the id as it was, so
# results cached before them stay valid.
# train.stream: the torch stream is the one runs drew before the setting existed (issue 15); the
# philox stream draws other prompts, so its runs get ids of their own.
SINCE_IDS = {"dtype": "float32", "stream": "torch"}
# How the engine computes in a dtype, where that changed after run ids were (a new summation order
# moves the numbers at the rounding level): the runs of that dtype get new ids, so no cached result
# is mixed with new ones. float64 linear attention moved from torch to the compiled kernel (issue 15).
ARITHMETIC = {"float64": "compiled kernel"}
# The same for a model with an MLP feature map: its forward and backward moved from autograd to
# compiled code (issue 15), in every dtype.
FEATURE_MAP_ARITHMETIC = "compiled feature map"
# And for softmax attention: it moved from autograd to its compiled kernel (issue 15), in every dtype.
ATTENTION_ARITHMETIC = {"softmax": "compiled softmax kernel"}
# And for what diagnostics measure through the probe: Hessian-vector products moved to the kernels'
# value and tangent lanes and Probe.gradient to the training step's kernel call (issue 15), which
# moves their values at the rounding level, so runs that measure diagnostics get new ids.
PROBE_ARITHMETIC = "second order on kernel lanes"
# Fields a summary must have beyond those RunResult cannot do without: a result without its eval
# curve is no result.
REQUIRED = ("eval_steps", "eval_losses")


def run_id(plan: RunPlan, plugins: Plugins) -> str:
    """16 hex digits of the SHA-256 of the run's identity (see the module docstring)."""
    return hashlib.sha256(json.dumps(identity(plan, plugins), sort_keys=True).encode()).hexdigest()[:16]


def identity(plan: RunPlan, plugins: Plugins) -> dict[str, Any]:
    """What a run's id hashes (see the module docstring), as plain JSON-able data."""
    config, spec = plan.config, plan.optimizer
    diagnostics = applying_diagnostics(plan)
    provided_by = providers(plan, plugins)
    plugin_versions = plugins.versions()
    code = plugins.source_hashes(provided_by)
    train = {k: v for k, v in plain_data(dataclasses.asdict(config.train)).items()
             if k != "seeds" and SINCE_IDS.get(k, object()) != v}
    arithmetic = [ARITHMETIC[config.train.dtype]] if config.train.dtype in ARITHMETIC else []
    if config.model.feature_map is not None:
        arithmetic.append(FEATURE_MAP_ARITHMETIC)
    if config.model.attention in ATTENTION_ARITHMETIC:
        arithmetic.append(ATTENTION_ARITHMETIC[config.model.attention])
    if arithmetic:
        train["arithmetic"] = ", ".join(arithmetic)
    return {
        "task": plain_data(dataclasses.asdict(config.task)),
        "model": plain_data(dataclasses.asdict(config.model)),
        "train": train,
        "eval": plain_data(dataclasses.asdict(config.eval)),
        "optimizer": {k: v for k, v in plain_data(dataclasses.asdict(spec)).items() if k != "tune"},
        "diagnostics": [{"name": d.name, "options": plain_data(d.options)} for d in diagnostics],
        **({"probe": PROBE_ARITHMETIC} if diagnostics else {}),
        "seed": plan.seed,
        "pilot": plan.pilot,
        "versions": {**core_versions(),
                     **{name: plugin_versions.get(name, "unknown") for name in sorted(provided_by)}},
        **({"code": code} if code else {}),  # absent for released plugins: their ids stay as they were
    }


def identified(plan: RunPlan, plugins: Plugins) -> RunPlan:
    """``plan`` with its run id and the source hashes that went into it (its summary records them)."""
    code = plugins.source_hashes(providers(plan, plugins))
    plan = dataclasses.replace(plan, plugin_code=tuple(code.items()))
    return dataclasses.replace(plan, run_id=run_id(plan, plugins))


def applying_diagnostics(plan: RunPlan) -> list[DiagnosticSpec]:
    """The config's diagnostics that apply to this run's optimizer label and seed."""
    return [d for d in plan.config.diagnostics if d.applies_to(plan.optimizer.label, plan.seed)]


def providers(plan: RunPlan, plugins: Plugins) -> set[str]:
    """The plugins that provide the run's task, optimizer and the diagnostics that apply to it."""
    registry = plugins.registry
    names = {registry.get("task", plan.config.task.name, "task").plugin,
             registry.get("optimizer", plan.optimizer.name, "optimizer").plugin}
    return names | {registry.get("diagnostic", d.name, "diagnostic").plugin for d in applying_diagnostics(plan)}


def changed_plugins(plan: RunPlan) -> list[str]:
    """The plugins (by name) whose source differs from that recorded by a finished run of another
    id in ``plan``'s directory: why that run is done again. [] if there is none, or the same code."""
    data = read_summary(Path(plan.run_dir))
    if data is None or data["status"] not in FINISHED or data.get("run_id") == plan.run_id:
        return []
    before, now = data.get("plugin_code", {}), dict(plan.plugin_code)
    return sorted(name for name in before.keys() & now.keys() if before[name] != now[name])


def finished_result(plan: RunPlan) -> RunResult | None:
    """The saved result of this very run (same id) if it finished, else None."""
    data = read_summary(Path(plan.run_dir))
    if data is None or data.get("run_id") != plan.run_id or data["status"] not in FINISHED:
        return None
    if data["status"] == "diverged" and "diverged_on" not in data:
        return None  # recorded by an older engine, which took an overflowing gradient norm for divergence
    fields = {f.name for f in dataclasses.fields(RunResult)}
    result = RunResult(**{k: v for k, v in data.items() if k in fields})
    result.key, result.run_dir = plan.key, plan.run_dir  # the same run may sit in another sweep point
    if result.status == "diverged":
        result.final_eval_loss = float("nan")  # saved as null (strict JSON)
    # a non-finite eval loss (the one a run diverged on) is saved as null too: the result read back
    # holds a float, as the run's own did
    result.eval_losses = [float("nan") if loss is None else loss for loss in result.eval_losses]
    return result


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's summary.json if it is a plausible result, else None (absent, unreadable or not)."""
    data, problem = _read_summary(run_dir)
    return None if problem else data


def set_aside_invalid_summary(run_dir: Path) -> Path | None:
    """Rename the run's summary.json to ``summary.invalid-<n>.json`` (the first n free) if it is
    unreadable or implausible, and return the new path: the run is about to be redone, and the file
    stays for whoever wants to know what broke it."""
    _, problem = _read_summary(run_dir)
    if problem is None:
        return None
    n = 1
    while (run_dir / invalid_summary_name(n)).exists():
        n += 1
    target = run_dir / invalid_summary_name(n)
    (run_dir / SUMMARY_FILE).rename(target)
    return target


def _read_summary(run_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(the summary, None) if plausible; (None, why not) if unreadable or implausible; (None, None)
    if the run has none."""
    path = run_dir / SUMMARY_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, f"unreadable: {exc}"
    problem = summary_problem(data)
    return (None, problem) if problem else (data, None)


def summary_problem(data: Any) -> str | None:
    """Why parsed summary.json ``data`` cannot be a run's result, or None if it plausibly is one."""
    if not isinstance(data, dict):
        return f"not a JSON object but {type(data).__name__}"
    for field in dataclasses.fields(RunResult):
        if field.name not in data:
            if _required(field):
                return f"{field.name} is missing"
        elif not _conforms(data[field.name], RESULT_TYPES[field.name]):
            return f"{field.name} is {data[field.name]!r}, not {RESULT_TYPES[field.name]}"
    if data["status"] not in STATUSES:
        return f"unknown status {data['status']!r}"
    if len(data["eval_steps"]) != len(data["eval_losses"]):
        return f"{len(data['eval_steps'])} eval steps but {len(data['eval_losses'])} eval losses"
    if data["status"] in FINISHED and not data["eval_losses"]:
        return f"a {data['status']} run without an evaluation"
    if data["status"] == "completed" and data.get("final_eval_loss") is None:
        return "a completed run without a final eval loss"
    return None


RESULT_TYPES = typing.get_type_hints(RunResult)


def _required(field: dataclasses.Field) -> bool:
    no_default = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    return no_default or field.name in REQUIRED


def _conforms(value: Any, hint: Any, in_container: bool = False) -> bool:
    """Whether a JSON value fits a RunResult field's type. A float in a list or dict may be null:
    strict JSON saves NaN and infinities there (a diverged eval loss, an undefined ratio) as null."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, arg, in_container) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(_conforms(item, args[0], True) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(_conforms(item, args[1], True) for item in value.values())
    if hint is float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return number or (in_container and value is None)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    return isinstance(value, hint) if isinstance(hint, type) else True
