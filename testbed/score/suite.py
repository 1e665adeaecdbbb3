"""The versioned benchmark suite: its workloads (one experiment config each, without optimizers), their
targets and their budgets per profile, read from ``benchmark/<version>/suite.yaml``.

A suite version is frozen once results are published: a later change of a budget, a target or a
workload is a new version, so that old scores keep meaning what they meant.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from testbed.errors import ConfigError
from testbed.experiment.config import load_yaml
from testbed.options import Option, coerce_option, validate_options

BENCHMARK = Path(__file__).resolve().parent / "benchmark"
_VERSION = re.compile(r"^v[0-9]+$")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # a workload names directories and table rows

_TOP_KEYS = {"version", "profiles", "budgets", "common", "workloads"}
_WORKLOAD_KEYS = {"title", "heavy_tailed", "target", "seconds_per_step", "config", "budgets"}
_PROFILE_KEYS = {"note"}
# What a workload's config may not fix: the protocol sets them per experiment.
_SET_BY_PROTOCOL = (("optimizers",), ("train", "steps"), ("train", "seeds"), ("eval", "every"), ("name",))
_SEEDS = Option(type=list, item=int, doc="distinct seeds")
BUDGET_SCHEMA = {
    "steps": Option(type=int, min=1, doc="length of a scoring run"),
    "eval_every": Option(type=int, min=1, doc="evaluate every k steps"),
    "scoring_seeds": _SEEDS,
    "tuning_seeds": _SEEDS,
    "trials": Option(type=int, min=1, doc="tuning trials (hyperparameter points) per optimizer"),
    "trial_steps": Option(type=int, min=1, doc="length of a tuning trial"),
    "target": Option(None, type=float, min=0.0, min_exclusive=True, nullable=True,
                     doc="this profile's target eval loss (null: the workload's)"),
}


@dataclass(frozen=True)
class Budget:
    """One profile's budget of one workload: scoring runs, tuning trials, and their seeds."""

    steps: int
    eval_every: int
    scoring_seeds: tuple[int, ...]
    tuning_seeds: tuple[int, ...]  # disjoint from scoring_seeds: no selection bias in the scores
    trials: int
    trial_steps: int
    target: float | None = None  # this profile's target (a short profile cannot reach the full one)

    def candidate_steps(self) -> int:
        """Optimizer steps that scoring one candidate on this workload costs: tuning, then scoring."""
        return self.trials * len(self.tuning_seeds) * self.trial_steps + len(self.scoring_seeds) * self.steps


@dataclass(frozen=True)
class Profile:
    """A named budget level (``quick``, ``full``) and the note its output must carry."""

    name: str
    note: str


@dataclass(frozen=True)
class Workload:
    """One benchmark problem: an experiment config without optimizers, a target and budgets."""

    name: str
    title: str
    base: Mapping[str, Any]  # raw experiment config without optimizers, seeds, steps, eval.every
    target: float  # the eval loss whose first crossing defines steps-to-target
    budgets: Mapping[str, Budget]  # by profile name
    heavy_tailed: bool  # for the leaderboard's "Adam above SGD on heavy-tailed workloads" check
    seconds_per_step: float  # measured on one core (suite.yaml says how): for cost estimates

    def target_for(self, profile: str) -> float:
        """The target eval loss of ``profile``: its budget's own, else the workload's."""
        own = self.budgets[profile].target
        return self.target if own is None else own


@dataclass(frozen=True)
class Suite:
    """A versioned set of workloads and the profiles their budgets are given for."""

    version: str
    workloads: tuple[Workload, ...]
    profiles: Mapping[str, Profile]

    def select(self, names: Sequence[str] | None) -> "Suite":
        """The suite restricted to ``names`` (in the suite's order); None: all of it."""
        if names is None:
            return self
        known = [w.name for w in self.workloads]
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ConfigError(f"unknown workload {unknown[0]!r} in suite {self.version}; "
                              f"workloads: {', '.join(known)}")
        if not names:
            raise ConfigError(f"no workload selected; workloads of suite {self.version}: {', '.join(known)}")
        return Suite(self.version, tuple(w for w in self.workloads if w.name in names), self.profiles)

    def profile(self, name: str) -> Profile:
        """The profile called ``name``; an unknown one is a ConfigError listing the profiles."""
        if name not in self.profiles:
            raise ConfigError(f"unknown profile {name!r}; profiles of suite {self.version}: "
                              f"{', '.join(self.profiles)}")
        return self.profiles[name]


