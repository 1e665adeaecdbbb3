"""A plugin author's mistakes, reported so that the author sees what to fix (issue 14, points 9 and
10): a misspelled hook fails the plugin's load like an import error (naming the plugin, the unknown
hook and the closest real hook); `testbed plugins` exits 1 when a plugin failed to load; a factory
whose signature does not take what the host passes is named with its signature and the call; a
diagnostic that raises or returns NaN gets one warning line per (run, diagnostic) on the console."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from testbed.cli.commands import main
from testbed.plugins import load_plugins

MISSPELLED = """
    import torch
    from testbed import hookimpl

    @hookimpl
    def register_optimizer(register):  # the hook is register_optimizers
        register("never_registered", lambda params, lr: torch.optim.SGD(params, lr=lr))

    @hookimpl
    def register_tasks(register):  # a real hook of the same plugin: the plugin is not loaded at all
        pass
"""

OPTIONAL = """
    from testbed import hookimpl

    @hookimpl(optionalhook=True)
    def on_some_future_hook(run):  # declared optional: a hook of a newer testbed, not an error
        pass
"""


def invoke(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def error_lines(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("Error:")]


# ------------------------------------------------------------------ point 9: a misspelled hook
def test_a_misspelled_hook_fails_the_plugin_and_suggests_the_real_one(plugin_module):
    plugin_module("misspelled_plugin", MISSPELLED)
    plugins = load_plugins()
    (failed,) = plugins.failed
    assert failed.name == "misspelled_plugin"
    assert "unknown hook 'register_optimizer'" in failed.error
    assert "did you mean 'register_optimizers'?" in failed.error
    assert not plugins.manager.has_plugin("misspelled_plugin")  # none of its hooks are called
    assert "never_registered" not in {e.name for e in plugins.registry.list("optimizer")}
    assert "sgd" in {e.name for e in plugins.registry.list("optimizer")}  # the others load


def test_an_optional_unknown_hook_is_allowed(plugin_module):
    plugin_module("optional_hook_plugin", OPTIONAL)
    assert load_plugins().failed == []


def test_testbed_plugins_lists_everything_then_exits_1(plugin_module):
    plugin_module("misspelled_plugin", MISSPELLED)
    result = invoke("plugins")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stdout.splitlines()
    where = next(i for i, line in enumerate(lines) if line.startswith("misspelled_plugin"))
    assert "FAILED TO LOAD" in lines[where + 1] and "'register_optimizer'" in lines[where + 1]
    assert "optimizers: adam, adamw, sgd, torch" in result.stdout  # listed before exiting
    (error,) = error_lines(result)
    assert "misspelled_plugin" in error and error in result.stderr

    as_json = invoke("plugins", "--json")
    assert as_json.exit_code == 1
    rows = {row["name"]: row for row in json.loads(as_json.stdout)}
    assert "unknown hook 'register_optimizer'" in rows["misspelled_plugin"]["error"]


def test_testbed_plugins_exits_1_for_an_import_error_too(plugin_module):
    plugin_module("broken_import_plugin", "import no_such_module_xyz\n")
    result = invoke("plugins")
    assert result.exit_code == 1 and "no_such_module_xyz" in result.stdout
    assert len(error_lines(result)) == 1


def test_testbed_plugins_exits_0_when_all_load():
    assert invoke("plugins").exit_code == 0


def test_run_with_a_misspelled_hook_is_one_error(plugin_module, write_yaml, tiny_raw, tmp_path):
    plugin_module("misspelled_plugin", MISSPELLED)
    result = invoke("run", write_yaml(tiny_raw), "--logdir", tmp_path / "runs")
    assert result.exit_code == 1 and "Traceback" not in result.output
    (error,) = error_lines(result)
    assert "misspelled_plugin" in error and "unknown hook 'register_optimizer'" in error
    assert "did you mean 'register_optimizers'?" in error
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ point 10: a factory's wrong signature
WRONG_SIGNATURES = """
    import torch
    from testbed import Diagnostic, Option, Scalar, hookimpl

    def make_positional(params, lr):  # forgets the declared option rho
        return torch.optim.SGD(params, lr=lr)

    def make_no_lr(params, rho):
        return torch.optim.SGD(params, lr=0.1)

    def make_picky(params, lr, rho):  # takes what the host passes, then rejects a value
        if rho > 0.5:
            raise ValueError("rho above 0.5 diverges")
        return torch.optim.SGD(params, lr=lr)

    def make_task(dimension, n):
        raise AssertionError("never called")

    class Norm(Diagnostic):
        def measure(self, probe, step):
            return [Scalar("norm", float(probe.params.norm()))]

    def make_diagnostic(scale):  # declares no option: the host calls it with none
        return Norm()

    RHO = {"rho": Option(0.05, "radius", min=0.0)}

    @hookimpl
    def register_optimizers(register):
        register("forgets_rho", make_positional, options=RHO)
        register("no_lr", make_no_lr, options=RHO)
        register("picky", make_picky, options=RHO)

    @hookimpl
    def register_tasks(register):
        register("misnamed_d", make_task)

    @hookimpl
    def register_diagnostics(register):
        register("needs_scale", make_diagnostic)
