"""`testbed check`: conformance checks of registered optimizers, tasks and diagnostics. Parse, call
testbed.conformance, print one line per check and a summary; exit 1 if any check failed."""

from __future__ import annotations

import sys
from typing import Any

import click
import yaml

from testbed.errors import ConfigError
from testbed.plugins import load_plugins


def parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``("betas=[0.9, 0.9]", ...)`` as ``{"betas": [0.9, 0.9]}`` (values read as YAML)."""
    options = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint="--option")
        try:
            options[name.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise click.BadParameter(f"{pair!r}: the value is not YAML ({exc.problem})", param_hint="--option") from None
    return options


@click.command()
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--all", "check_all", is_flag=True, help="Check every registered optimizer, task and diagnostic.")
@click.option("-o", "--option", "pairs", multiple=True, metavar="NAME=VALUE",
              help="An option value to build the plugin with (YAML; repeatable; one NAME only).")
def check(names: tuple[str, ...], check_all: bool, pairs: tuple[str, ...]) -> None:
    """Conformance checks of registered plugins: NAME is an optimizer, task or diagnostic (KIND:NAME,
    e.g. optimizer:NAME, where a name is registered as two kinds); --all checks every one.

    Each check runs the plugin on a tiny problem (d=3, n=6, batches of 32, a few steps) and prints a
    PASS or FAIL line naming the fault. An optimizer: its declared options build; the same seed gives
    the same losses; a run resumed from its state_dict() is bitwise the unbroken run; float64 works;
    with needs_closure a step without a closure raises, without it a closure handed to step() is used
    exactly as the engine's closure(); step(); a convex problem's loss falls; the global RNG is
    untouched. A task: its options build; the same generator state gives the same batch; the global
    RNG is untouched; shapes (B, n+1, d), (B, n+1), float32, on the generator's device; each prompt's
    labels are <w, x> (or <w, features(x)>), w ~ N(0, I_d), with label_noise set to 0 where declared.
    A diagnostic: its options build; it returns records of the kinds its plots declare; it survives a
    state_dict() round trip; the training trajectory is bitwise unchanged; it modifies nothing its
    probe hands it. A plugin may register check_options={...}: the options the checks build it with
    (a value for a required option, or a cheaper setting); -o overrides them. Exit 1 if a check failed.
    """
    from testbed.conformance.runner import all_entries, check_entries, load_failures, resolve_names, summary, \
        validate_given

    if check_all == bool(names):
        raise click.UsageError("name the plugins to check, or give --all (not both)")
    given = parse_options(pairs)
    if given and len(names) != 1:
        raise click.UsageError("--option goes with exactly one NAME")
    plugins = load_plugins()
    registry = plugins.registry
    try:
        entries = all_entries(registry) if check_all else resolve_names(names, registry)
    except ConfigError as exc:
        if not plugins.failed:
            raise
        failed = ", ".join(f"{info.name} ({info.error})" for info in plugins.failed)
        raise ConfigError(f"{exc}; plugins that failed to load, and may register it: {failed}") from None
    validate_given(entries, given)
    outcomes = load_failures(plugins) if check_all else []
    for outcome in outcomes:
        click.echo(outcome.line())
    for outcome in check_entries(entries, registry, given):
        click.echo(outcome.line())
        outcomes.append(outcome)
    click.echo(summary(outcomes))
    if any(outcome.failed for outcome in outcomes):
        sys.exit(1)
