"""What is scored: a candidate is a registered optimizer with fixed options and a declared search space.

A candidate comes from a registered name (default space: a log grid over the learning rate), from a
YAML file (``name``, ``label``, ``options``, ``search``), or from the suite's ``baselines.yaml``.
Every candidate gets the same number of tuning trials; its space only decides where they go.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from testbed.errors import ConfigError
from testbed.experiment.config import load_yaml
from testbed.options import Option, coerce_option, validate_options
from testbed.plugins.registry import Entry, Registry
from testbed.score.suite import BENCHMARK, latest_version, suite_file

DEFAULT_LR_RANGE = (1e-4, 1.0)
_LABEL = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")  # names directories: never "." or ".."
_RESERVED_LABELS = {"tuning"}  # an experiment's tuning/ directory
_FILE_KEYS = {"name", "label", "options", "search"}
_BASELINE_KEYS = _FILE_KEYS | {"plugin"}  # plugin: named in the note when it is missing
_LR = Option(type=float, min=0.0, min_exclusive=True, doc="learning rate")


@dataclass(frozen=True)
class SearchSpace:
    """Where tuning trials go: a log-uniform learning-rate range crossed with other options' values."""

    lr: tuple[float, float]
    others: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # (option name, its values to try)

    def points(self, trials: int) -> list[dict[str, Any]]:
        """``trials`` points, deterministic: a log grid over ``lr`` (ends included) crossed with every
        combination of the other values, lr ascending first. The other values must divide the trials
        evenly and leave at least 2 learning rates, so that every combination gets the same grid."""
        combinations = math.prod(len(values) for _, values in self.others)
        count = trials // combinations
        if count < 2 or count * combinations != trials:
            named = " x ".join(f"{len(values)} values of {name}" for name, values in self.others)
            raise ConfigError(f"search space: {named} ({combinations} combinations) must divide the {trials} "
                              f"tuning trials evenly, leaving at least 2 learning rates for each")
        names = [name for name, _ in self.others]
        return [{"lr": lr, **dict(zip(names, copy.deepcopy(combo)))}
                for lr in log_grid(*self.lr, count)
                for combo in itertools.product(*(values for _, values in self.others))]


@dataclass(frozen=True)
class Candidate:
    """An optimizer to score: its label in tables and directories, the registered optimizer, its
    fixed options and its search space."""

    label: str
    optimizer: str
    options: Mapping[str, Any]
    space: SearchSpace

    def entry(self, point: Mapping[str, Any], label: str | None = None) -> dict[str, Any]:
        """The raw optimizer entry of one trial point (``{"lr": .., other options ..}``), labelled
        ``label`` (default: the candidate's)."""
        options = {**copy.deepcopy(dict(self.options)), **{k: copy.deepcopy(v) for k, v in point.items() if k != "lr"}}
        return {"name": self.optimizer, "label": label or self.label, "lr": point["lr"], "options": options}


def log_grid(low: float, high: float, count: int) -> list[float]:
    """``count`` >= 2 log-spaced values from ``low`` to ``high``, both included; the inner ones rounded
    to 3 significant digits (readable directory names) unless that would make two of them equal."""
    inner = [low * (high / low) ** (i / (count - 1)) for i in range(1, count - 1)]
    rounded = [min(max(float(f"{v:.3g}"), low), high) for v in inner]
    grid = [low, *rounded, high]
    return grid if len(set(grid)) == count else [low, *inner, high]


def load_candidate(spec: str, registry: Registry) -> Candidate:
    """A candidate from a registered optimizer name (the default space: lr in DEFAULT_LR_RANGE) or from
    a YAML file ``{name, label?, options?, search?: {lr: [low, high], <option>: [values]}}``; errors
    are ConfigErrors naming the file and key."""
    spec = str(spec)
    if spec.endswith((".yaml", ".yml")) or "/" in spec or "\\" in spec:
        path = Path(spec)
        return candidate_from_mapping(load_yaml(path), registry, str(path), _FILE_KEYS, default_label=path.stem)
    if spec not in registry.entries["optimizer"]:
        raise ConfigError(f"unknown optimizer {spec!r} (give a registered name or a YAML file); "
                          f"available: {registry.available('optimizer')}")
    return candidate_from_mapping({"name": spec}, registry, spec, _FILE_KEYS, default_label=spec)


