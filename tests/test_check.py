"""`testbed check` (issue 14): each planted fault of tests/check_plugins.py is caught by the check it
breaks, with a message naming the fault; the installed plugins (the standard ones, lion, the example
distributions) all pass; names, options and failures on the command line are one line each."""

from __future__ import annotations


import pytest
from click.testing import CliRunner, Result

import check_plugins
from testbed.cli.commands import main
from testbed.conformance.runner import Outcome, check_entries, load_failures, resolve_names
from testbed.errors import ConfigError
from testbed.plugins import ENV_VAR, load_plugins
from testbed.plugins.registry import Registry


@pytest.fixture(scope="module")
def planted() -> Registry:
    """The installed plugins and the planted faults."""
    return load_plugins(extra={"check_plugins": check_plugins}).registry


def outcomes(registry: Registry, name: str) -> dict[str, Outcome]:
    """Check name -> outcome of every check of ``name``."""
    return {o.check: o for o in check_entries(resolve_names([name], registry), registry)}


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, ["check", *args])


# The five planted faults, and one planted fault for every other check.
FAULTS = [
    ("global_rng_sgd", "global-rng", "drew from the global RNG: torch's"),
    ("forgetful_momentum", "resume", "state_dict() drops part of the optimizer's state"),
    ("quiet_sam", "closure", "calls the closure 2 times"),
    ("global_rng_task", "global-rng", "drew from the global RNG: torch's"),
    ("param_mutator", "parameters", "modified probe.params"),
    ("global_rng_sgd", "deterministic", "two runs from the same seed differ"),
    ("silent_closure", "closure", "step() without a closure returned normally"),
    ("ascent", "convex", "does not fall by 10%"),
    ("narrow", "options", "fails with momentum=1.0"),
    ("broken_factory", "options", "RuntimeError: boom"),
    ("global_rng_task", "deterministic", "two batches drawn from generators in the same state differ"),
    ("wide_batch", "batch", "x of shape (32, 7, 4), expected (32, 7, 3)"),
    ("noisy_labels", "label-law", "labels are not linear in"),
    ("biased_weights", "label-law", "the law is w ~ N(0, I_d)"),
    ("forgetful_counter", "resume", "state_dict() drops part of its state"),
    ("eval_mutator", "trajectory", "differs from the same run without it in the eval loss of step 1"),
    ("eval_mutator", "parameters", "modified probe.eval_batch"),
    ("missing_plot", "records", "declares the curve plot 'value', but returned no Scalar 'value'"),
]


@pytest.mark.parametrize("name, check, fragment", FAULTS, ids=[f"{n}-{c}" for n, c, _ in FAULTS])
def test_a_planted_fault_fails_its_check_naming_the_fault(planted: Registry, name: str, check: str,
                                                          fragment: str) -> None:
    outcome = outcomes(planted, name)[check]
    assert outcome.failed, outcome.line()
    assert fragment in outcome.message, outcome.message


def test_a_well_behaved_plugin_passes_what_a_faulty_one_fails(planted: Registry) -> None:
    """The planted twins' sound halves pass every check: the checks fail only on the fault."""
    for name in ("task:twin", "diagnostic:twin"):
        assert [o.line() for o in outcomes(planted, name).values() if o.status != "PASS"] == []


def test_every_check_of_a_factory_that_raises_is_a_fail_line(planted: Registry) -> None:
    results = outcomes(planted, "broken_factory").values()
    assert results and all(o.failed and "boom" in o.message for o in results)


def test_names_resolve_by_kind_and_say_what_is_known(planted: Registry) -> None:
    with pytest.raises(ConfigError, match=r"'twin' is registered as a task and as a diagnostic: say which, "
                                          r"task:twin or diagnostic:twin"):
        resolve_names(["twin"], planted)
    with pytest.raises(ConfigError, match=r"no optimizer, task or diagnostic is registered as 'nope' "
                                          r"\(optimizers: .*quiet_sam.*; tasks: .*; diagnostics: .*\)"):
        resolve_names(["nope"], planted)
    (entry,) = resolve_names(["diagnostic:twin"], planted)
    assert (entry.kind, entry.name) == ("diagnostic", "twin")


