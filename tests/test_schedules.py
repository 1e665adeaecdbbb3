"""The host owns a diagnostic's schedule (issue 12): a diagnostic declares its default schedule when it
registers, the host adds every/steps/start/stop to the options a config may set, validates them,
gives the factory only the diagnostic's own options and sets the schedule itself. Diagnostics written
the older way (schedule options declared by the plugin, ``schedule_from`` in ``__init__``) still run."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from click.testing import CliRunner

from testbed import (ConfigError, Diagnostic, Option, PluginError, Scalar, Schedule, hookimpl, schedule_from,
                     schedule_options)
from testbed.cli.commands import main
from testbed.engine.build import build_diagnostic
from testbed.experiment.config import parse_config
from testbed.experiment.runner import run_experiment
from testbed.plugins import load_plugins

from shared_fixtures import TINY


class Steps(Diagnostic):
    """Logs the step it is measured at, scaled: which steps its schedule made due."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def measure(self, probe, step):
        return [Scalar("step", step * self.scale)]


class OldStyle(Diagnostic):
    """A diagnostic written before the host owned schedules."""

    def __init__(self, **schedule: Any) -> None:
        self.schedule = schedule_from(schedule)
        self.received = schedule

    def measure(self, probe, step):
        return [Scalar("step", step)]


class OwnSchedule(Diagnostic):
    """Sets a schedule of its own, which the config does not decide."""

    def __init__(self) -> None:
        self.schedule = Schedule(every=3)

    def measure(self, probe, step):
        return []


class ToyDiagnostics:
    """Registers the toy diagnostics and records the keyword arguments each factory received."""

    def __init__(self, **extra: dict[str, Any]) -> None:
        self.received: dict[str, dict[str, Any]] = {}
        self.extra = extra  # name -> register() keywords of a diagnostic under test

    def _factory(self, name: str, cls: type):
        def make(**options: Any) -> Diagnostic:
            self.received[name] = options
            return cls(**options)
        return make

    @hookimpl
    def register_diagnostics(self, register):
        register("steps", self._factory("steps", Steps), options={"scale": Option(1.0, "multiplies the step")},
                 schedule=Schedule(every=5), doc="the step, at the steps its schedule makes due")
        register("old_style", self._factory("old_style", OldStyle), options=schedule_options(every=4, steps=[1]),
                 doc="declares its schedule options itself")
        register("own_schedule", self._factory("own_schedule", OwnSchedule), doc="sets self.schedule")
        for name, keywords in self.extra.items():
            register(name, lambda **o: Steps(**o), **keywords)


def tiny(*diagnostics: Any) -> dict[str, Any]:
    """TINY with one optimizer and one seed, measuring ``diagnostics``."""
    raw = copy.deepcopy(TINY)
    raw["optimizers"] = raw["optimizers"][:1]
    raw["train"]["seeds"] = 1
    raw["diagnostics"] = list(diagnostics)
    return raw


def measured_steps(raw: dict[str, Any], tmp_path, toys: ToyDiagnostics | None = None) -> dict[str, list[int]]:
    """Run ``raw`` with the toy diagnostics; the steps each diagnostic's "step" scalar was logged at."""
    plugins = load_plugins(extra={"toys": toys or ToyDiagnostics()})
    (result,) = run_experiment(parse_config(raw, plugins.registry), plugins, tmp_path, workers=1).results
    assert result.status == "completed", result.error
    return {key.split("/")[0]: [step for step, _ in points] for key, points in result.diagnostics.items()}


# ------------------------------------------------------------------ the schedule a run uses
def test_the_declared_schedule_is_the_default_and_the_factory_gets_only_its_own_options(tmp_path):
    toys = ToyDiagnostics()
    steps = measured_steps(tiny({"name": "steps", "options": {"scale": 2.0}}), tmp_path, toys)
    assert steps == {"steps": [0, 5, 10, 15, 20]}
    assert toys.received["steps"] == {"scale": 2.0}  # no every/steps/start/stop


def test_a_config_overrides_the_declared_schedule(tmp_path):
    raw = tiny({"name": "steps", "options": {"every": 7, "steps": [3], "start": 1, "stop": 16}})
    assert measured_steps(raw, tmp_path) == {"steps": [1, 3, 8, 15]}


def test_the_resolved_options_hold_the_schedule_with_the_declared_defaults():
    plugins = load_plugins(extra={"toys": ToyDiagnostics()})
    config = parse_config(tiny({"name": "steps", "options": {"stop": 12}}), plugins.registry)
    assert dict(config.diagnostics[0].options) == {"scale": 1.0, "every": 5, "steps": [], "start": 0, "stop": 12}


