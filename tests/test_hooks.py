"""The plugin hooks: each is documented with its signature, the engine calls each with exactly its
hookspec's arguments, and the lifecycle hooks fire when and as often as documented."""

from __future__ import annotations

import ast
import inspect
import math
import warnings
from pathlib import Path

import pluggy
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import (
    STORE_EVERYTHING_SIZE_GUIDANCE,
    EventAccumulator,
)

from testbed import hookimpl, hookspecs
from testbed.experiment.config import parse_config
from testbed.experiment.runner import run_experiment
from testbed.plugins import load_plugins, new_manager
from testbed.engine.run import STATUSES, RunContext

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "testbed"

# The public signatures, as documented; changing one breaks every plugin implementing it.
DOCUMENTED = {
    "register_optimizers": ["register"],
    "register_tasks": ["register"],
    "register_diagnostics": ["register"],
    "register_executors": ["register"],
    "register_commands": ["cli"],
    "on_run_start": ["run"],
    "on_step_end": ["run", "step", "metrics"],
    "on_run_end": ["run", "status"],
}
LIFECYCLE = ("on_run_start", "on_step_end", "on_run_end")


def hookspec_functions() -> dict[str, object]:
    return {name: fn for name, fn in vars(hookspecs).items()
            if inspect.isfunction(fn) and hasattr(fn, "testbed_spec")}


def hooks_raw(optimizers=None, steps: int = 20, seeds=(0, 1), clip=1.0):
    return {
        "name": "hooks",
        "task": {"name": "gaussian", "d": 3, "n": 10},
        "model": {"layers": 2},
        "optimizers": optimizers or [{"name": "sgd", "lr": 0.01}, {"name": "adam", "lr": 0.001}],
        "train": {"steps": steps, "batch_size": 64, "seeds": list(seeds), "clip_grad_norm": clip},
        "eval": {"every": 10, "batch_size": 128},
    }


# ------------------------------------------------------------------ the specs themselves
def test_every_hookspec_is_documented_with_its_signature():
    specs = hookspec_functions()
    assert set(specs) == set(DOCUMENTED)
    readme = (ROOT / "README.md").read_text()
    for name, fn in specs.items():
        assert (fn.__doc__ or "").strip(), f"hookspec {name} has no docstring"
        assert list(inspect.signature(fn).parameters) == DOCUMENTED[name], name
        documented = f"`{name}({', '.join(DOCUMENTED[name])})`"
        assert documented in readme, f"README.md does not document {documented}"


def _hook_calls() -> list[tuple[str, int, ast.Call]]:
    """Every ``<...>hook.<hookname>(...)`` call in the package's source."""
    calls = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in DOCUMENTED):
                owner = node.func.value
                owner_name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
                if owner_name == "hook":
                    calls.append((f"{path.name}:{node.lineno}", node.func.attr, node))
    return calls


def test_the_engine_calls_lifecycle_hooks_with_exactly_their_spec_arguments():
    calls = _hook_calls()
    assert {name for _, name, _ in calls} >= set(LIFECYCLE), "a lifecycle hook is never called"
    for where, name, node in calls:
        assert not node.args, f"{where}: pluggy hooks take keyword arguments only"
        keywords = [k.arg for k in node.keywords]
        assert None not in keywords, f"{where}: no **kwargs in hook calls"
        assert sorted(keywords) == sorted(DOCUMENTED[name]), f"{where}: {name}({', '.join(keywords)})"


