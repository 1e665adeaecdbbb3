"""The host's side of diagnostics: schedules, the config that selects them (which runs, which
options), and the runner's safety: a failing, NaN or malformed diagnostic never stops a run or
changes its trajectory, and what it reports lands in results.json and TensorBoard."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from testbed import ConfigError, Diagnostic, Scalar, Schedule, Text, hookimpl, schedule_from, schedule_options
from testbed.engine.specs import DiagnosticSpec
from testbed.experiment.config import parse_config
from testbed.plugins import load_plugins
from helpers import load_events, raw_config, read_results, run


# ------------------------------------------------------------------ schedules
@pytest.mark.parametrize("schedule, due, not_due", [
    (Schedule(every=10), [0, 10, 20, 1000], [1, 5, 9, 11, 25]),
    (Schedule(every=5, start=3, stop=20), [3, 8, 13, 18], [0, 2, 5, 10, 20, 23]),
    (Schedule(steps=(0, 7)), [0, 7], [1, 6, 8, 14]),
    (Schedule(every=10, steps=(25,), stop=30), [0, 10, 20, 25], [30, 40, 15]),
    (Schedule(), [], [0, 1, 10]),
    (Schedule(every=1, stop=3), [0, 1, 2], [3, 4]),
])
def test_schedule_due(schedule, due, not_due):
    assert all(schedule.due(s) for s in due), [s for s in due if not schedule.due(s)]
    assert not any(schedule.due(s) for s in not_due), [s for s in not_due if schedule.due(s)]


@pytest.mark.parametrize("schedule, total, last", [
    (Schedule(every=10), 25, 20),
    (Schedule(every=10), 20, 20),
    (Schedule(every=10, stop=20), 100, 10),  # stop is exclusive
    (Schedule(every=5, start=3, stop=20), 100, 18),
    (Schedule(steps=(0, 50)), 30, 0),
    (Schedule(every=10, start=30), 20, None),
    (Schedule(every=10, steps=(25,)), 25, 25),
    (Schedule(), 10, None),
])
def test_schedule_last(schedule, total, last):
    assert schedule.last(total) == last


def test_schedule_last_is_the_largest_due_step():
    for every in (None, 1, 3, 7):
        for start in (0, 2, 9):
            for stop in (None, 1, 5, 12, 40):
                for steps in ((), (0,), (4, 33)):
                    schedule = Schedule(every, steps, start, stop)
                    for total in (0, 1, 10, 17, 30):
                        due = [s for s in range(total + 1) if schedule.due(s)]
                        assert schedule.last(total) == (max(due) if due else None), (schedule, total)


def test_schedule_from_options():
    assert schedule_from({"every": 3, "steps": [1, 2], "start": 4, "stop": 9}) == Schedule(3, (1, 2), 4, 9)
    defaults = {k: o.default for k, o in schedule_options(every=250).items()}
    assert schedule_from(defaults) == Schedule(every=250)


# ------------------------------------------------------------------ config: which runs, and errors
def test_diagnostics_restricted_to_seeds_and_optimizers(tmp_path):
    diagnostics = [
        {"name": "block_norms", "options": {"every": 2}, "seeds": [1]},
        {"name": "robust_condition_number", "options": {"every": 2}, "optimizers": ["adam"]},
        {"name": "directional_smoothness", "options": {"every": 2}, "seeds": [0], "optimizers": ["sgd"]},
    ]
    outcome = run(raw_config(diagnostics=diagnostics, steps=4, seeds=(0, 1)), tmp_path)
    measured = {r.key: {k.split("/")[0] for k in r.diagnostics} for r in outcome.results}
    assert measured == {
        "sgd/seed-0": {"directional_smoothness"},
        "adam/seed-0": {"robust_condition_number"},
        "sgd/seed-1": {"block_norms"},
        "adam/seed-1": {"block_norms", "robust_condition_number"},
    }
    for result in outcome.results:
        tags = {t for t in load_events(result.run_dir).Tags()["scalars"] if t.startswith("diag/")}
        assert {t.split("/")[1] for t in tags} == measured[result.key]


def test_diagnostic_specs_parse(registry):
    config = parse_config(raw_config(seeds=(0, 1), diagnostics=[
        "block_norms", {"name": "sharpness", "options": {"iterations": 5}, "seeds": 2, "optimizers": ["adam"]},
    ]), registry)
    block_norms, sharpness = config.diagnostics
    assert block_norms == DiagnosticSpec("block_norms", {"every": 10, "steps": [], "start": 0, "stop": None})
    assert sharpness.options["iterations"] == 5 and sharpness.options["every"] == 250
    assert sharpness.seeds == (0, 1) and sharpness.optimizers == ("adam",)
    assert sharpness.applies_to("adam", 1) and not sharpness.applies_to("sgd", 1)
    assert not sharpness.applies_to("adam", 2)
    assert block_norms.applies_to("anything", 123)
    assert config.to_dict()["diagnostics"][1]["optimizers"] == ["adam"]


@pytest.mark.parametrize("diagnostics, start", [
    ([{"name": "block_norms", "optimizers": ["lion"]}], "diagnostics[0].optimizers: no optimizer labelled 'lion'"),
    ([{"name": "block_norms", "optimizers": "adam"}], "diagnostics[0].optimizers:"),
    (["block_norms", {"name": "block_norms", "options": {"every": 3}}], "diagnostics: each diagnostic may appear once"),
    ([{"name": "sharpness", "options": {"x": 1}}], "diagnostics[0].options.x: unknown option"),
    ([{"name": "sharpness"}, {"name": "block_norms", "options": {"every": 0}}], "diagnostics[1].options.every:"),
    ([{"name": "gradient_noise", "options": {"tail_fraction": 0.9}}], "diagnostics[0].options.tail_fraction:"),
    ([{"name": "sharpness", "seeds": [1, 1]}], "diagnostics[0].seeds:"),
    ([{"name": "sharpness", "when": 3}], "diagnostics[0].when: unknown key"),
    ([{"options": {}}], "diagnostics[0].name:"),
    ([{"name": "nope"}], "diagnostics[0].name:"),
    ({"name": "sharpness"}, "diagnostics: expected a list"),
])
def test_diagnostic_config_errors(registry, diagnostics, start):
    with pytest.raises(ConfigError) as info:
        parse_config(raw_config(diagnostics=diagnostics), registry)
    assert str(info.value).startswith(start), str(info.value)


# ------------------------------------------------------------------ safety: a diagnostic's failure
class Boom(Diagnostic):
    """Measures fine at steps 0..2, raises at step 3."""

    def __init__(self, **schedule):
        self.schedule = schedule_from(schedule)
        self.calls: list[int] = []
        self.finished = False

    def measure(self, probe, step):
        self.calls.append(step)
        if step == 3:
            raise RuntimeError("kaboom")
        return [Scalar("ok", 1.0)]

    def finish(self, probe, step):
        self.finished = True
        return [Scalar("finished", 1.0)]


class NanValue(Diagnostic):
    def __init__(self, **schedule):
        self.schedule = schedule_from(schedule)

    def measure(self, probe, step):
        return [Scalar("value", math.nan if step == 4 else float(step)), Text("note", f"step {step}")]


class NotARecord(Diagnostic):
    """Returns something that has a tag but is not one of the record types."""

    def __init__(self, **schedule):
        self.schedule = schedule_from(schedule)

    def measure(self, probe, step):
        return [SimpleNamespace(tag="value", value=1.0)]


class Watch(Diagnostic):
    """The probed point's parameter norm; with needs_update also the next point's and the update's."""

    def __init__(self, needs_update: bool, **schedule):
        self.schedule = schedule_from(schedule)
        self.needs_update = needs_update
        self.finish_steps: list[int] = []

    def measure(self, probe, step):
        records = [Scalar("param_norm", float(torch.linalg.vector_norm(probe.params)))]
        if self.needs_update:
            assert probe.train_gradient is not None and probe.train_gradient.shape == probe.params.shape
            records += [Scalar("next_norm", float(torch.linalg.vector_norm(probe.next_params))),
                        Scalar("update_norm", float(torch.linalg.vector_norm(probe.update)))]
        else:
            assert probe.next_params is None and probe.train_gradient is None
        return records

    def finish(self, probe, step):
        self.finish_steps.append(step)
        return [Scalar("finished_at", float(step))]