def versions(root: Path = BENCHMARK) -> list[str]:
    """The suite versions under ``root`` (directories ``v<N>`` holding a suite.yaml), oldest first."""
    root = Path(root)
    found = [p.name for p in root.iterdir() if _VERSION.match(p.name) and (p / "suite.yaml").is_file()] \
        if root.is_dir() else []
    return sorted(found, key=lambda name: int(name[1:]))


def latest_version(root: Path = BENCHMARK) -> str:
    """The newest suite version under ``root``: what `testbed score` runs unless told otherwise."""
    found = versions(root)
    if not found:
        raise ConfigError(f"no benchmark suite under {root}")
    return found[-1]


def suite_location(value: str | None) -> tuple[str | None, Path]:
    """(version, root) of what ``--suite`` names: a version of the shipped benchmark (``v2``; None:
    the latest), or a directory ``.../v<N>`` holding a suite.yaml (a lab's own suite, its
    baselines.yaml and shipped results beside it)."""
    if value is None:
        return None, BENCHMARK
    path = Path(value)
    if (path / "suite.yaml").is_file():
        path = path.resolve()
        return path.name, path.parent
    return value, BENCHMARK


def load_suite(version: str | None = None, root: Path = BENCHMARK) -> Suite:
    """The suite of ``<root>/<version>/suite.yaml`` (root: the shipped benchmark; version: the
    latest), validated."""
    version = version or latest_version(root)
    path = suite_file(version, root)
    raw = load_yaml(path)
    where = path.name
    _reject_unknown(raw, _TOP_KEYS, where)
    if raw.get("version") != version:
        raise ConfigError(f"{where}: version is {raw.get('version')!r}, expected {version!r}")
    profiles = _parse_profiles(raw.get("profiles"), f"{where}: profiles")
    default_budgets = _mapping(raw.get("budgets"), f"{where}: budgets")
    common = _mapping(raw.get("common", {}), f"{where}: common")
    workloads = _mapping(raw.get("workloads"), f"{where}: workloads")
    if not workloads:
        raise ConfigError(f"{where}: workloads: the suite has none")
    parsed = tuple(_parse_workload(name, data, common, default_budgets, profiles, f"{where}: workloads.{name}")
                   for name, data in workloads.items())
    return Suite(version, parsed, profiles)


def suite_file(version: str, root: Path = BENCHMARK) -> Path:
    """``<root>/<version>/suite.yaml``; an unknown version is a ConfigError listing the versions."""
    root = Path(root)
    path = root / str(version) / "suite.yaml"
    if not _VERSION.match(str(version)) or not path.is_file():
        raise ConfigError(f"unknown suite version {version!r}; versions: {', '.join(versions(root)) or 'none'}")
    return path


def experiment_raw(workload: Workload, budget: Budget, optimizers: list[dict[str, Any]],
                   seeds: Sequence[int], steps: int, name: str) -> dict[str, Any]:
    """The raw config of one experiment on ``workload``: its base with these optimizer entries, seeds,
    steps and the budget's evaluation interval (parse it with testbed.experiment.config.parse_config)."""
    raw = copy.deepcopy(dict(workload.base))
    raw["name"] = name
    raw["optimizers"] = copy.deepcopy(list(optimizers))
    raw["train"] = {**raw.get("train", {}), "steps": steps, "seeds": list(seeds)}
    raw["eval"] = {**raw.get("eval", {}), "every": budget.eval_every}
    return raw


def estimated_core_seconds(suite: Suite, profile: str, candidates: int,
                           seconds_per_step: Mapping[str, float] | None = None) -> float:
    """Core-seconds that scoring ``candidates`` optimizers on every workload of ``suite`` costs under
    ``profile``: tuning trials plus scoring runs, at each workload's measured seconds per step
    (``seconds_per_step`` overrides them by workload name)."""
    suite.profile(profile)
    measured = {w.name: w.seconds_per_step for w in suite.workloads} | dict(seconds_per_step or {})
    return candidates * sum(w.budgets[profile].candidate_steps() * measured[w.name] for w in suite.workloads)


