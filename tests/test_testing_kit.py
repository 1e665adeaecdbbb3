"""testbed.testing, the plugin author's kit, on real plugins (tests/score_plugins.py, the standard
plugins, and plugin objects made here): a fresh registry, validation and builds as the host does them,
tiny experiments in this process with the numbers a normal run gives, a real Probe, the pytest plugin
as an installed project sees it, and the example plugins' tests importing only the public API."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import score_plugins
import testbed
from helpers import run as run_experiment_in_workers
from testbed import ConfigError, PluginError, hookimpl
from testbed.experiment.config import parse_config
from testbed.testing import (TINY, PluginSet, RunRecord, TinyRun, load_plugins, run_tiny, tiny_config, tiny_probe,
                             with_update)

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_MODULES = {"testbed", "testbed.testing"}


# ------------------------------------------------------------------ a fresh registry
def test_load_plugins_registers_the_plugin_beside_the_builtins_only():
    plugins = load_plugins(score_plugins)
    assert isinstance(plugins, PluginSet)
    assert {"adam_alias", "random_sign_adam", "twice", "sgd", "adam"} <= set(plugins.names("optimizer"))
    assert plugins.optimizer("twice").plugin == "score_plugins"
    assert "lion" not in plugins.names("optimizer")  # installed, but neither built in nor under test
    alone = load_plugins(score_plugins, builtins=False)
    assert alone.names("optimizer") == ["adam_alias", "random_sign_adam", "twice"]
    assert alone.names("task") == [] and alone.names("diagnostic") == []


def test_load_plugins_ignores_testbed_plugins_in_the_environment(plugin_module):
    plugin_module("env_plugin", """
        from testbed import hookimpl
        @hookimpl
        def register_optimizers(register):
            register("from_env", lambda params, lr: None)
    """)
    assert "from_env" not in load_plugins().names("optimizer")


def test_a_plugin_can_be_named_and_a_clash_is_the_hosts_error():
    plugins = load_plugins(named={"planted": score_plugins}, builtins=False)
    assert plugins.optimizer("adam_alias").plugin == "planted"

    class Clash:
        @hookimpl
        def register_optimizers(self, register):
            register("sgd", lambda params, lr: torch.optim.SGD(params, lr=lr))

    with pytest.raises(PluginError, match="registered by two plugins"):
        load_plugins(Clash())


def test_a_plugin_that_fails_to_load_is_an_error_naming_it():
    class Misspelled:
        @hookimpl
        def register_optimizer(self, register):  # no such hook
            pass

    with pytest.raises(PluginError, match="Misspelled"):
        load_plugins(Misspelled(), builtins=False)


def test_registrations_say_what_was_registered():
    plugins = load_plugins(score_plugins)
    twice, alias = plugins.optimizer("twice"), plugins.optimizer("adam_alias")
    assert (twice.kind, twice.name, twice.needs_closure, twice.factory) == (
        "optimizer", "twice", True, score_plugins.make_twice)
    assert alias.needs_closure is False and alias.doc == "Adam under another name"
    assert alias.options["betas"].default == [0.9, 0.999]
    norms, sharpness = plugins.diagnostic("block_norms"), plugins.diagnostic("sharpness")
    assert norms.kind == "diagnostic" and norms.schedule == testbed.Schedule(every=10) and norms.plots == ()
    assert norms.needs_closure is None
    assert sharpness.plots and all(isinstance(plot, testbed.Plot) for plot in sharpness.plots)
    with pytest.raises(ConfigError, match="unknown optimizer 'nope'.*twice"):
        plugins.optimizer("nope")


# ------------------------------------------------------------------ validation and builds, as the host does them
@pytest.mark.parametrize("kind,name,given", [
    ("optimizer", "random_sign_adam", {"seed": -1}),
    ("optimizer", "adam_alias", {"betas": [0.9]}),
    ("optimizer", "adam_alias", {"beta": [0.9, 0.9]}),
    ("task", "gamma", {"shape": 0}),
    ("diagnostic", "block_norms", {"every": 0}),
])
def test_validate_raises_the_error_a_config_gets(kind, name, given):
    plugins = load_plugins(score_plugins)
    raw = tiny_config()
    if kind == "optimizer":
        raw["optimizers"] = [{"name": name, "lr": 0.01, "options": given}]
    elif kind == "task":
        raw["task"]["name"], raw["task"]["options"] = name, given
    else:
        raw["diagnostics"] = [{"name": name, "options": given}]
    with pytest.raises(ConfigError) as from_config:
        parse_config(raw, plugins.host.registry)
    with pytest.raises(ConfigError) as from_kit:
        plugins.validate(kind, name, given)
    assert str(from_kit.value) == str(from_config.value)


def test_validate_types_and_fills_defaults():
    plugins = load_plugins(score_plugins)
    assert plugins.validate("optimizer", "random_sign_adam", {"betas": ["1e-1", 0.5]}) == {
        "betas": [0.1, 0.5], "seed": 0}
    assert plugins.validate("diagnostic", "block_norms", {"every": 5})["every"] == 5


def test_build_optimizer_task_and_diagnostic_as_a_run_does():
    plugins = load_plugins(score_plugins)
    params = [torch.zeros(3, requires_grad=True)]
    optimizer = plugins.build_optimizer("random_sign_adam", params, lr=0.5, options={"seed": 3})
    assert isinstance(optimizer, score_plugins.RandomSignAdam) and optimizer.param_groups[0]["lr"] == 0.5
    assert plugins.needs_closure("twice") and not plugins.needs_closure("adam_alias")
    task = plugins.build_task("gamma", d=4, n=5, options={"shape": 0.5})
    batch = task.sample(7, torch.Generator().manual_seed(0))
    assert (task.d, task.n, batch.x.shape, batch.y.shape) == (4, 5, (7, 6, 4), (7, 6))
    diagnostic = plugins.build_diagnostic("block_norms", {"every": 3, "stop": 9})
    assert diagnostic.schedule == testbed.Schedule(every=3, stop=9)  # set by the host, as in a run


def test_a_factory_rejecting_its_options_is_the_hosts_config_error():
    plugins = load_plugins(builtins=True)
    with pytest.raises(ConfigError, match="rejected its options"):
        plugins.build_task("anisotropic", d=3, options={"spectrum": [1.0, 2.0]})  # 2 values, d = 3


# ------------------------------------------------------------------ tiny experiments in this process
def test_tiny_config_changes_what_it_is_asked_to():
    config = tiny_config(optimizers=["twice", {"name": "adam_alias", "lr": 0.1}], task={"options": {"x": 1}},
                         diagnostics=["block_norms"], train={"steps": 5}, name="mine")
    assert config["optimizers"] == [{"name": "twice", "lr": 0.01}, {"name": "adam_alias", "lr": 0.1}]
    assert config["task"] == {**TINY["task"], "options": {"x": 1}}
    assert config["train"] == {**TINY["train"], "steps": 5} and config["name"] == "mine"
    assert config["diagnostics"] == ["block_norms"]
    config["model"]["layers"] = 9
    assert tiny_config() == TINY and TINY["model"]["layers"] == 2  # a fresh copy every time


def test_run_tiny_gives_the_numbers_of_a_run_in_worker_processes(tmp_path):
    config = tiny_config(optimizers=["sgd", "adam"], train={"seeds": [0, 1]})
    run = run_tiny(config, tmp_path / "kit")
    assert isinstance(run, TinyRun) and run.status == "complete" and run.error is None
    assert run.directory == tmp_path / "kit" / "tiny" and (run.directory / "results.json").is_file()
    workers = run_experiment_in_workers(config, tmp_path / "workers")
    expected = {(r.label, r.seed): r.eval_losses for r in workers.results}
    assert {(r.label, r.seed): r.eval_losses for r in run.runs} == expected  # bitwise
    record = run.run("adam", seed=1)
    assert isinstance(record, RunRecord) and record.status == "completed" and record.steps_done == 20
    assert record.eval_steps == [0, 10, 20] and record.final_eval_loss == record.eval_losses[-1]
    assert len(record.train_losses) == 20 and all(loss > 0 for loss in record.train_losses)
    assert record.run_dir.is_dir() and list(record.run_dir.glob("events.out.tfevents.*"))
    assert [r["eval_losses"] for r in run.results()["runs"]] == [r.eval_losses for r in run.runs]
    with pytest.raises(LookupError, match="sgd/seed-0"):
        run.run("sgd")  # two seeds


def test_run_tiny_runs_plugin_objects_in_this_process_and_reruns(tmp_path):
    seen = []

    class Spy:
        @hookimpl
        def on_run_start(self, run):
            seen.append(os.getpid())

    plugins = load_plugins(score_plugins, Spy())
    config = tiny_config(optimizers=["twice"], train={"steps": 5})
    first = run_tiny(config, tmp_path, plugins)
    second = run_tiny(config, tmp_path, plugins)  # the same run id: run again, not read from cache
    assert seen == [os.getpid(), os.getpid()]
    assert first.run().eval_losses == second.run().eval_losses
    assert first.run().gradient_evaluations == 10  # the closure is called twice a step
    assert second.run().train_losses == first.run().train_losses and len(first.run().train_losses) == 5


def test_run_tiny_reports_diagnostic_records_and_errors(tmp_path):
    class Broken(testbed.Diagnostic):
        def measure(self, probe, step):
            raise RuntimeError("planted")

    class BrokenPlugin:
        @hookimpl
        def register_diagnostics(self, register):
            register("broken", Broken, schedule=testbed.Schedule(every=5))

    plugins = load_plugins(BrokenPlugin())
    run = run_tiny(tiny_config(diagnostics=["broken", {"name": "block_norms", "options": {"every": 5}}]),
                   tmp_path, plugins)
    record = run.run()
    assert record.status == "completed"
    assert any("broken" in error and "planted" in error for error in record.diagnostic_errors)
    steps = [step for step, _ in record.diagnostics["block_norms/A/grad_norm"]]
    assert steps == [0, 5, 10, 15] and len(record.scalars("block_norms", "A/grad_norm")) == 4


def test_run_tiny_raises_the_config_error_of_testbed_run(tmp_path):
    with pytest.raises(ConfigError, match=r"optimizers\[0\].name: unknown optimizer 'nope'"):
        run_tiny(tiny_config(optimizers=["nope"]), tmp_path)


# ------------------------------------------------------------------ a real Probe
def test_tiny_probe_is_a_real_probe_at_the_initial_point():
    probe = tiny_probe(d=2, n=4, batch_size=16, dtype=torch.float64, init_std=0.3)
    assert isinstance(probe, testbed.Probe) and probe.params.dtype == torch.float64
    assert probe.eval_batch.x.shape == (16, 5, 2)
    theta = probe.params.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(probe.loss_function()(theta), theta)
    torch.testing.assert_close(probe.gradient(), expected)
    hessian = probe.hessian()
    torch.testing.assert_close(hessian, hessian.T)
    assert probe.sample(3, probe.generator("x")).x.dtype == torch.float64  # prompts in the model's dtype


def test_tiny_probe_takes_a_plugins_task_and_with_update_takes_a_step():
    task = load_plugins().build_task("gamma", d=3, n=5, options={"shape": 0.5})
    probe = tiny_probe(task)
    assert (probe.task.d, probe.task.n) == (3, 5) and probe.next_params is None
    stepped = with_update(probe, lr=0.5)
    torch.testing.assert_close(stepped.update, -0.5 * stepped.train_gradient)
    torch.testing.assert_close(stepped.params, probe.params)
    assert stepped.train_gradient.norm() > 0 and probe.next_params is None


# ------------------------------------------------------------------ the pytest plugin
def test_the_pytest_plugin_imports_without_torch():
    code = "import sys, testbed.testing.pytest_plugin; print('torch' in sys.modules)"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "False"


def test_the_fixtures_reach_a_project_through_the_entry_point(tmp_path):
    """A plugin's project of its own (no conftest, no -p): the installed entry point brings the fixtures."""
    (tmp_path / "test_mine.py").write_text(textwrap.dedent("""
        import torch
        import testbed
        from testbed import hookimpl

        class Mine:
            @hookimpl
            def register_optimizers(self, register):
                register("mine", lambda params, lr: torch.optim.SGD(params, lr=lr), doc="plain")

        def test_fixtures(testbed_plugins, tiny_config, run_tiny, testbed_probe):
            plugins = testbed_plugins(Mine())
            assert plugins.optimizer("mine").doc == "plain"
            tiny_config["optimizers"] = [{"name": "mine", "lr": 0.01}]
            tiny_config["train"]["steps"] = 4
            run = run_tiny(tiny_config, plugins)
            assert run.run("mine").status == "completed" and len(run.run("mine").train_losses) == 4
            assert isinstance(testbed_probe, testbed.Probe)
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    completed = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_mine.py"],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "1 passed" in completed.stdout


# ------------------------------------------------------------------ example plugins test through the public API
def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a Python file, ``from x import y`` as x (relative: as written)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, "." * node.level + (node.module or "")))
    return found


def private_testbed_imports(path: Path) -> list[str]:
    """The imports of testbed modules other than the public API (testbed, testbed.testing)."""
    return [f"{path.relative_to(ROOT)}:{line}: {module}" for line, module in imported_modules(path)
            if (module == "testbed" or module.startswith("testbed.")) and module not in PUBLIC_MODULES]


def example_plugin_tests() -> list[Path]:
    """The test files of every plugin distribution under plugins/ except the standard plugins (part of testbed)."""
    return sorted(path for path in ROOT.glob("plugins/*/tests/**/*.py") if "testbed_std" not in path.parts)


def test_the_import_scan_sees_private_imports(tmp_path):
    path = ROOT / "tests" / "test_testing_kit.py"  # this file imports testbed.experiment.config
    assert any("testbed.experiment.config" in line for line in private_testbed_imports(path))


def test_example_plugins_tests_import_only_the_public_api():
    files = example_plugin_tests()
    assert len(files) >= 2  # testbed_lion's and testbed_mixture's, at least
    offences = [line for path in files for line in private_testbed_imports(path)]
    assert not offences, "example plugin tests importing non-public testbed modules:\n" + "\n".join(offences)
