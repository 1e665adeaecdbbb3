"""`testbed score`: is my optimizer better than the baselines? Parse, call testbed.score.scoring,
print the console scorecard. testbed.score is imported when the command runs: it brings scipy and
matplotlib, seconds that `testbed --help` and every other command need not pay."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from testbed.cli.params import ADDRESS_OPTION, EXECUTOR_HELP, SET_OPTION, RegisteredName, check_address
from testbed.cli.progress import PhaseProgress
from testbed.experiment.executors.base import make_executor
from testbed.experiment.signals import command_signals
from testbed.plugins import load_plugins


def names(value: str | None) -> list[str] | None:
    """A comma-separated list of names (None when not given)."""
    if value is None:
        return None
    return [name.strip() for name in value.split(",") if name.strip()]


@click.command()
@click.argument("optimizer", required=False)
@click.option("--profile", type=click.Choice(["quick", "full"]), default="quick", show_default=True,
              help="quick: a smoke test of the pipeline in minutes; full: the benchmark.")
@click.option("--suite", "suite", default=None, metavar="vN|DIR",
              help="The suite: a version of the shipped benchmark (default: the latest; an older one keeps "
                   "its own targets), or a directory v<N>/ with a suite.yaml and baselines.yaml of your own.")
@click.option("--workloads", default=None, metavar="A,B", help="Only these workloads (default: the whole suite).")
@click.option("--against", default=None, metavar="A,B",
              help="The baselines the candidate is compared with, seed by seed (default: Adam and SGD with momentum).")
@click.option("--out", default="score", show_default=True,
              help="Directory for the runs (TensorBoard logs), the scorecard and its figures.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Parallel runs (default: one per core).")
@click.option("--executor", type=RegisteredName("executor"), default="local", show_default=True, help=EXECUTOR_HELP)
@ADDRESS_OPTION
@SET_OPTION
@click.option("--baselines-only", is_flag=True, help="Score every baseline (no OPTIMIZER): the leaderboard.")
@click.option("--rerun-baselines", is_flag=True,
              help="Run the references here instead of taking the shipped results, and say where they differ.")
@click.option("--ship", is_flag=True, help="With --baselines-only: also write the package's shipped baseline "
                                           "results and LEADERBOARD.md (a maintainer's step).")
@command_signals()  # Ctrl-C and SIGTERM stop the runs as in `testbed run`; the same command goes on later
def score(optimizer: str | None, profile: str, suite: str | None, workloads: str | None, against: str | None, out: str,
          workers: int | None,
          executor: str, address: str | None, overrides: tuple[str, ...], baselines_only: bool,
          rerun_baselines: bool, ship: bool) -> None:
    """Score OPTIMIZER (a registered name or a YAML file with its search space) on the benchmark suite
    against baselines: tuned by one protocol, compared seed by seed, ranked by performance profile."""
    from testbed.score.scoring import DEFAULT_REFERENCES, ScoreRequest, plan, run_score
    from testbed.score.suite import suite_location

    plugins = load_plugins()
    plugins.require_healthy()
    check_address(plugins.registry, executor, address)
    references = DEFAULT_REFERENCES if against is None else names(against)
    request = ScoreRequest(optimizer, profile, names(workloads), references, Path(out), overrides,
                           baselines_only, rerun_baselines, ship, *suite_location(suite))
    chosen = plan(request, plugins)
    click.echo(chosen.suite.profile(profile).note)  # first: a quick profile's output is no verdict
    for line in chosen.notes:
        click.echo(line)
    click.echo(f"suite {chosen.suite.version}: {len(chosen.suite.workloads)} workloads; running "
               f"{', '.join(c.label for c in chosen.to_run) or 'nothing'}; logs in {Path(out) / 'runs'}")
    runner = make_executor(plugins.registry, executor, workers, address)
    progress = PhaseProgress()
    try:
        outcome = run_score(request, plugins, runner, chosen, report=progress, on_phase=progress.start)
    finally:
        progress.close()
        runner.close()
    print_outcome(outcome)
    if outcome.status == "interrupted":
        sys.exit(130)


def print_outcome(outcome) -> None:
    """The console scorecard of a ScoreOutcome, the warnings, what a rerun differs in, and where the
    files are."""
    from testbed.score.scorecard import console_lines, edge_warnings

    runs = f"{outcome.executed} runs executed, {outcome.cached} already done"
    if outcome.status != "complete":
        click.echo(f"{outcome.status} after {outcome.wall_seconds:.1f} s ({runs}): the same command goes on "
                   "where it stopped")
        return
    click.echo("")
    for line in console_lines(outcome.card)[1 if outcome.card.note else 0:]:  # the note was said first
        click.echo(line)
    for line in edge_warnings(outcome.card):
        click.echo(line, err=True)
    if outcome.differences is not None:
        click.echo(f"rerun baselines: {len(outcome.differences) or 'no'} differences from the shipped results "
                   "beyond float rounding")
        for line in outcome.differences:
            click.echo(f"  {line}")
    click.echo(f"done in {outcome.wall_seconds:.1f} s ({runs}); scorecard: {outcome.out / 'scorecard.md'} and "
               f"{outcome.out / 'index.html'}")
    for path in outcome.written:
        click.echo(f"wrote {path}")
    click.echo(f"TensorBoard: tensorboard --logdir {outcome.out / 'runs'}")
