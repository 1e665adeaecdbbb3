"""Sweeps: one YAML, many experiment configs.

A config may have a ``sweep`` section whose keys are dotted config paths (as for ``--set``):

    sweep:
      grid:                       # cartesian product of these lists
        task.n: [10, 20, 40]
      zip:                        # lists of equal length, taken element by element
        optimizers.0.lr: [0.01, 0.02, 0.05]        # an optimizer entry by index, label or name
        optimizers.1.lr: [0.001, 0.002, 0.005]
      points:                     # explicit points
        - {model.layers: 6, train.batch_size: 500}
        - {model.layers: 3}

The points are the product of the factors given (the grid, each zip group, the explicit list), so
the example has 3 x 3 x 2 = 18 points. ``zip`` may also be a list of groups. Seeds stay
``train.seeds``. Each point is a whole experiment config, validated before anything runs; its runs
go to ``<logdir>/<name>/<point>/``, where ``<point>`` spells out its values (``1.lr=0.001,...``).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

import yaml

from testbed.engine.specs import ExperimentConfig
from testbed.experiment.config import parse_config, planned_runs, set_path
from testbed.errors import ConfigError
from testbed.engine.limits import MAX_RUNS, MAX_SWEEP_POINTS
from testbed.plugins.registry import Registry
from testbed.text import format_lr

SWEEP_KEYS = ("grid", "zip", "points")
MAX_DIRNAME = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9_.,=+\-]")


@dataclass(frozen=True)
class Point:
    """One point of a sweep: the swept keys and their values, in the order the sweep gives them."""

    values: tuple[tuple[str, Any], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The swept keys and their values as a mapping."""
        return dict(self.values)

    @property
    def dirname(self) -> str:
        """A readable directory name, e.g. ``<label>.lr=0.001,task.n=20`` (hashed if very long)."""
        text = ",".join(f"{_short(key)}={_format(value)}" for key, value in self.values)
        text = _UNSAFE.sub("_", text)
        if len(text) > MAX_DIRNAME:
            digest = hashlib.sha256(text.encode()).hexdigest()[:10]
            text = f"{text[:MAX_DIRNAME - 11]}~{digest}"
        return text


@dataclass(frozen=True)
class SweepPoint:
    """One point of a sweep: its point, its validated config and where its runs are written."""
    point: Point
    config: ExperimentConfig
    directory: str  # relative to the log directory: <name> alone, or <name>/<point>


@dataclass(frozen=True)
class Sweep:
    """What one YAML file asks for: one experiment, or the points of a sweep."""

    name: str
    points: tuple[SweepPoint, ...]
    swept: bool  # False: a plain experiment (one point, no sweep section)

    @classmethod
    def of(cls, config: ExperimentConfig) -> "Sweep":
        """One experiment, as a sweep of one point in its own directory."""
        return cls(config.name, (SweepPoint(Point(), config, config.name),), swept=False)

    @property
    def keys(self) -> list[str]:
        """The swept keys, in first-seen order over all points."""
        return list(dict.fromkeys(key for p in self.points for key, _ in p.point.values))


def _short(key: str) -> str:
    return key[len("optimizers."):] if key.startswith("optimizers.") else key


def _format(value: Any) -> str:
    if isinstance(value, float):
        return format_lr(value)  # compact but exact, as any float in a name
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().replace(" ", "")
    return str(value)


def expand(raw: Mapping[str, Any], registry: Registry, default_name: str = "experiment") -> Sweep:
    """Expand a raw config (its ``sweep`` section, if any) into validated experiment configs."""
    raw = dict(raw)
    section = raw.pop("sweep", None)
    if section is None:
        return Sweep.of(parse_config(raw, registry, default_name))
    points = _points(section)
    name = parse_config(raw, registry, default_name).name  # the base config must be valid on its own
    expanded, seen, runs = [], {}, 0
    for point in points:
        point_raw = copy.deepcopy(raw)
        for key, value in point.values:
            set_path(point_raw, key, copy.deepcopy(value), f"sweep key {key!r}")
        try:
            config = parse_config(point_raw, registry, default_name)
        except ConfigError as exc:
            raise ConfigError(f"sweep point {point.dirname}: {exc}") from None
        if point.dirname in seen:
            raise ConfigError(f"sweep: the point {point.dirname} is given twice")
        runs += planned_runs(config)
        if runs > MAX_RUNS:  # stop at the point that crosses the bound, not after validating them all
            raise ConfigError(f"sweep: {runs} runs in its first {len(expanded) + 1} of {len(points)} points, "
                              f"more than the {MAX_RUNS} a sweep may have")
        seen[point.dirname] = point
        expanded.append(SweepPoint(point, config, f"{name}/{point.dirname}"))
    return Sweep(name, tuple(expanded), swept=True)