class Misbehaving:
    """An in-process plugin registering diagnostics that fail, return NaN, or need the update."""

    def __init__(self) -> None:
        self.instances: dict[str, Diagnostic] = {}

    def _keep(self, name, diagnostic):
        self.instances[name] = diagnostic
        return diagnostic

    @hookimpl
    def register_diagnostics(self, register):
        register("boom", lambda **o: self._keep("boom", Boom(**o)), options=schedule_options(every=1))
        register("nan_value", lambda **o: NanValue(**o), options=schedule_options(every=2))
        register("not_a_record", lambda **o: NotARecord(**o), options=schedule_options(steps=[5]))
        register("watch", lambda **o: self._keep("watch", Watch(False, **o)), options=schedule_options(every=1))
        register("watch_update", lambda **o: self._keep("watch_update", Watch(True, **o)),
                 options=schedule_options(every=4, steps=[10]))


def test_failing_and_nan_diagnostics_do_not_stop_the_run(tmp_path):
    plugin = Misbehaving()
    plugins = load_plugins(extra={"misbehaving": plugin})
    names = ["boom", "nan_value", "not_a_record", "watch", "watch_update"]
    diagnostics = names + [{"name": "block_norms", "options": {"every": 5}}]
    outcome = run(raw_config([{"name": "adam", "lr": 0.01}], diagnostics, steps=10), tmp_path, plugins)
    (result,) = outcome.results
    assert result.status == "completed" and result.steps_done == 10
    assert result.eval_steps == [0, 10]
    d = result.diagnostics

    # boom: measured at 0, 1, 2, failed at 3, then disabled (not measured again, not finished).
    boom_errors = [e for e in result.diagnostic_errors if e.startswith("boom")]
    assert len(boom_errors) == 1
    assert "step 3" in boom_errors[0] and "RuntimeError: kaboom" in boom_errors[0]
    assert plugin.instances["boom"].calls == [0, 1, 2, 3]
    assert not plugin.instances["boom"].finished
    assert [s for s, _ in d["boom/ok"]] == [0, 1, 2] and "boom/finished" not in d

    # nan_value: the NaN is kept and noted; the diagnostic goes on.
    assert [s for s, _ in d["nan_value/value"]] == [0, 2, 4, 6, 8, 10]
    assert math.isnan(d["nan_value/value"][2][1]) and d["nan_value/value"][3][1] == 6.0
    assert [e for e in result.diagnostic_errors if e.startswith("nan_value")] == ["nan_value: value is nan at step 4"]

    # not_a_record: a TypeError, reported.
    (weird,) = [e for e in result.diagnostic_errors if e.startswith("not_a_record")]
    assert "step 5" in weird and "TypeError: a diagnostic returned SimpleNamespace, not a record" in weird
    assert len(result.diagnostic_errors) == 3, result.diagnostic_errors

    # watch_update: measured after the update leaving 0, 4, 8 (not 10: no update leaves the last point).
    assert [s for s, _ in d["watch_update/param_norm"]] == [0, 4, 8]
    at_point = dict(map(tuple, d["watch/param_norm"]))
    assert sorted(at_point) == list(range(11))
    for (step, before), (_, after), (_, update) in zip(d["watch_update/param_norm"], d["watch_update/next_norm"],
                                                       d["watch_update/update_norm"]):
        assert before == at_point[step] and after == at_point[step + 1]
        assert update > 0
    assert plugin.instances["watch"].finish_steps == [10] == plugin.instances["watch_update"].finish_steps
    assert d["watch/finished_at"] == [[10, 10.0]]
    # A standard diagnostic in the same run is unaffected.
    assert [s for s, _ in d["block_norms/A/update_norm"]] == [0, 5]

    # What results.json and TensorBoard show.
    data = read_results(outcome)
    (saved,) = data["runs"]
    assert saved["status"] == "completed" and saved["diagnostic_errors"] == result.diagnostic_errors
    assert saved["diagnostics"]["nan_value/value"][2] == [4, None]  # strict JSON
    events = load_events(result.run_dir)
    texts = set(events.Tags()["tensors"])
    assert {"diag/boom/error/text_summary", "diag/not_a_record/error/text_summary",
            "diag/nan_value/note/text_summary"} <= texts
    assert "diag/watch/error/text_summary" not in texts
    (error_event,) = events.Tensors("diag/boom/error/text_summary")
    assert error_event.step == 3
    message = error_event.tensor_proto.string_val[0].decode()
    assert "boom" in message and "kaboom" in message
    nan_points = events.Scalars("diag/nan_value/value")
    assert [e.step for e in nan_points] == [0, 2, 4, 6, 8, 10] and math.isnan(nan_points[2].value)


def test_a_failing_diagnostic_leaves_the_trajectory_unchanged(tmp_path):
    plugin = Misbehaving()
    plugins = load_plugins(extra={"misbehaving": plugin})
    adam = [{"name": "adam", "lr": 0.01}]
    with_failures = run(raw_config(adam, ["boom", "not_a_record", "watch_update"], steps=10), tmp_path / "a", plugins)
    without = run(raw_config(adam, steps=10), tmp_path / "b", plugins)
    assert with_failures.results[0].diagnostic_errors
    assert with_failures.results[0].eval_losses == without.results[0].eval_losses
