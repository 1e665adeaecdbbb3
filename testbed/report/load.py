"""Experiments loaded from their results.json, trusting nothing in it: a file someone else wrote
(or a truncated one, or one from another tool) must give one clear reason, never a traceback, and
its names must not choose where the report reads or writes."""

from __future__ import annotations

import json
import math
import reprlib
from pathlib import Path
from typing import Any

from testbed.errors import ResultsError, TestbedError
from testbed.files.layout import PROFILE_FILE, RESULTS_FILE, run_parts
from testbed.files.safe_paths import path_under
from testbed.report.data import Experiment, Run

PROFILES = ("quick", "full")  # the profiles `testbed reproduce` records in PROFILE_FILE


def find_experiments(paths: list[str | Path]) -> tuple[list[Experiment], list[str]]:
    """Every readable experiment under the given directories (a directory holding results.json,
    or any directory above such directories), in a stable order; and one line per experiment that
    could not be read, saying why."""
    found: list[Path] = []
    for given in map(Path, paths):
        if not given.is_dir():
            raise TestbedError(f"{given}: not a directory")
        matches = [given] if (given / RESULTS_FILE).exists() else sorted(p.parent for p in given.rglob(RESULTS_FILE))
        if not matches:
            raise TestbedError(f"{given}: no {RESULTS_FILE} found (run an experiment first)")
        found += [m for m in matches if m not in found]
    experiments, problems = [], []
    for directory in found:
        try:
            experiments.append(load_experiment(directory))
        except ResultsError as exc:
            problems.append(str(exc))
    return experiments, problems


def load_experiment(directory: Path) -> Experiment:
    """The experiment whose results.json is in ``directory``; a ResultsError naming the file when
    it cannot be read or is not what testbed writes."""
    path = directory / RESULTS_FILE
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise ResultsError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, or nested beyond the parser
        raise ResultsError(f"cannot read {path}: {exc}") from None
    try:
        # "\ud800" is valid JSON but no text: printing or saving it would fail later, far from here.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ResultsError(f"cannot read {path}: it holds a string that is not valid Unicode") from None
    try:
        return _parse_experiment(data, directory)
    except TestbedError as exc:
        raise ResultsError(f"{path}: {exc}") from None


# The config fields a report reads, with their JSON types.
CONFIG_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "task": {"name": str, "d": int, "n": int},
    "model": {"layers": int, "parameterization": str, "attention": str},
    "train": {"steps": int, "batch_size": int, "seeds": (list, int)},
}
NUMBER = (int, float)
_REQUIRED = object()


def _parse_experiment(data: Any, directory: Path) -> Experiment:
    if not isinstance(data, dict):
        raise ResultsError(f"not a JSON object but {_kind(data)}")
    config = _field(data, "config", dict)
    for section, fields in CONFIG_FIELDS.items():
        values = _field(config, section, dict, "config: ")
        for key, kinds in fields.items():
            _field(values, key, kinds, f"config.{section}: ")
    for index, entry in enumerate(_field(config, "optimizers", list, "config: ", default=[])):
        if not isinstance(entry, dict):
            raise ResultsError(f"config.optimizers[{index}] is {_kind(entry)}, expected an object")
    experiment = Experiment(_field(data, "experiment", str, default=directory.name), directory, config,
                            sweep=_field(data, "sweep", str, default=None),
                            point=_field(data, "point", dict, default={}),
                            status=_field(data, "status", str, default=None),
                            profile=read_profile(directory, config))
    runs = _field(data, "runs", list)
    experiment.runs = [_parse_run(entry, f"runs[{i}]: ", directory) for i, entry in enumerate(runs)]
    return experiment


def _parse_run(record: Any, where: str, directory: Path) -> Run:
    if not isinstance(record, dict):
        raise ResultsError(f"{where}{_kind(record)}, expected an object")
    label, seed = _field(record, "label", str, where), _field(record, "seed", int, where)
    # The run directory relative to the experiment's (results may have moved since the run), and
    # never outside it, whatever the label says.
    run_dir = path_under(directory, *run_parts(label, seed))
    diagnostics = _field(record, "diagnostics", dict, where, default={})
    for key, points in diagnostics.items():
        if not isinstance(points, list) or not all(_is_point(p) for p in points):
            raise ResultsError(f"{where}diagnostic {reprlib.repr(key)} is not a list of [step, value] pairs")
    status, final = _field(record, "status", str, where), _loss(record, "final_eval_loss", where)
    if status == "completed" and final is None:
        raise ResultsError(f"{where}a completed run without a final_eval_loss")
    return Run(label, seed, status, final,
               _numbers(record, "eval_steps", where), _numbers(record, "eval_losses", where, loss=True),
               diagnostics, str(run_dir), _loss(record, "lr", where), _field(record, "diverged_at", int, where, None),
               _field(record, "diverged_on", str, where, None), _numbers(record, "zeroed_steps", where),
               _field(record, "error", str, where, None))


def _field(record: dict, key: str, kinds: type | tuple[type, ...], where: str = "", default: Any = _REQUIRED) -> Any:
    """``record[key]`` if it has one of the JSON types ``kinds``; ``default`` when it is absent or
    null (a ResultsError if there is no default)."""
    value = record.get(key)
    if value is None:
        if default is _REQUIRED:
            raise ResultsError(f"{where}missing {key!r}")
        return default
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ResultsError(f"{where}{key!r} is {_kind(value)}, expected {' or '.join(_kind(k) for k in kinds)}")
    return value


def _loss(record: dict, key: str, where: str) -> float | None:
    """A loss or learning rate: a finite number >= 0, or null."""
    value = _field(record, key, NUMBER, where, None)
    if value is not None and not (_is_number(value) and math.isfinite(value) and value >= 0):
        raise ResultsError(f"{where}{key!r} is {value}, expected a finite number >= 0")
    return value


def _numbers(record: dict, key: str, where: str, loss: bool = False) -> list:
    """A list of numbers (steps), or with ``loss`` of finite numbers >= 0 or nulls (losses)."""
    values = _field(record, key, list, where, [])
    for value in values:
        if loss and value is None:
            continue
        if not _is_number(value) or (loss and not (math.isfinite(value) and value >= 0)):
            raise ResultsError(f"{where}{key!r} holds {reprlib.repr(value)}, expected "
                               f"{'finite numbers >= 0 or nulls' if loss else 'numbers'}")
    return values


def _is_number(value: Any) -> bool:
    """A JSON number that fits a float (math.isfinite overflows on a huge integer)."""
    if not isinstance(value, NUMBER) or isinstance(value, bool):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _is_point(value: Any) -> bool:
    """A diagnostic's [step, value]: a finite step, a number or null."""
    return (isinstance(value, list) and len(value) == 2 and _is_number(value[0]) and math.isfinite(value[0])
            and (value[1] is None or _is_number(value[1])))


def _kind(value: Any) -> str:
    """The JSON name of a value's type, or of a type."""
    kind = value if isinstance(value, type) else type(value)
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
             float: "a number", type(None): "null"}
    return names.get(kind, kind.__name__)


def read_profile(directory: Path, config: dict) -> str | None:
    """The reproduction profile ("quick" or "full") recorded beside a results.json by `testbed
    reproduce`, if the record is about this very config (a later `testbed run` into the same
    directory is no reproduction)."""
    try:
        record = json.loads((directory / PROFILE_FILE).read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or record.get("config") != config or record.get("profile") not in PROFILES:
        return None
    return record["profile"]
