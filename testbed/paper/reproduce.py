"""`testbed reproduce`: run the paper's suite (testbed/paper/suite/*.yaml), then the report.

The full profile is the paper's protocol as the suite's files state it. The quick profile shrinks
every experiment (steps, batch, seeds, tuning grids and diagnostic budgets) so that the whole suite
finishes in minutes on 2 cores: a smoke test of the pipeline, not a reproduction.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

from testbed.engine.specs import ExperimentConfig
from testbed.experiment.config import load_yaml, parse_config
from testbed.errors import StorageError, TestbedError
from testbed.engine.loop import Report
from testbed.experiment.executors.base import Executor
from testbed.experiment.runner import ExperimentOutcome, Phase, run_experiment
from testbed.files.layout import PROFILE_FILE
from testbed.files.links import refuse_links
from testbed.files.lock import directory_lock
from testbed.plugins import Plugins
from testbed.report import make_report
from testbed.paper.claims import Claim
from testbed.paper.report import SMOOTHNESS_FROM, paper_extras

# Package data, so that an installed testbed has it; examples/paper in a checkout is a link to it.
SUITE = Path(__file__).resolve().parent / "suite"

# The quick profile: caps on the training section, and fixed evaluation and diagnostic budgets.
QUICK_TRAIN = {"steps": 150, "batch_size": 200}
QUICK_EVAL = {"every": 50, "batch_size": 200}
QUICK_DIAGNOSTICS = {
    "gradient_noise": {"samples": 100, "full_batch": 1000},
    "robust_condition_number": {"every": 50, "stop": 101},
    "directional_smoothness": {"every": 25},
    "generalized_smoothness": {"stop": 50},
    "sharpness": {"every": 50, "iterations": 10},
}
QUICK_TUNING = {"steps": 30, "seeds": [0]}
QUICK_NOTE = (f"quick profile: every experiment capped at {QUICK_TRAIN['steps']} steps of {QUICK_TRAIN['batch_size']} "
              "prompts and 2 seeds, 3-value tuning grids, small diagnostic budgets: its verdicts test the "
              "pipeline, not the paper")


def quick_profile(raw: dict[str, Any]) -> dict[str, Any]:
    """A copy of a raw experiment cut down to the quick profile (QUICK_NOTE says how)."""
    raw = copy.deepcopy(raw)
    train = raw.setdefault("train", {})
    for key, cap in QUICK_TRAIN.items():
        train[key] = min(int(train.get(key, cap)), cap)
    seeds = train.get("seeds", [0])
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    train["seeds"] = seeds[:2]  # seeds 0 and 1 (diagnostics the paper measures on seed 1 keep their run)
    raw["eval"] = {**raw.get("eval", {}), **QUICK_EVAL}
    for entry in raw.get("optimizers", []):
        if isinstance(entry, dict) and isinstance(entry.get("tune"), dict):
            grid = list(entry["tune"].get("lr", []))
            entry["tune"] = {**entry["tune"], **QUICK_TUNING,
                             "lr": sorted({grid[0], grid[len(grid) // 2], grid[-1]}) if grid else grid}
    for entry in raw.get("diagnostics", []) or []:
        if isinstance(entry, dict) and entry.get("name") in QUICK_DIAGNOSTICS:
            entry["options"] = {**(entry.get("options") or {}), **QUICK_DIAGNOSTICS[entry["name"]]}
    return raw


def suite_configs(plugins: Plugins, suite: Path = SUITE, quick: bool = False) -> list[ExperimentConfig]:
    """Every experiment of the suite, validated before anything runs."""
    files = sorted(Path(suite).glob("*.yaml"))
    if not files:
        raise TestbedError(f"no experiment files in {suite}")
    configs = []
    for path in files:
        raw = load_yaml(path)
        configs.append(parse_config(quick_profile(raw) if quick else raw, plugins.registry, default_name=path.stem))
    return configs


def relative_cost(config: ExperimentConfig) -> float:
    """A rough cost, to run cheap experiments first: an interrupted suite (its finished runs are
    kept and not run again) then has most experiments done. Steps x prompts x the d^2 n of a
    layer x layers, over every run and pilot."""
    runs = len(config.optimizers) * len(config.train.seeds)
    pilots = sum(len(s.tune.lr) * len(s.tune.seeds) * (s.tune.steps or config.train.steps) / config.train.steps
                 for s in config.optimizers if s.tune is not None)
    size = config.train.batch_size * config.task.d ** 2 * config.task.n * config.model.layers
    return (runs + pilots) * config.train.steps * size


def reproduce(plugins: Plugins, out: str | Path, quick: bool = False, workers: int | None = None,
              suite: Path = SUITE, on_experiment: Callable[[ExperimentConfig], Any] = lambda config: None,
              report: Report = lambda event: None, on_phase: Callable[[Phase], None] = lambda phase: None,
              force: bool = False, note: Callable[[str], None] = lambda line: None,
              warn: Callable[[str], None] = lambda line: None,
              executor: Executor | None = None) -> tuple[list[ExperimentOutcome], Path, list[Claim]]:
    """Run every experiment of ``suite`` (all validated first) on ``executor`` (default: local worker
    processes), then the report of all of them.
    ``on_experiment`` is called as each experiment starts; ``report`` and ``on_phase`` are handed
    to ``run_experiment``, ``note`` and ``warn`` to ``make_report``. Runs already done (an earlier,
    interrupted reproduction) are not run again unless ``force``; checkpointed ones go on from
    their checkpoint."""
    out = Path(out)
    configs = sorted(suite_configs(plugins, suite, quick), key=relative_cost)
    outcomes = []
    with directory_lock(out):  # one reproduction per output directory (each experiment is locked too)
        for config in configs:
            on_experiment(config)
            record_profile(out / "runs", config, "quick" if quick else "full")
            outcomes.append(run_experiment(config, plugins, out / "runs", report=report, workers=workers,
                                           on_phase=on_phase, force=force, executor=executor))
        # The quick profile is too short for the paper's table steps and the DS window from step 250.
        steps = (50, 100) if quick else (750, 1250)
        extras = paper_extras(steps, smoothness_from=0 if quick else SMOOTHNESS_FROM)
        directory, claims = make_report([out / "runs"], out / "report", extras, plugins.registry, note=note, warn=warn)
    return outcomes, directory, claims


def record_profile(logdir: Path, config: ExperimentConfig, profile: str) -> None:
    """profile.json beside the experiment's results.json, with the config it applies to: `testbed
    report` on these runs then says whether its verdicts are the paper's or a pipeline test."""
    path = logdir / config.name / PROFILE_FILE
    refuse_links(logdir, [path])  # as for every file written below a log directory
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"profile": profile, "config": config.to_dict()}, indent=2))
    except OSError as exc:
        raise StorageError.writing(path, exc) from None
