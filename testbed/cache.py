"""Run identity and the result cache.

A run's id is a hash of everything that decides its numbers and its outputs: the task, model,
training and evaluation settings, its optimizer entry (with the learning rate it runs at), the
diagnostics that apply to it, its seed, and the versions of testbed, torch and of the plugins that
provide its task, optimizer and diagnostics. Its experiment name, the other optimizer entries and
the seed list are not part of it, so two sweep points that share a run share its id.

A run whose directory holds a ``summary.json`` with its id and a finished status (completed or
diverged: both are outcomes of the protocol) is not run again; a failed or interrupted one is, and
so is a divergence recorded before the engine told divergence from an overflowing gradient norm.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .config import _plain
from .plugins import Plugins
from .run import RunPlan, RunResult

FINISHED = ("completed", "diverged")
# Train settings added after run ids were: at these defaults they leave the id as it was, so
# results cached before them stay valid.
SINCE_IDS = {"dtype": "float32"}
SUMMARY_FILE = "summary.json"


def run_id(plan: RunPlan, plugins: Plugins) -> str:
    """16 hex digits of the SHA-256 of the run's identity (see the module docstring)."""
    return hashlib.sha256(json.dumps(identity(plan, plugins), sort_keys=True).encode()).hexdigest()[:16]


def identity(plan: RunPlan, plugins: Plugins) -> dict[str, Any]:
    config, spec, registry = plan.config, plan.optimizer, plugins.registry
    diagnostics = [d for d in config.diagnostics if d.applies_to(spec.label, plan.seed)]
    provided_by = {registry.get("task", config.task.name, "task").plugin,
                   registry.get("optimizer", spec.name, "optimizer").plugin}
    provided_by |= {registry.get("diagnostic", d.name, "diagnostic").plugin for d in diagnostics}
    plugin_versions = plugins.versions()
    train = {k: v for k, v in _plain(dataclasses.asdict(config.train)).items()
             if k != "seeds" and SINCE_IDS.get(k, object()) != v}
    return {
        "task": _plain(dataclasses.asdict(config.task)),
        "model": _plain(dataclasses.asdict(config.model)),
        "train": train,
        "eval": _plain(dataclasses.asdict(config.eval)),
        "optimizer": {k: v for k, v in _plain(dataclasses.asdict(spec)).items() if k != "tune"},
        "diagnostics": [{"name": d.name, "options": _plain(d.options)} for d in diagnostics],
        "seed": plan.seed,
        "pilot": plan.pilot,
        "versions": {"testbed": __version__, "torch": torch.__version__,
                     **{name: plugin_versions.get(name, "unknown") for name in sorted(provided_by)}},
    }


def finished_result(plan: RunPlan) -> RunResult | None:
    """The saved result of this very run (same id) if it finished, else None."""
    data = read_summary(Path(plan.run_dir))
    if data is None or data.get("run_id") != plan.run_id or data.get("status") not in FINISHED:
        return None
    if data["status"] == "diverged" and "diverged_on" not in data:
        return None  # recorded by an older engine, which took an overflowing gradient norm for divergence
    fields = {f.name for f in dataclasses.fields(RunResult)}
    result = RunResult(**{k: v for k, v in data.items() if k in fields})
    result.key, result.run_dir = plan.key, plan.run_dir  # the same run may sit in another sweep point
    if result.status == "diverged":
        result.final_eval_loss = float("nan")  # saved as null (strict JSON)
    return result


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None