"""


@pytest.mark.parametrize(("change", "fragments"), [
    ({"optimizers": [{"name": "forgets_rho", "lr": 0.1}]},
     ["optimizer 'forgets_rho'", "plugin 'wrong_signatures'", "make_positional(params, lr)",
      "factory(params, lr=..., rho=...)", "unexpected keyword argument 'rho'"]),
    ({"optimizers": [{"name": "no_lr", "lr": 0.1}]},
     ["optimizer 'no_lr'", "make_no_lr(params, rho)", "factory(params, lr=..., rho=...)", "'lr'"]),
    ({"task": {"name": "misnamed_d", "d": 3, "n": 6}},
     ["task 'misnamed_d'", "make_task(dimension, n)", "factory(d=..., n=...)"]),
    ({"diagnostics": ["needs_scale"]},
     ["diagnostic 'needs_scale'", "make_diagnostic(scale)", "factory()", "'scale'"]),
])
def test_a_factory_with_a_wrong_signature_is_named_with_it(change, fragments, plugin_module, write_yaml, tiny_raw):
    plugin_module("wrong_signatures", WRONG_SIGNATURES)
    result = invoke("validate", write_yaml({**tiny_raw, **change}))
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    (error,) = error_lines(result)
    assert "rejected its options" not in error
    for fragment in fragments:
        assert fragment in error, error


def test_a_factory_rejecting_a_value_still_says_so(plugin_module, write_yaml, tiny_raw):
    plugin_module("wrong_signatures", WRONG_SIGNATURES)
    optimizers = [{"name": "picky", "lr": 0.1, "options": {"rho": 0.9}}]
    result = invoke("validate", write_yaml({**tiny_raw, "optimizers": optimizers}))
    (error,) = error_lines(result)
    assert "optimizer 'picky' rejected its options: rho above 0.5 diverges" in error


# ------------------------------------------------------------------ point 10: a failing diagnostic on the console
FAILING_DIAGNOSTICS = """
    from testbed import Diagnostic, Scalar, Schedule, hookimpl

    class Boom(Diagnostic):
        def measure(self, probe, step):
            if step >= 3:
                raise RuntimeError(f"kaboom at {step}")
            return [Scalar("ok", 1.0)]

    class AlwaysNan(Diagnostic):
        def measure(self, probe, step):
            return [Scalar("value", float("nan"))]

    @hookimpl
    def register_diagnostics(register):
        register("boom", Boom, schedule=Schedule(every=1))
        register("always_nan", AlwaysNan, schedule=Schedule(every=5))
"""


def test_a_failing_diagnostic_is_one_warning_per_run_and_diagnostic(plugin_module, write_yaml, tiny_raw, tmp_path):
    plugin_module("failing_diagnostics", FAILING_DIAGNOSTICS)
    logdir = tmp_path / "runs"
    result = invoke("run", write_yaml({**tiny_raw, "diagnostics": ["boom", "always_nan"]}), "--logdir", logdir)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    keys = ["sgd/seed-0", "sgd/seed-1", "adam/seed-0", "adam/seed-1"]
    assert len(warnings) == 2 * len(keys), warnings  # not one per step
    for key in keys:
        (boom,) = [w for w in warnings if w.startswith(f"Warning: run {key}: diagnostic boom ")]
        assert "failed at step 3" in boom and "RuntimeError: kaboom at 3" in boom
        error_txt = logdir / "tiny" / key / "error.txt"
        assert f"traceback in {error_txt}" in boom
        traceback = error_txt.read_text()
        assert "diagnostic boom failed at step 3" in traceback and "RuntimeError: kaboom at 3" in traceback
        assert "in measure" in traceback  # the diagnostic's own frame: where to look
        (nan,) = [w for w in warnings if w.startswith(f"Warning: run {key}: diagnostic always_nan")]
        assert "value is nan at step 0" in nan and "and 4 more" in nan  # steps 0, 5, 10, 15, 20
        assert "error.txt" not in nan
        summary = json.loads((logdir / "tiny" / key / "summary.json").read_text())
        assert summary["status"] == "completed" and len(summary["diagnostic_errors"]) == 6


def test_a_fresh_attempt_does_not_keep_an_earlier_attempts_tracebacks(plugin_module, write_yaml, tiny_raw, tmp_path):
    plugin_module("failing_diagnostics", FAILING_DIAGNOSTICS)
    logdir, config = tmp_path / "runs", write_yaml({**tiny_raw, "diagnostics": ["boom"]})
    assert invoke("run", config, "--logdir", logdir).exit_code == 0
    assert invoke("run", config, "--logdir", logdir, "--force").exit_code == 0
    traceback = (logdir / "tiny" / "sgd" / "seed-0" / "error.txt").read_text()
    assert traceback.count("diagnostic boom failed at step 3") == 1