def candidate_from_mapping(data: Any, registry: Registry, where: str, keys: set[str] = _FILE_KEYS,
                           default_label: str | None = None) -> Candidate:
    """A candidate from its YAML mapping, validated against the registered optimizer's options."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping with an optimizer name, got {data!r}")
    unknown = sorted(set(data) - keys)
    if unknown:
        raise ConfigError(f"{where}: {unknown[0]}: unknown key (known keys: {', '.join(sorted(keys))})")
    if not isinstance(data.get("name"), str):
        raise ConfigError(f"{where}: name: a registered optimizer name is required")
    entry = registry.get("optimizer", data["name"], f"{where}: name")
    label = _label(data.get("label", default_label or entry.name), where)
    options = copy.deepcopy(dict(data.get("options") or {}))
    validate_options(entry.options, options, f"{where}: options")
    space = _search_space(data.get("search"), entry, options, f"{where}: search")
    return Candidate(label, entry.name, options, space)


def baselines(version: str | None = None, registry: Registry | None = None, root: Path = BENCHMARK) -> list[Candidate]:
    """The baselines of suite ``version`` (``baselines.yaml``; None: the latest) whose optimizer is installed, in the
    file's order (see ``missing_baselines`` for the others)."""
    registry = registry if registry is not None else _installed_registry()
    return [candidate_from_mapping(data, registry, f"baselines.yaml: {label}", _BASELINE_KEYS, label)
            for label, data in _baseline_entries(version, root).items()
            if data.get("name") in registry.entries["optimizer"]]


def missing_baselines(version: str | None = None, registry: Registry | None = None, root: Path = BENCHMARK) -> list[str]:
    """A note per baseline of suite ``version`` skipped because its optimizer is not installed."""
    registry = registry if registry is not None else _installed_registry()
    return [f"baseline {label!r} skipped: optimizer {data.get('name')!r} is not installed"
            + (f" (it comes with {data['plugin']})" if data.get("plugin") else "")
            for label, data in _baseline_entries(version, root).items()
            if data.get("name") not in registry.entries["optimizer"]]


def baselines_file(version: str, root: Path = BENCHMARK) -> Path:
    """``<root>/<version>/baselines.yaml`` (the version checked like the suite's; None: the latest)."""
    return suite_file(version or latest_version(root), root).parent / "baselines.yaml"


def _baseline_entries(version: str, root: Path) -> dict[str, Any]:
    raw = load_yaml(baselines_file(version, root))
    entries = raw.get("baselines")
    if set(raw) != {"baselines"} or not isinstance(entries, Mapping) or not entries:
        raise ConfigError(f"{version}/baselines.yaml: expected one key, baselines: a mapping "
                          "of labels to optimizer entries")
    for label, data in entries.items():
        if not isinstance(data, Mapping):
            raise ConfigError(f"baselines.yaml: {label}: expected a mapping, got {data!r}")
    return dict(entries)


def _installed_registry() -> Registry:
    from testbed.plugins import load_plugins  # only when the caller has none: loading plugins is not free

    return load_plugins().registry


def _label(label: Any, where: str) -> str:
    if not isinstance(label, str) or not _LABEL.match(label) or label in _RESERVED_LABELS:
        raise ConfigError(f"{where}: label: expected letters, digits, '_', '-' or '.' (and not "
                          f"{', '.join(sorted(_RESERVED_LABELS))}), got {label!r}; set label: in the file")
    return label


def _search_space(section: Any, entry: Entry, options: Mapping[str, Any], where: str) -> SearchSpace:
    section = {} if section is None else section
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where}: expected a mapping {{lr: [low, high], <option>: [values]}}, got {section!r}")
    lr = _lr_range(section.get("lr", list(DEFAULT_LR_RANGE)), f"{where}.lr")
    others = []
    for name, values in section.items():
        if name == "lr":
            continue
        if name not in entry.options:
            raise ConfigError(f"{where}.{name}: {entry.name!r} has no option {name!r} "
                              f"(options: {', '.join(sorted(entry.options)) or 'none'})")
        if name in options:
            raise ConfigError(f"{where}.{name}: also fixed in options; an option is either fixed or searched")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.{name}: expected a non-empty list of values to try, got {values!r}")
        for i, value in enumerate(values):
            coerce_option(entry.options[name], value, f"{where}.{name}[{i}]")
        if any(values.count(value) > 1 for value in values):
            raise ConfigError(f"{where}.{name}: values must be distinct, got {values!r}")
        others.append((str(name), tuple(values)))
    return SearchSpace(lr, tuple(others))


def _lr_range(value: Any, where: str) -> tuple[float, float]:
    if not isinstance(value, list) or len(value) != 2:
        raise ConfigError(f"{where}: expected a range [low, high], got {value!r}")
    low, high = (coerce_option(_LR, v, f"{where}[{i}]") for i, v in enumerate(value))
    if not low < high:
        raise ConfigError(f"{where}: the range [{low:g}, {high:g}] is empty: low must be below high")
    return low, high
