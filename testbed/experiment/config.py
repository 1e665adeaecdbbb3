"""Experiment configuration: YAML in, a validated, typed ``ExperimentConfig`` out.

Validation happens entirely before anything runs: unknown keys are reported with their dotted path,
values are typed (PyYAML reads ``1e-3`` as a string; we never use the raw dict), plugin names and
plugin options are checked against what the plugins registered, and every task and optimizer is
built once on a throwaway model so that errors surface here, not in a worker. Before that, absurd
sizes fail against the bounds of ``limits.py``, counted without expanding or allocating anything.
"""

from __future__ import annotations

import copy
import re
import reprlib
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml

from testbed.errors import ConfigError, TestbedError
from testbed.engine.limits import (MAX_CONFIG_BYTES, MAX_DIM, MAX_LR, MAX_NAME_LENGTH, MAX_RUNS, MAX_SEED, MAX_SEEDS, MAX_STEPS, MAX_YAML_DEPTH, MAX_YAML_NODES, MEMORY_FRACTION, format_bytes, machine_memory_bytes, memory_budget_bytes, run_memory_bytes)
from testbed.model.config import FeatureMapConfig, ModelConfig
from testbed.model.transformer import LinearTransformer
from testbed.options import Option, coerce_option, validate_options
from testbed.plugins.registry import Registry
from testbed.tasks import Task, checked_task
from testbed.engine.build import build_diagnostic, build_optimizer, build_task
from testbed.engine.dynamo import optimizers_without_dynamo
from testbed.engine.specs import (EVAL_SCHEMA, TRAIN_SCHEMA, DiagnosticSpec, EvalConfig, ExperimentConfig, OptimizerSpec, TaskSpec,
                                  TrainConfig, TuneSpec)
from testbed.model.config import FEATURE_MAP_SCHEMA, MODEL_SCHEMA

_LABEL = re.compile(r"^(?!\.\.?$)[A-Za-z0-9_.\-]+$")  # a directory name: never "." or ".."


# ---------------------------------------------------------------- section schemas
_TOP_KEYS = {"name", "task", "optimizers", "model", "train", "eval", "diagnostics", "workers"}

TASK_KEYS = {"name", "d", "n", "options"}
OPTIMIZER_KEYS = {"name", "label", "lr", "options", "tune"}
TUNE_KEYS = {"lr", "steps", "seeds"}
TUNE_STEPS = Option(None, "pilot run length; null = train.steps", type=int, min=1, max=MAX_STEPS, nullable=True)
RESERVED_LABELS = {"tuning"}  # <experiment>/tuning/ holds the pilot runs
DIAGNOSTIC_KEYS = {"name", "options", "seeds", "optimizers"}
LR = Option(doc="learning rate", type=float, min=0.0, max=MAX_LR)
SEED = Option(0, "a seed", type=int, min=0, max=MAX_SEED)
DIM = Option(doc="dimension d of the covariates", type=int, min=1, max=MAX_DIM)
CONTEXT = Option(doc="context length n", type=int, min=1)  # bounded by the memory of a run


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _YamlTooLarge(yaml.YAMLError):
    """A document too large or too deep to be a config, or one that contains itself."""


def _children(node: yaml.Node) -> list[yaml.Node]:
    """The nodes a composed node holds: a mapping's keys and values, a sequence's items."""
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