class AllHooks:
    """Implements every hook with exactly the spec's argument names and records what it got."""

    def __init__(self) -> None:
        self.seen: dict[str, list[dict]] = {name: [] for name in DOCUMENTED}

    @hookimpl
    def register_optimizers(self, register):
        self.seen["register_optimizers"].append({"register": register})

    @hookimpl
    def register_tasks(self, register):
        self.seen["register_tasks"].append({"register": register})

    @hookimpl
    def register_diagnostics(self, register):
        self.seen["register_diagnostics"].append({"register": register})

    @hookimpl
    def register_executors(self, register):
        self.seen["register_executors"].append({"register": register})

    @hookimpl
    def register_commands(self, cli):
        self.seen["register_commands"].append({"cli": cli})

    @hookimpl
    def on_run_start(self, run):
        self.seen["on_run_start"].append({"run": run})

    @hookimpl
    def on_step_end(self, run, step, metrics):
        self.seen["on_step_end"].append({"run": run, "step": step, "metrics": metrics})

    @hookimpl
    def on_run_end(self, run, status):
        self.seen["on_run_end"].append({"run": run, "status": status})


def test_implementations_are_validated_against_the_specs():
    # Exact argument names register; a misspelled one is refused by pluggy at registration.
    new_manager().register(AllHooks())

    class Misspelled:
        @hookimpl
        def on_step_end(self, run, stepp):
            pass

    with pytest.raises(pluggy.PluginValidationError):
        new_manager().register(Misspelled())
    # load_plugins turns that refusal into a recorded plugin error, not a crash.
    plugins = load_plugins(extra={"misspelled": Misspelled()}, entry_points=False)
    (info,) = plugins.infos
    assert info.name == "misspelled" and "stepp" in info.error


def test_every_hook_is_called_with_every_spec_argument(tmp_path):
    everything = AllHooks()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plugins = load_plugins(extra={"everything": everything})
        assert plugins.failed == []
        config = parse_config(hooks_raw(steps=3, seeds=[0]), plugins.registry)
        outcome = run_experiment(config, plugins, tmp_path, workers=1)
    # pluggy warns when a call omits an argument its hookspec declares.
    assert not [w for w in caught if "hookspec" in str(w.message)], [str(w.message) for w in caught]
    assert [r.status for r in outcome.results] == ["completed", "completed"]
    for name in ("register_optimizers", "register_tasks", "register_diagnostics", "register_executors"):
        (call,) = everything.seen[name]
        assert callable(call["register"])
    assert len(everything.seen["on_run_start"]) == 2
    assert len(everything.seen["on_step_end"]) == 6
    assert len(everything.seen["on_run_end"]) == 2
    for name in LIFECYCLE:
        for call in everything.seen[name]:
            assert set(call) == set(DOCUMENTED[name])
            assert isinstance(call["run"], RunContext)
    assert all(isinstance(c["step"], int) and isinstance(c["metrics"], dict) for c in everything.seen["on_step_end"])
    assert all(c["status"] in STATUSES for c in everything.seen["on_run_end"])