# ------------------------------------------------------------------ parsing suite.yaml
def _parse_profiles(section: Any, where: str) -> dict[str, Profile]:
    profiles = {}
    for name, data in _mapping(section, where).items():
        _reject_unknown(data, _PROFILE_KEYS, f"{where}.{name}")
        note = data.get("note")
        if not isinstance(note, str) or not note.strip():
            raise ConfigError(f"{where}.{name}.note: a profile needs a note saying what its results are")
        profiles[str(name)] = Profile(str(name), " ".join(note.split()))
    if not profiles:
        raise ConfigError(f"{where}: the suite has no profile")
    return profiles


def _parse_workload(name: Any, data: Any, common: Mapping[str, Any], default_budgets: Mapping[str, Any],
                    profiles: Mapping[str, Profile], where: str) -> Workload:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{where}: a workload name is lower-case letters, digits and '_'")
    _reject_unknown(data, _WORKLOAD_KEYS, where)
    for key in ("title", "target", "config", "heavy_tailed", "seconds_per_step"):
        if key not in data:
            raise ConfigError(f"{where}.{key}: required key is missing")
    base = _merged(common, _mapping(data["config"], f"{where}.config"))
    _check_base(base, f"{where}.config")
    own_budgets = _mapping(data.get("budgets", {}), f"{where}.budgets")
    unknown = sorted(set(own_budgets) - set(profiles))
    if unknown:
        raise ConfigError(f"{where}.budgets.{unknown[0]}: unknown profile (profiles: {', '.join(profiles)})")
    budgets = {profile: _parse_budget(_merged(_mapping(default_budgets.get(profile), f"budgets.{profile}"),
                                              own_budgets.get(profile, {})), f"{where}.budgets.{profile}")
               for profile in profiles}
    target = coerce_option(Option(type=float, min=0.0, min_exclusive=True), data["target"], f"{where}.target")
    seconds = coerce_option(Option(type=float, min=0.0, min_exclusive=True), data["seconds_per_step"],
                            f"{where}.seconds_per_step")
    heavy = coerce_option(Option(type=bool), data["heavy_tailed"], f"{where}.heavy_tailed")
    if not isinstance(data["title"], str) or not data["title"].strip():
        raise ConfigError(f"{where}.title: expected a non-empty text")
    return Workload(name, data["title"], base, target, budgets, heavy, seconds)


def _parse_budget(section: Mapping[str, Any], where: str) -> Budget:
    values = validate_options(BUDGET_SCHEMA, section, where)
    for key in ("scoring_seeds", "tuning_seeds"):
        seeds = values[key]
        if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ConfigError(f"{where}.{key}: expected a non-empty list of distinct seeds >= 0, got {seeds!r}")
        values[key] = tuple(seeds)
    shared = sorted(set(values["scoring_seeds"]) & set(values["tuning_seeds"]))
    if shared:
        raise ConfigError(f"{where}: seed {shared[0]} is both a tuning and a scoring seed; they must be disjoint "
                          "(a seed that chose the hyperparameters would also count in the score)")
    if values["eval_every"] > values["trial_steps"] or values["eval_every"] > values["steps"]:
        raise ConfigError(f"{where}.eval_every: longer than a run, so a run would be evaluated only at its end")
    return Budget(**values)


def _check_base(base: Mapping[str, Any], where: str) -> None:
    """A workload's config leaves the optimizers, seeds, steps and eval interval to the protocol."""
    for path in _SET_BY_PROTOCOL:
        node: Any = base
        for key in path[:-1]:
            node = node.get(key, {}) if isinstance(node, Mapping) else {}
        if isinstance(node, Mapping) and path[-1] in node:
            raise ConfigError(f"{where}.{'.'.join(path)}: set by the scoring protocol, not by a workload")


def _merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` deep-merged over ``base`` (mappings merge key by key; anything else replaces)."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _mapping(section: Any, where: str) -> dict[str, Any]:
    if section is None:
        raise ConfigError(f"{where}: required section is missing")
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {section!r}")
    return dict(section)


def _reject_unknown(section: Any, known: set[str], where: str) -> None:
    for key in _mapping(section, where):
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown key (known keys: {', '.join(sorted(known))})")