def test_a_standard_diagnostic_resolves_its_options_as_before():
    # the run id hashes these options: the same keys and values as when the plugin declared them
    plugins = load_plugins()
    config = parse_config(tiny("gradient_noise", {"name": "generalized_smoothness", "options": {"stop": 11}}),
                          plugins.registry)
    noise, smoothness = (dict(spec.options) for spec in config.diagnostics)
    assert list(noise.items()) == [("full_batch", None), ("batch_size", None), ("samples", 10_000), ("bins", 100),
                                   ("tail_fraction", 0.1), ("every", None), ("steps", [0]), ("start", 0),
                                   ("stop", None)]
    assert smoothness == {"every": 1, "steps": [], "start": 0, "stop": 11}
    built = build_diagnostic(config.diagnostics[1], plugins.registry)
    assert built.schedule == Schedule(every=1, stop=11)


@pytest.mark.parametrize("options, message", [
    ({"every": 0}, "diagnostics[0].options.every: must be >= 1, got 0"),
    ({"steps": [2, -1]}, "diagnostics[0].options.steps[1]: must be >= 0, got -1"),
    ({"start": "soon"}, "diagnostics[0].options.start: expected int, got 'soon'"),
    ({"stop": 0}, "diagnostics[0].options.stop: must be >= 1, got 0"),
    ({"evry": 3}, "diagnostics[0].options.evry: unknown option (known options: every, scale, start, steps, stop)"),
])
def test_a_bad_schedule_option_is_a_config_error_naming_it(options, message):
    plugins = load_plugins(extra={"toys": ToyDiagnostics()})
    with pytest.raises(ConfigError) as error:
        parse_config(tiny({"name": "steps", "options": options}), plugins.registry)
    assert str(error.value) == message


# ------------------------------------------------------------------ declaring a schedule
@pytest.mark.parametrize("keywords, fragment", [
    ({"schedule": "every 5"}, "schedule must be a testbed.Schedule, not str"),
    ({"schedule": Schedule(every=0)}, "schedule.every: must be >= 1, got 0"),
    ({"schedule": Schedule(steps=(-2,))}, "schedule.steps[0]: must be >= 0, got -2"),
    ({"options": {"every": Option(3, "how often it fires")}}, "option 'every' is a schedule option"),
    ({"options": schedule_options(every=2), "schedule": Schedule(every=2)}, "option 'every' is a schedule option"),
])
def test_a_bad_schedule_declaration_is_a_plugin_error(keywords, fragment):
    with pytest.raises(PluginError) as error:
        load_plugins(extra={"toys": ToyDiagnostics(bad=keywords)}, entry_points=False)
    assert "registering diagnostic 'bad'" in str(error.value) and fragment in str(error.value), str(error.value)


def test_testbed_list_shows_the_schedule_options_with_the_declared_defaults():
    result = CliRunner().invoke(main, ["list", "diagnostics"])
    assert result.exit_code == 0, result.output
    block = re.split(r"\n(?=\S)", result.output.split("robust_condition_number  [plugin", 1)[1])[0]
    assert "    spectrum_histogram: bool, default False." in block
    assert "    every: int, default 250, >= 1, or null." in block and "    stop: int, default None, >= 1." in block


# ------------------------------------------------------------------ diagnostics of the older kind
def test_a_diagnostic_declaring_its_schedule_options_itself_still_runs(tmp_path):
    toys = ToyDiagnostics()
    assert measured_steps(tiny("old_style"), tmp_path, toys) == {"old_style": [0, 1, 4, 8, 12, 16, 20]}
    assert toys.received["old_style"] == {"every": 4, "steps": [1], "start": 0, "stop": None}
    overridden = measured_steps(tiny({"name": "old_style", "options": {"every": 10}}), tmp_path / "again", toys)
    assert overridden == {"old_style": [0, 1, 10, 20]}


def test_a_diagnostic_setting_a_schedule_of_its_own_is_a_plugin_error():
    plugins = load_plugins(extra={"toys": ToyDiagnostics()})
    with pytest.raises(PluginError) as error:
        parse_config(tiny("own_schedule"), plugins.registry)
    assert str(error.value).startswith("diagnostics[0]: diagnostic 'own_schedule' (plugin 'toys') sets its own "
                                       "schedule"), str(error.value)


def test_schedule_from_takes_what_the_options_leave_out_from_the_default():
    assert schedule_from({"every": 1}) == Schedule(every=1)  # issue 14: this raised KeyError
    assert schedule_from({"stop": 9, "other": 1}, Schedule(every=3, steps=(0,))) == Schedule(3, (0,), 0, 9)
    assert Schedule(every=3, steps=(1,)).options()["steps"].default == [1]
