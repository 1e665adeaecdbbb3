"""Config parsing and validation: defaults, typing, --set overrides, and one clear ConfigError with a
dotted path for every kind of bad input (before anything runs)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from testbed import ConfigError
from testbed.engine.specs import EvalConfig, ExperimentConfig, TrainConfig
from testbed.experiment.config import apply_overrides, load_yaml, parse_config
from testbed.model.config import FeatureMapConfig, ModelConfig

MINIMAL = {"task": {"name": "gaussian", "d": 3, "n": 5}, "optimizers": [{"name": "sgd", "lr": 0.1}]}


def minimal(**changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(MINIMAL)
    raw.update(changes)
    return raw


def error(raw: Any, registry) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, registry)
    return str(info.value)


# ---------------------------------------------------------------- valid configs
def test_defaults_are_filled(registry):
    config = parse_config(minimal(), registry)
    assert isinstance(config, ExperimentConfig)
    assert config.name == "experiment"
    assert config.model == ModelConfig()
    assert config.train == TrainConfig()
    assert config.eval == EvalConfig()
    assert config.train.seeds == (0,)
    assert config.diagnostics == () and config.workers is None
    assert config.task.options == {"label_noise": 0.0}
    (sgd,) = config.optimizers
    assert (sgd.name, sgd.label, sgd.lr) == ("sgd", "sgd", 0.1)
    assert sgd.options == {"momentum": 0.0, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0}


def test_default_name_is_used_only_without_a_name(registry):
    assert parse_config(minimal(), registry, default_name="from_file").name == "from_file"
    assert parse_config(minimal(name="given"), registry, default_name="from_file").name == "given"


def test_values_are_typed(registry):
    # PyYAML reads 1e-3 (no dot) as a string; the config never hands the raw string on.
    raw = yaml.safe_load("""
        task: {name: gamma, d: 5, n: 20, options: {shape: 1e-1, scale: 2}}
        train: {steps: "1000", clip_grad_norm: 5, seeds: 2}
        optimizers:
          - {name: adam, lr: 1e-3, options: {betas: [0.9, 1e-1], eps: 1e-6}}
    """)
    assert raw["optimizers"][0]["lr"] == "1e-3"  # the premise
    config = parse_config(raw, registry)
    adam = config.optimizers[0]
    assert adam.lr == 0.001 and isinstance(adam.lr, float)
    assert adam.options["betas"] == [0.9, 0.1] and adam.options["eps"] == 1e-6
    assert config.task.options["shape"] == 0.1 and config.task.options["scale"] == 2.0
    assert isinstance(config.task.options["scale"], float)
    assert config.train.steps == 1000 and isinstance(config.train.steps, int)
    assert config.train.clip_grad_norm == 5.0 and isinstance(config.train.clip_grad_norm, float)
    assert config.train.seeds == (0, 1)


@pytest.mark.parametrize(("seeds", "expected"), [(3, (0, 1, 2)), (1, (0,)), ([4, 2, 7], (4, 2, 7)), (None, (0,))])
def test_seeds_as_count_or_list(registry, seeds, expected):
    assert parse_config(minimal(train={"seeds": seeds}), registry).train.seeds == expected


def test_clip_null_and_feature_map(registry):
    config = parse_config(minimal(train={"clip_grad_norm": None}, model={"feature_map": {"hidden": [8, 4]}}),
                          registry)
    assert config.train.clip_grad_norm is None
    assert config.model.feature_map == FeatureMapConfig(hidden=(8, 4), out_dim=None)


def test_labels_make_repeated_optimizers_distinct(registry):
    raw = minimal(optimizers=[{"name": "adam", "lr": 0.01}, {"name": "adam", "label": "adam-slow", "lr": 0.001}])
    labels = [o.label for o in parse_config(raw, registry).optimizers]
    assert labels == ["adam", "adam-slow"]


def test_torch_optimizer_plugin(registry):
    raw = minimal(optimizers=[{"name": "torch", "lr": 0.1,
                               "options": {"class": "RMSprop", "kwargs": {"alpha": 0.9}}}])
    (spec,) = parse_config(raw, registry).optimizers
    assert spec.name == "torch" and spec.options == {"class": "RMSprop", "kwargs": {"alpha": 0.9}}


@pytest.mark.parametrize("raw", [
    MINIMAL,
    {
        "name": "full",
        "task": {"name": "anisotropic", "d": 3, "n": 4, "options": {"spectrum": [3, 2, 1], "rotation": False}},
        "model": {"layers": 2, "parameterization": "full", "feature_map": {"hidden": [5], "out_dim": 2}},
        "train": {"steps": 9, "batch_size": 8, "clip_grad_norm": None, "seeds": [3, 1], "log_every": 2},
        "eval": {"every": 3, "batch_size": 16, "seed": 7},
        "workers": 2,
        "optimizers": [
            {"name": "adam", "label": "a", "lr": "1e-3", "options": {"betas": [0.9, 0.9]}},
            {"name": "torch", "label": "rms", "lr": 0.1, "options": {"class": "RMSprop", "kwargs": {"alpha": 0.9}}},
            {"name": "sgd", "lr": 1, "options": {"momentum": 0.9, "nesterov": True}},
        ],
    },
])
def test_resolved_config_round_trips(registry, raw):
    config = parse_config(raw, registry)
    plain = config.to_dict()
    assert yaml.safe_load(yaml.safe_dump(plain)) == plain  # YAML-able, as saved with every run
    assert parse_config(plain, registry) == config
    assert parse_config(yaml.safe_load(yaml.safe_dump(plain)), registry) == config


# ---------------------------------------------------------------- --set overrides
def test_overrides(registry):
    raw = minimal(optimizers=[{"name": "sgd", "lr": 0.1}, {"name": "adam", "label": "fast", "lr": 0.1}])
    out = apply_overrides(raw, [
        "train.steps=7",
        "optimizers.adam.lr=0.01",  # by name
        "optimizers.0.lr=1e-3",  # by index (a YAML string, typed later)
        "optimizers.fast.options.betas=[0.9, 0.9]",  # by label, creating the missing mapping
        "train.clip_grad_norm=null",
        "model.layers=2",
        "name=over-ridden",
    ])
    assert raw == minimal(optimizers=[{"name": "sgd", "lr": 0.1}, {"name": "adam", "label": "fast", "lr": 0.1}])
    config = parse_config(out, registry)
    assert config.name == "over-ridden"
    assert config.train.steps == 7 and config.train.clip_grad_norm is None and config.model.layers == 2
    assert [o.lr for o in config.optimizers] == [0.001, 0.01]
    assert config.optimizers[1].options["betas"] == [0.9, 0.9]


def test_override_value_equal_sign_and_negative_index():
    out = apply_overrides({"optimizers": [{"name": "a"}, {"name": "b"}]}, ["optimizers.-1.label=x=y"])
    assert out["optimizers"][1]["label"] == "x=y"


@pytest.mark.parametrize(("override", "fragment"), [
    ("train.steps", "expected key.path=value"),
    ("=5", "empty key"),
    ("train.steps=[1", "not valid YAML"),
    ("optimizers.nope.lr=1", "no list item labelled or named 'nope'"),
    ("optimizers.5.lr=1", "index out of range"),
    ("task.d.x=1", "task.d is not a mapping or list"),
])
def test_bad_overrides(override, fragment):
    with pytest.raises(ConfigError, match="--set") as info:
        apply_overrides(copy.deepcopy(MINIMAL), [override])
    assert fragment in str(info.value)


def test_override_creating_an_unknown_key_is_caught_by_parse(registry):
    with pytest.raises(ConfigError, match=r"train\.stepz"):
        parse_config(apply_overrides(MINIMAL, ["train.stepz=3"]), registry)


# ---------------------------------------------------------------- errors, with dotted paths
@pytest.mark.parametrize(("changes", "path"), [
    ({"bogus": 1}, "bogus"),
    ({"train": {"stepz": 5}}, "train.stepz"),
    ({"eval": {"evry": 5}}, "eval.evry"),
    ({"model": {"layerz": 2}}, "model.layerz"),
    ({"model": {"feature_map": {"hiden": [3]}}}, "model.feature_map.hiden"),
    ({"task": {"name": "gaussian", "d": 3, "n": 5, "dim": 3}}, "task.dim"),
    ({"task": {"name": "gaussian", "d": 3, "n": 5, "options": {"noise": 1}}}, "task.options.noise"),
    ({"optimizers": [{"name": "sgd", "lr": 0.1}, {"name": "adam", "lr": 0.1, "options": {"betaz": [0.9, 0.9]}}]},
     "optimizers[1].options.betaz"),
    ({"optimizers": [{"name": "sgd", "lr": 0.1, "momentum": 0.9}]}, "optimizers[0].momentum"),
])
def test_unknown_keys_name_their_dotted_path(registry, changes, path):
    message = error(minimal(**changes), registry)
    assert message.startswith(f"{path}: unknown")
    assert "known" in message  # and says what is known


@pytest.mark.parametrize(("changes", "path", "fragment"), [
    ({"train": {"steps": "many"}}, "train.steps", "expected int"),
    ({"train": {"steps": 2.5}}, "train.steps", "expected int"),
    ({"train": {"steps": 0}}, "train.steps", ">= 1"),
    ({"train": {"steps": True}}, "train.steps", "boolean"),
    ({"train": {"clip_grad_norm": 0}}, "train.clip_grad_norm", "> 0"),
    ({"train": {"seeds": 0}}, "train.seeds", ">= 1"),
    ({"train": {"seeds": []}}, "train.seeds", "non-empty"),
    ({"train": {"seeds": "two"}}, "train.seeds", "non-empty"),
    ({"train": {"seeds": [1, 1]}}, "train.seeds", "distinct"),
    ({"train": {"seeds": [0, -1]}}, "train.seeds", ">= 0"),  # reported as train.seeds.1
    ({"train": 5}, "train", "mapping"),
    ({"train": {"dtype": "float16"}}, "train.dtype", "one of float32, float64"),
    ({"model": {"layers": "three"}}, "model.layers", "expected int"),
    ({"model": {"layers": 0}}, "model.layers", ">= 1"),
    ({"model": {"attention": "quadratic"}}, "model.attention", "one of linear, softmax"),
    ({"model": {"init_std": -1}}, "model.init_std", ">= 0"),
    ({"model": {"feature_map": [30]}}, "model.feature_map", "mapping"),
    ({"model": {"feature_map": {"hidden": [0]}}}, "model.feature_map.hidden[0]", ">= 1"),
    ({"eval": {"every": "often"}}, "eval.every", "expected int"),
    ({"optimizers": [{"name": "adam", "lr": 0.1, "options": {"betas": [0.9]}}]},
     "optimizers[0].options.betas", "2 values"),
    ({"optimizers": [{"name": "adam", "lr": 0.1, "options": {"betas": 0.9}}]},
     "optimizers[0].options.betas", "expected a list"),
    ({"optimizers": [{"name": "adam", "lr": 0.1, "options": {"betas": [0.9, 1.0]}}]},
     "optimizers[0].options.betas", "[0, 1)"),
    ({"optimizers": [{"name": "adam", "lr": 0.1, "options": {"betas": [0.9, "x"]}}]},
     "optimizers[0].options.betas[1]", "expected float"),
    ({"optimizers": [{"name": "sgd", "lr": 0.1, "options": {"nesterov": "yes"}}]},
     "optimizers[0].options.nesterov", "true or false"),
    ({"optimizers": [{"name": "sgd", "lr": 0.1, "options": {"momentum": -0.5}}]},
     "optimizers[0].options.momentum", ">= 0"),
    ({"optimizers": [{"name": "sgd", "lr": 0.1, "options": {"momentum": None}}]},
     "optimizers[0].options.momentum", "required"),
    ({"optimizers": [{"name": "sgd", "lr": 0.1, "options": [1]}]}, "optimizers[0].options", "mapping"),
    ({"task": {"name": "gaussian", "d": "five", "n": 5}}, "task.d", "expected int"),
    ({"task": {"name": "gaussian", "d": 0, "n": 5}}, "task.d", ">= 1"),
    ({"task": {"name": "gamma", "d": 3, "n": 5, "options": {"shape": 0}}}, "task.options.shape", "> 0"),
    ({"task": {"name": "gamma", "d": 3, "n": 5, "options": {"label_noise": -1}}}, "task.options.label_noise", ">= 0"),
    ({"workers": 0}, "workers", ">= 1"),
    ({"workers": "all"}, "workers", "expected int"),
    ({"name": "has space"}, "name", "letters"),
])
def test_bad_values_name_their_dotted_path(registry, changes, path, fragment):
    message = error(minimal(**changes), registry)
    assert path in message.split(": ")[0]  # the message starts with where the problem is
    assert fragment in message


@pytest.mark.parametrize("lr", [-0.1, -1, "-1e-3"])
def test_negative_learning_rate(registry, lr):
    message = error(minimal(optimizers=[{"name": "sgd", "lr": 0.1}, {"name": "adam", "lr": lr}]), registry)
    assert message.startswith("optimizers[1].lr:") and ">= 0" in message


@pytest.mark.parametrize(("lr", "fragment"), [("fast", "expected float"), (float("nan"), "finite"),
                                              ("inf", "finite"), (True, "boolean"), (None, "required")])
def test_bad_learning_rate(registry, lr, fragment):
    message = error(minimal(optimizers=[{"name": "sgd", "lr": lr}]), registry)
    assert message.startswith("optimizers[0].lr:") and fragment in message


def test_missing_pieces(registry):
    assert error({"optimizers": MINIMAL["optimizers"]}, registry).startswith("task:")
    assert error(minimal(task={"name": "gaussian", "d": 3}), registry).startswith("task.n:")
    assert error(minimal(optimizers=[]), registry).startswith("optimizers:")
    assert error(minimal(optimizers={"name": "sgd", "lr": 0.1}), registry).startswith("optimizers:")
    assert error(minimal(optimizers=[{"name": "sgd"}]), registry).startswith("optimizers[0].lr:")
    assert error(minimal(optimizers=[{"lr": 0.1}]), registry).startswith("optimizers[0].name:")
    assert error(minimal(optimizers=["sgd"]), registry).startswith("optimizers[0]:")
    assert error(minimal(task="gaussian"), registry).startswith("task:")
    assert error(["not", "a", "mapping"], registry).startswith("config:")


def test_unknown_optimizer_lists_the_available_ones(registry):
    message = error(minimal(optimizers=[{"name": "sgd", "lr": 0.1}, {"name": "lion9", "lr": 0.1}]), registry)
    assert message.startswith("optimizers[1].name:") and "'lion9'" in message
    for name in ("adam", "adamw", "sgd", "torch"):
        assert name in message
    assert "(optimizers)" in message  # and the plugin providing each


def test_unknown_task_lists_the_available_ones(registry):
    message = error(minimal(task={"name": "cauchy", "d": 3, "n": 5}), registry)
    assert message.startswith("task.name:") and "'cauchy'" in message
    for name in ("anisotropic", "gamma", "gaussian", "spherical", "student_t"):
        assert name in message


def test_unknown_diagnostic(registry):
    message = error(minimal(diagnostics=["nope"]), registry)
    assert message.startswith("diagnostics[0].name:") and "'nope'" in message


def test_duplicate_labels(registry):
    message = error(minimal(optimizers=[{"name": "sgd", "lr": 0.1}, {"name": "sgd", "lr": 0.2}]), registry)
    assert message.startswith("optimizers:") and "'sgd'" in message and "twice" in message
    raw = minimal(optimizers=[{"name": "sgd", "label": "x", "lr": 0.1}, {"name": "adam", "label": "x", "lr": 0.1}])
    assert "'x'" in error(raw, registry)


def test_bad_label(registry):
    message = error(minimal(optimizers=[{"name": "sgd", "label": "a/b", "lr": 0.1}]), registry)
    assert message.startswith("optimizers[0].label:")


def test_torch_optimizer_unknown_class_lists_available(registry):
    message = error(minimal(optimizers=[{"name": "sgd", "lr": 0.1},
                                        {"name": "torch", "lr": 0.1, "options": {"class": "Nope"}}]), registry)
    assert message.startswith("optimizers[1]:") and "'Nope'" in message
    for name in ("Adam", "RMSprop", "SGD"):
        assert name in message


def test_torch_optimizer_unknown_keyword(registry):
    message = error(minimal(optimizers=[{"name": "torch", "lr": 0.1,
                                         "options": {"class": "RMSprop", "kwargs": {"alpah": 0.9}}}]), registry)
    assert message.startswith("optimizers[0]:") and "'alpah'" in message and "alpha" in message


def test_torch_optimizer_needs_a_class(registry):
    message = error(minimal(optimizers=[{"name": "torch", "lr": 0.1}]), registry)
    assert message.startswith("optimizers[0].options.class:") and "required" in message


def test_torch_optimizer_rejected_keyword_value(registry):
    raw = minimal(optimizers=[{"name": "torch", "lr": 0.1, "options": {"class": "SGD", "kwargs": {"nesterov": True}}}])
    assert error(raw, registry).startswith("optimizers[0]:")


def test_task_rejecting_its_options_at_build(registry):
    raw = minimal(task={"name": "anisotropic", "d": 3, "n": 5, "options": {"spectrum": [1.0, 2.0]}})
    message = error(raw, registry)
    assert message.startswith("task:") and "spectrum" in message and "anisotropic" in message


def test_student_t_standardize_needs_df_above_two(registry):
    raw = minimal(task={"name": "student_t", "d": 3, "n": 5, "options": {"df": 2, "standardize": True}})
    assert "standardize" in error(raw, registry)


# ---------------------------------------------------------------- YAML files
def test_load_yaml(write_yaml):
    assert load_yaml(write_yaml("task: {name: gaussian}\n")) == {"task": {"name": "gaussian"}}


@pytest.mark.parametrize(("text", "fragment"), [
    ("task: [unclosed\n", "malformed YAML at line"),
    ("a: 1\n  b: 2\n", "malformed YAML"),
    ("- just\n- a list\n", "expected a mapping at the top level, got list"),
    ("", "expected a mapping at the top level, got NoneType"),
    ("42\n", "got int"),
])
def test_load_yaml_errors(write_yaml, text, fragment):
    path = write_yaml(text)
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert fragment in str(info.value) and str(path) in str(info.value)


def test_load_yaml_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_yaml(tmp_path / "missing.yaml")


def test_examples_validate(registry):
    from pathlib import Path

    from testbed.experiment.sweep import expand

    examples = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        raw = load_yaml(path)
        names = {o["name"] for o in raw["optimizers"]}
        if not names <= set(registry.entries["optimizer"]):
            continue  # needs a plugin that is not installed here (lion)
        sweep = expand(raw, registry, default_name=path.stem)
        assert sweep.name == path.stem and all(p.config.name == path.stem for p in sweep.points)


@pytest.mark.parametrize("bad", [".", ".."])
def test_names_and_labels_are_never_relative_directories(registry, bad):
    # The experiment name and the labels are directory names under LOGDIR: ".." would write outside it.
    assert error(minimal(name=bad), registry).startswith("name:")
    assert error(minimal(optimizers=[{"name": "sgd", "label": bad, "lr": 0.1}]), registry).startswith(
        "optimizers[0].label:")
    assert parse_config(minimal(name="v1.2", optimizers=[{"name": "sgd", "label": ".x", "lr": 0.1}]), registry)