class _ConfigLoader(_UniqueKeyLoader):
    """The loader of configs and --set values. It counts a document's values as if every alias were
    expanded, and stops past MAX_YAML_NODES: a "billion laughs" of nested aliases is 2 KB of text but
    endless once anything copies or saves it. It rejects an alias inside the node it names (a
    structure containing itself) and nesting deeper than MAX_YAML_DEPTH (which would exhaust Python's
    stack here or later). Counting happens while composing, so nothing absurd is built."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._expanded: dict[int, int] = {}  # id(node) -> its number of values, aliases expanded
        self._composed = 0  # nodes composed so far, each once
        self._depth = 0

    def compose_node(self, parent, index):
        mark = self.peek_event().start_mark
        is_alias = self.check_event(yaml.AliasEvent)
        if self._depth >= MAX_YAML_DEPTH:
            raise _YamlTooLarge(f"nested more than {MAX_YAML_DEPTH} levels deep (at line {mark.line + 1})")
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if is_alias:
            if id(node) not in self._expanded:  # its node is still being composed: the alias is inside it
                raise _YamlTooLarge(f"the alias at line {mark.line + 1} refers to a node that contains it")
            return node
        self._composed += 1
        size = 1 + sum(self._expanded[id(child)] for child in _children(node))
        self._expanded[id(node)] = size
        if max(size, self._composed) > MAX_YAML_NODES:
            raise _YamlTooLarge(f"more than {MAX_YAML_NODES} YAML values once its aliases are expanded "
                                f"(at line {mark.line + 1}); a config holds at most {MAX_YAML_NODES}")
        return node

    def construct_bounded_int(self, node):
        try:
            return self.construct_yaml_int(node)
        except ValueError:  # Python refuses to read an integer of more than 4,300 digits
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {len(node.value)} digits", node.start_mark) from None


_ConfigLoader.add_constructor("tag:yaml.org,2002:int", _ConfigLoader.construct_bounded_int)


def _parse_yaml(text: str, where: str) -> Any:
    """YAML text as data, through the bounded loader; ``where`` names the source in a size error."""
    try:
        return yaml.load(text, Loader=_ConfigLoader)
    except _YamlTooLarge as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _read_config_text(path: Path) -> str:
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_CONFIG_BYTES + 1)  # never more: the path may be a huge file or a device
    except OSError as exc:
        raise ConfigError(f"cannot read config {str(path)!r}: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 2**20} MiB, the most a config file may be")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config file; a missing, huge or non-UTF-8 file or malformed YAML is a ConfigError."""
    path = Path(path)
    text = _read_config_text(path)
    try:
        data = _parse_yaml(text, str(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (value parsed as YAML). List items are addressed by index
    or by optimizer label/name: ``optimizers.0.lr=0.01``, ``optimizers.<label>.lr=0.01``."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        path, text = item.split("=", 1)
        try:
            value = _parse_yaml(text, f"--set {path}")
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML") from None
        set_path(raw, path, value, f"--set {item!r}")
    return raw


def set_path(raw: dict[str, Any], path: str, value: Any, source: str) -> None:
    """Set the value at a dotted ``path`` of raw config data in place (missing mappings are made;
    list items by index or by optimizer label/name). ``source`` names the setting in errors."""
    keys = [k for k in str(path).strip().split(".") if k]
    if not keys:
        raise ConfigError(f"{source}: empty key")
    node: Any = raw
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        where = ".".join(keys[: i + 1])
        if isinstance(node, list):
            index = _list_index(node, key, f"{source}: {where}")
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, {})
        else:
            raise ConfigError(f"{source}: {'.'.join(keys[:i])} is not a mapping or list")


def _list_index(items: list, key: str, where: str) -> int:
    if key.lstrip("-").isdigit():
        index = int(key)
        if not -len(items) <= index < len(items):
            raise ConfigError(f"{where}: index out of range (the list has {len(items)} items)")
        return index
    for index, element in enumerate(items):
        if isinstance(element, dict) and key in (element.get("label"), element.get("name")):
            return index
    raise ConfigError(f"{where}: no list item labelled or named {key!r}")


def parse_config(raw: Mapping[str, Any], registry: Registry, default_name: str = "experiment") -> ExperimentConfig:
    """Validate raw YAML data against the schema and the registered plugins."""
    _reject_unknown(raw, _TOP_KEYS, "")
    name = raw.get("name", default_name)
    if not isinstance(name, str) or not _LABEL.match(name):
        raise ConfigError(f"name: expected a name of letters, digits, '_', '-' or '.', got {name!r}")
    _check_name_length(name, "name")
    model = _parse_model(raw.get("model"))
    task = _parse_task(raw.get("task"), registry)
    train = _parse_train(raw.get("train"))
    evaluation = EvalConfig(**validate_options(EVAL_SCHEMA, raw.get("eval"), "eval"))
    optimizers = _parse_optimizers(raw.get("optimizers"), registry)
    diagnostics = _parse_diagnostics(raw.get("diagnostics"), registry, [o.label for o in optimizers], train.seeds)
    workers = raw.get("workers")
    if workers is not None:
        workers = coerce_option(Option(1, type=int, min=1), workers, "workers")
    config = ExperimentConfig(name, task, optimizers, model, train, evaluation, diagnostics, workers)
    _check_affordable(config)
    _check_buildable(config, registry)
    return config


def _check_name_length(name: str, where: str) -> None:
    if len(name) > MAX_NAME_LENGTH:  # a file name has at most 255 bytes; the rest of the path needs room
        raise ConfigError(f"{where}: at most {MAX_NAME_LENGTH} characters (it names a directory), got {len(name)}")


def planned_runs(config: ExperimentConfig) -> int:
    """The main runs and learning-rate pilots of an experiment, counted without planning them."""
    pilots = sum(len(spec.tune.lr) * len(spec.tune.seeds) for spec in config.optimizers if spec.tune is not None)
    return len(config.optimizers) * len(config.train.seeds) + pilots


def _check_affordable(config: ExperimentConfig) -> None:
    """Fail on what no machine can run (see limits.py) before anything is planned or allocated."""
    runs = planned_runs(config)
    if runs > MAX_RUNS:
        raise ConfigError(f"optimizers x train.seeds, with the tuning pilots: {runs} runs, more than the "
                          f"{MAX_RUNS} an experiment may have")
    model, task = config.model, config.task
    need = run_memory_bytes(model, task.d, task.n, config.train.batch_size, config.eval.batch_size,
                            getattr(torch, config.train.dtype).itemsize)
    if need > memory_budget_bytes():
        sizes = (f"task.d={task.d}, task.n={task.n}, model.layers={model.layers}, "
                 f"train.batch_size={config.train.batch_size}, eval.batch_size={config.eval.batch_size}")
        if model.feature_map is not None:
            sizes += f", model.feature_map.hidden={reprlib.repr(list(model.feature_map.hidden))}"
        raise ConfigError(f"model and batches: one run needs about {format_bytes(need)} ({sizes}), more than "
                          f"{MEMORY_FRACTION:.0%} of this machine's {format_bytes(machine_memory_bytes())}")


def _reject_unknown(section: Any, known: set[str], where: str) -> None:
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {section!r}")
    for key in section:
        if key not in known:
            path = f"{where}.{key}" if where else str(key)
            raise ConfigError(f"{path}: unknown key (known keys: {', '.join(sorted(known))})")


def _parse_model(section: Any) -> ModelConfig:
    values = validate_options(MODEL_SCHEMA, section, "model")
    if values["feature_map"] is not None:
        fm = validate_options(FEATURE_MAP_SCHEMA, values["feature_map"], "model.feature_map")
        values["feature_map"] = FeatureMapConfig(tuple(fm["hidden"]), fm["out_dim"])
    return ModelConfig(**values)


def _parse_task(section: Any, registry: Registry) -> TaskSpec:
    if section is None:
        raise ConfigError("task: required section is missing (e.g. task: {name: <task>, d: 5, n: 20}; "
                          "`testbed list tasks` names the tasks)")
    _reject_unknown(section, TASK_KEYS, "task")
    for key in ("name", "d", "n"):
        if key not in section:
            raise ConfigError(f"task.{key}: required key is missing")
    if not isinstance(section["name"], str):
        raise ConfigError(f"task.name: expected a string, got {section['name']!r}")
    entry = registry.get("task", section["name"], "task.name")
    dims = validate_options({"d": DIM, "n": CONTEXT}, {"d": section["d"], "n": section["n"]}, "task")
    options = validate_options(entry.options, section.get("options"), "task.options")
    return TaskSpec(entry.name, dims["d"], dims["n"], options)


def _parse_train(section: Any) -> TrainConfig:
    values = validate_options(TRAIN_SCHEMA, section, "train")
    values["seeds"] = _parse_seeds(values["seeds"])
    return TrainConfig(**values)


def _parse_seeds(seeds: Any, where: str = "train.seeds") -> tuple[int, ...]:
    if seeds is None:
        return (0,)
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ConfigError(f"{where}: a count must be >= 1, got {seeds}")
        _check_seed_count(seeds, where)
        return tuple(range(seeds))
    if isinstance(seeds, list) and seeds:
        _check_seed_count(len(seeds), where)
        values = tuple(coerce_option(SEED, s, f"{where}[{i}]") for i, s in enumerate(seeds))
        if len(set(values)) != len(values):
            raise ConfigError(f"{where}: seeds must be distinct, got {list(values)}")
        return values
    raise ConfigError(f"{where}: expected a non-empty list of seeds or a count, got {seeds!r}")


def _check_seed_count(count: int, where: str) -> None:
    if count > MAX_SEEDS:  # checked before the seeds are listed: a count of 10^9 must not allocate
        raise ConfigError(f"{where}: {count} seeds, more than the {MAX_SEEDS} a list or count of seeds may have")


def _parse_optimizers(section: Any, registry: Registry) -> tuple[OptimizerSpec, ...]:
    if not isinstance(section, list) or not section:
        raise ConfigError("optimizers: expected a non-empty list of optimizer entries ({name, lr, options})")
    specs = []
    for i, item in enumerate(section):
        where = f"optimizers[{i}]"
        _reject_unknown(item, OPTIMIZER_KEYS, where)
        if "name" not in item or not isinstance(item["name"], str):
            raise ConfigError(f"{where}.name: an optimizer name is required")
        entry = registry.get("optimizer", item["name"], f"{where}.name")
        tune = _parse_tune(item.get("tune"), f"{where}.tune")
        if "lr" in item:
            lr = validate_options({"lr": LR}, {"lr": item["lr"]}, where)["lr"]
        elif tune is not None:
            lr = tune.lr[0]  # validation builds the optimizer once; tuning replaces it
        else:
            raise ConfigError(f"{where}.lr: a learning rate is required (or a tune section with an lr grid)")
        label = item.get("label", entry.name)
        if not isinstance(label, str) or not _LABEL.match(label):
            raise ConfigError(f"{where}.label: letters, digits, '_', '-' or '.' only, got {label!r}")
        _check_name_length(label, f"{where}.label")
        if label in RESERVED_LABELS:
            raise ConfigError(f"{where}.label: {label!r} is reserved (the directory of the tuning pilot runs); "
                              "choose another label")
        options = validate_options(entry.options, item.get("options"), f"{where}.options")
        specs.append(OptimizerSpec(entry.name, label, lr, options, tune))
    labels = [s.label for s in specs]
    duplicated = sorted({x for x in labels if labels.count(x) > 1})
    if duplicated:
        raise ConfigError(f"optimizers: label {duplicated[0]!r} is used twice; give each entry a distinct label")
    return tuple(specs)


def _parse_tune(section: Any, where: str) -> TuneSpec | None:
    """``tune: {lr: [grid], steps: N, seeds: [..] or k}``; null or absent: no tuning."""
    if section is None:
        return None
    _reject_unknown(section, TUNE_KEYS, where)
    grid = section.get("lr")
    if grid is None:
        raise ConfigError(f"{where}.lr: a grid of learning rates is required, e.g. [0.001, 0.01, 0.1]")
    if not isinstance(grid, list) or not grid:
        raise ConfigError(f"{where}.lr: expected a non-empty list of learning rates, got {grid!r}")
    values = tuple(coerce_option(LR, value, f"{where}.lr[{i}]") for i, value in enumerate(grid))
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ConfigError(f"{where}.lr: grid values must be distinct, {repeated[0]!r} is given twice")
    steps = coerce_option(TUNE_STEPS, section.get("steps"), f"{where}.steps")
    seeds = _parse_seeds(section.get("seeds"), f"{where}.seeds")
    return TuneSpec(values, steps, seeds)


def _parse_diagnostics(section: Any, registry: Registry, labels: list[str],
                       trained: tuple[int, ...]) -> tuple[DiagnosticSpec, ...]:
    if section is None:
        return ()
    if not isinstance(section, list):
        raise ConfigError("diagnostics: expected a list of {name, options, seeds, optimizers} entries")
    specs = []
    for i, item in enumerate(section):
        where = f"diagnostics[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        _reject_unknown(item, DIAGNOSTIC_KEYS, where)
        if not isinstance(item.get("name"), str):
            raise ConfigError(f"{where}.name: a diagnostic name is required")
        entry = registry.get("diagnostic", item["name"], f"{where}.name")
        options = validate_options(entry.config_options, item.get("options"), f"{where}.options")
        seeds = None
        if item.get("seeds") is not None:
            seeds = _parse_seeds(item["seeds"], f"{where}.seeds")
            _check_trained(seeds, trained, f"{where}.seeds")
        optimizers = item.get("optimizers")
        if optimizers is not None:
            if not isinstance(optimizers, list) or not all(isinstance(o, str) for o in optimizers):
                raise ConfigError(f"{where}.optimizers: expected a list of optimizer labels")
            unknown = [o for o in optimizers if o not in labels]
            if unknown:
                raise ConfigError(f"{where}.optimizers: no optimizer labelled {unknown[0]!r} "
                                  f"(labels: {', '.join(labels)})")
            optimizers = tuple(optimizers)
        specs.append(DiagnosticSpec(entry.name, options, seeds, optimizers))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError("diagnostics: each diagnostic may appear once (its tags are diag/<name>/...)")
    return tuple(specs)


def _check_trained(seeds: tuple[int, ...], trained: tuple[int, ...], where: str) -> None:
    """A diagnostic's seed that no run trains would silently never be measured."""
    known = set(trained)
    untrained = [seed for seed in seeds if seed not in known]
    if untrained:
        listed = ", ".join(map(str, trained[:10])) + (f", ... ({len(trained)} seeds)" if len(trained) > 10 else "")
        raise ConfigError(f"{where}: seed {untrained[0]} is not a training seed, so it would never be measured "
                          f"(train.seeds: {listed})")


def _check_buildable(config: ExperimentConfig, registry: Registry) -> None:
    """Build the task, a model and every optimizer once, so that errors that only a plugin can
    detect (a spectrum of the wrong length, bad torch.optim keywords) are reported now."""
    task = build_task(config.task, registry)
    try:
        model = LinearTransformer(config.model, task.d, task.n, torch.Generator().manual_seed(0))
    except (RuntimeError, MemoryError) as exc:  # e.g. absurd sizes: out of memory
        raise ConfigError(f"model: cannot be built for d={task.d}: {exc}") from None
    _check_prompts(config, task)
    with optimizers_without_dynamo():  # its import: seconds of every command's start
        for i, spec in enumerate(config.optimizers):
            build_optimizer(spec, registry, model.parameters(), where=f"optimizers[{i}]")
    for i, spec in enumerate(config.diagnostics):
        build_diagnostic(spec, registry, where=f"diagnostics[{i}]")


def _check_prompts(config: ExperimentConfig, task: Task) -> None:
    """Sample two prompts from a throwaway generator, as a run samples them, so that a task returning
    prompts of the wrong shape or type fails now, before any run starts. Runs check every batch
    again: a task may go wrong later."""
    name = config.task.name
    try:
        checked_task(task, name, getattr(torch, config.train.dtype)).sample(2, torch.Generator().manual_seed(0))
    except TestbedError:
        raise
    except Exception as exc:  # the plugin's own bug, reported as one line like every bad input
        raise ConfigError(f"task {name!r} failed to sample 2 prompts: {type(exc).__name__}: {exc}") from None