def _points(section: Any) -> list[Point]:
    if not isinstance(section, Mapping) or not section:
        raise ConfigError(f"sweep: expected a mapping with any of {', '.join(SWEEP_KEYS)}, got {section!r}")
    for key in section:
        if key not in SWEEP_KEYS:
            raise ConfigError(f"sweep.{key}: unknown key (known keys: {', '.join(SWEEP_KEYS)})")
    grid = _lists(section["grid"], "sweep.grid") if "grid" in section else None
    groups = _zip_groups(section["zip"]) if "zip" in section else []
    explicit = _explicit(section["points"]) if "points" in section else None
    _check_point_count(grid, groups, explicit)
    factors: list[list[tuple[tuple[str, Any], ...]]] = []
    if grid:
        factors.append([tuple(zip(grid, values)) for values in itertools.product(*grid.values())])
    factors += [[tuple(zip(group, values)) for values in zip(*group.values())] for group in groups]
    if explicit:
        factors.append(explicit)
    points = [Point(tuple(itertools.chain.from_iterable(parts))) for parts in itertools.product(*factors)]
    for point in points:
        keys = [key for key, _ in point.values]
        duplicated = sorted({key for key in keys if keys.count(key) > 1})
        if duplicated:
            raise ConfigError(f"sweep: {', '.join(duplicated)} is swept twice (in two of grid, zip, points)")
    return points


def _check_point_count(grid: dict[str, list] | None, groups: list[dict[str, list]],
                       explicit: list | None) -> None:
    """The points are the product of the factor sizes: counted before any point is made."""
    sizes = [len(values) for values in grid.values()] if grid else []
    sizes += [len(next(iter(group.values()))) for group in groups]
    sizes += [len(explicit)] if explicit else []
    total = math.prod(sizes)
    if total > MAX_SWEEP_POINTS:
        raise ConfigError(f"sweep: {total} points ({' x '.join(map(str, sizes))} from grid, zip and points), "
                          f"more than the {MAX_SWEEP_POINTS} a sweep may have")


def _zip_groups(section: Any) -> list[dict[str, list]]:
    """The zip groups (one mapping, or a list of them), each of lists of equal length."""
    groups = section if isinstance(section, list) else [section]
    checked = []
    for i, group in enumerate(groups):
        where = f"sweep.zip[{i}]" if isinstance(section, list) else "sweep.zip"
        lists = _lists(group, where)
        lengths = {key: len(values) for key, values in lists.items()}
        if len(set(lengths.values())) != 1:
            raise ConfigError(f"{where}: the lists must have equal lengths, got {lengths}")
        checked.append(lists)
    return checked


def _lists(section: Any, where: str) -> dict[str, list]:
    if not isinstance(section, Mapping) or not section:
        raise ConfigError(f"{where}: expected a mapping of config keys to lists of values, got {section!r}")
    for key, values in section.items():
        _check_key(key, f"{where}.{key}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.{key}: expected a non-empty list of values, got {values!r}")
    return {str(key): list(values) for key, values in section.items()}


def _explicit(section: Any) -> list[tuple[tuple[str, Any], ...]]:
    if not isinstance(section, list) or not section:
        raise ConfigError(f"sweep.points: expected a non-empty list of mappings, got {section!r}")
    points = []
    for i, point in enumerate(section):
        if not isinstance(point, Mapping) or not point:
            raise ConfigError(f"sweep.points[{i}]: expected a mapping of config keys to values, got {point!r}")
        for key in point:
            _check_key(key, f"sweep.points[{i}].{key}")
        points.append(tuple((str(k), v) for k, v in point.items()))
    return points


def _check_key(key: Any, where: str) -> None:
    if not isinstance(key, str) or not key.strip(". "):
        raise ConfigError(f"{where}: expected a dotted config key such as task.n or optimizers.<label>.lr")
    if key.split(".")[0] in ("name", "sweep"):
        raise ConfigError(f"{where}: {key.split('.')[0]!r} cannot be swept")