# ------------------------------------------------------------------ the lifecycle
class Recorder:
    """Records the lifecycle of every run and logs a scalar through the run context."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.contexts: dict[str, list[RunContext]] = {}

    @staticmethod
    def key(run: RunContext) -> str:
        return f"{run.label}/seed-{run.seed}"

    @hookimpl
    def on_run_start(self, run):
        self.contexts.setdefault(self.key(run), []).append(run)
        self.events.append(("start", self.key(run), run.label, run.seed, run.model, run.optimizer))

    @hookimpl
    def on_step_end(self, run, step, metrics):
        self.contexts[self.key(run)].append(run)
        self.events.append(("step", self.key(run), step, dict(metrics)))
        run.log_scalar("diag/recorder/step", float(step), step)

    @hookimpl
    def on_run_end(self, run, status):
        self.contexts[self.key(run)].append(run)
        self.events.append(("end", self.key(run), status))


def test_lifecycle_hooks_fire_once_per_run_and_once_per_step(tmp_path):
    recorder = Recorder()
    plugins = load_plugins(extra={"recorder": recorder})
    config = parse_config(hooks_raw(steps=20, seeds=[0, 1]), plugins.registry)
    outcome = run_experiment(config, plugins, tmp_path, workers=1)
    keys = [r.key for r in outcome.results]
    assert keys == ["sgd/seed-0", "adam/seed-0", "sgd/seed-1", "adam/seed-1"]
    assert all(r.status == "completed" for r in outcome.results)

    for key in keys:
        events = [e for e in recorder.events if e[1] == key]
        kinds = [e[0] for e in events]
        assert kinds == ["start"] + ["step"] * 20 + ["end"], key

        _, _, label, seed, model, optimizer = events[0]
        assert f"{label}/seed-{seed}" == key
        assert isinstance(model, torch.nn.Module) and isinstance(optimizer, torch.optim.Optimizer)
        expected_class = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[label]
        assert type(optimizer) is expected_class
        optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
        assert optimized == {id(p) for p in model.parameters()}

        steps = [e[2] for e in events[1:-1]]
        assert steps == list(range(1, 21))
        for _, _, _, metrics in events[1:-1]:
            assert {"loss", "grad_norm"} <= set(metrics)
            assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in metrics.values())
            assert metrics["gradient_evaluations"] == 1  # no closure: one loss and gradient a step
        assert events[-1][2] == "completed"
        # One context object per run, the same for all of its hook calls.
        assert len({id(c) for c in recorder.contexts[key]}) == 1
        assert recorder.contexts[key][0].config.name == "hooks"

    # What a hook logs through the run context lands in that run's event file.
    run_dir = outcome.results[0].run_dir
    accumulator = EventAccumulator(run_dir, size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    accumulator.Reload()
    logged = accumulator.Scalars("diag/recorder/step")
    assert [e.step for e in logged] == list(range(1, 21))
    assert [e.value for e in logged] == [float(s) for s in range(1, 21)]


def test_on_run_end_reports_divergence(tmp_path):
    recorder = Recorder()
    plugins = load_plugins(extra={"recorder": recorder})
    raw = hooks_raw([{"name": "sgd", "lr": 1e6}], steps=20, seeds=[0], clip=None)
    outcome = run_experiment(parse_config(raw, plugins.registry), plugins, tmp_path, workers=1)
    (result,) = outcome.results
    assert result.status == "diverged"
    assert [e[0] for e in recorder.events][0] == "start"
    assert recorder.events[-1] == ("end", "sgd/seed-0", "diverged")
    steps = [e[2] for e in recorder.events if e[0] == "step"]
    assert steps == list(range(1, len(steps) + 1))
    assert len(steps) < result.diverged_at


def test_hookspec_module_is_a_pluggy_spec_module():
    # The marker's project name is the one the manager and hookimpl use.
    assert hookspecs.hookspec.project_name == hookimpl.project_name == "testbed"
    manager = new_manager()
    for name in DOCUMENTED:
        assert getattr(manager.hook, name).spec is not None, name


# ------------------------------------------------------------------ what a run context holds
class ContextWatcher:
    """Records, at each run start, what the engine left in ``run.extra`` and ``run.resumed_from``."""

    def __init__(self) -> None:
        self.starts: list[tuple[dict, int | None]] = []

    @hookimpl
    def on_run_start(self, run):
        self.starts.append((dict(run.extra), run.resumed_from))


def test_run_extra_is_the_plugins_own_and_resumed_from_says_where_a_run_goes_on(tmp_path):
    from dataclasses import replace

    from testbed.engine.loop import train
    from testbed.experiment.cache import run_id
    from testbed.experiment.runner import plan_runs

    watcher = ContextWatcher()
    plugins = load_plugins(extra={"watcher": watcher})
    config = parse_config(hooks_raw([{"name": "sgd", "lr": 0.01}], steps=20, seeds=[0]), plugins.registry)
    (plan,) = plan_runs(config, tmp_path / "hooks")
    plan = replace(plan, run_id=run_id(plan, plugins))
    calls = iter(range(1, 100))
    assert train(plan, plugins, should_stop=lambda: next(calls) >= 12).status == "interrupted"
    assert train(plan, plugins).status == "completed"
    assert watcher.starts == [({}, None), ({}, 12)]  # the engine keeps nothing in extra