# ------------------------------------------------------------------ the command
def test_the_installed_plugins_all_pass_check_all() -> None:
    result = invoke("--all")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines and all(line.startswith(("PASS ", "SKIP ")) for line in lines[:-1]), result.output
    for name in ("optimizer sgd ", "optimizer adam ", "optimizer lion ", "optimizer torch ", "task gaussian ",
                 "diagnostic gradient_noise "):
        assert any(line.startswith(f"PASS {name}") for line in lines), name
    assert " 0 failed" in lines[-1]


@pytest.fixture
def planted_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The planted plugins loaded through $TESTBED_PLUGINS, as a user's module would be."""
    monkeypatch.setenv(ENV_VAR, "check_plugins")


def test_a_failing_plugin_prints_fail_lines_a_summary_and_exits_1(planted_env: None) -> None:
    result = invoke("quiet_sam", "param_mutator")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.splitlines()
    assert len(lines) == 7 + 5 + 1
    assert "FAIL optimizer quiet_sam  closure: step(closure) calls the closure 2 times" in result.output
    assert "FAIL diagnostic param_mutator  parameters: measure(probe, 0) modified probe.params" in result.output
    assert lines[-1].startswith("12 checks of 2 plugins: 10 passed, 2 failed (optimizer quiet_sam: closure; "
                                "diagnostic param_mutator: parameters)")


def test_a_raising_factory_is_fail_lines_never_a_traceback(planted_env: None) -> None:
    result = invoke("broken_factory")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.count("FAIL optimizer broken_factory") == 7


def assert_one_error(result: Result, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and fragment in errors[0], result.output


@pytest.mark.parametrize("args, fragment", [
    (("twin",), "say which, task:twin or diagnostic:twin"),
    (("nope",), "no optimizer, task or diagnostic is registered as 'nope' (optimizers: "),
    (("optimizer:nope",), "unknown optimizer 'nope'; registered: "),
    (("executor:local",), "'executor' is not one of optimizer, task, diagnostic"),
    ((), "name the plugins to check, or give --all"),
    (("--all", "quiet_sam"), "name the plugins to check, or give --all (not both)"),
    (("narrow", "-o", "momentum=2"), "optimizer 'narrow' options.momentum: must be <= 1.0, got 2"),
    (("narrow", "-o", "speed=2"), "options.speed: unknown option (known options: momentum)"),
    (("narrow", "-o", "momentum"), "expected NAME=VALUE"),
    (("narrow", "ascent", "-o", "momentum=0.5"), "--option goes with exactly one NAME"),
])
def test_bad_input_is_one_error_line(planted_env: None, args: tuple[str, ...], fragment: str) -> None:
    assert_one_error(invoke(*args), fragment)


def test_a_kind_prefix_and_an_option_reach_the_checks(planted_env: None) -> None:
    result = invoke("task:twin")
    assert result.exit_code == 0 and "PASS task twin  label-law" in result.output
    result = invoke("optimizer:torch", "-o", "class=LBFGS")
    assert result.exit_code == 0, result.output
    assert "PASS optimizer torch  closure: keeps the closure contract (step() without a closure raises)" in result.output


def test_a_plugin_that_fails_to_load_is_a_fail_line_and_named_for_an_unknown_name(plugin_module) -> None:
    plugin_module("unloadable", "raise ImportError('no module named signum_core')\n")
    lines = [o.line() for o in load_failures(load_plugins())]
    assert lines == ["FAIL plugin unloadable  loads: ImportError: no module named signum_core (distribution "
                     "$TESTBED_PLUGINS -)"]
    assert_one_error(invoke("signum"), "plugins that failed to load, and may register it: unloadable "
                                       "(ImportError: no module named signum_core)")


def test_a_required_option_without_a_value_skips_and_a_given_one_checks(planted: Registry, planted_env: None) -> None:
    (skipped,) = outcomes(planted, "needs_value").values()
    assert skipped.status == "SKIP" and "-o momentum=VALUE" in skipped.message
    result = invoke("needs_value", "-o", "momentum=0.5")
    assert result.exit_code == 0 and result.output.count("PASS optimizer needs_value") == 7, result.output


def test_invalid_check_options_are_a_fail_line(planted: Registry) -> None:
    (outcome,) = outcomes(planted, "bad_check_options").values()
    assert outcome.failed and "its check_options are not valid options" in outcome.message
    assert "speed: unknown option" in outcome.message
