"""The `testbed` command. Commands only parse, call the library and print; every TestbedError
and every command-line usage error becomes one message on stderr and exit code 1 (in
``TestbedGroup.invoke``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from testbed import __version__
from testbed.experiment.config import apply_overrides, load_yaml
from testbed.errors import PluginError, TestbedError
from testbed.experiment.executors.base import make_executor
from testbed.experiment.executors.local import LocalExecutor, start_worker_server
from testbed.engine.diagnostic_runner import problems_by_diagnostic, raised
from testbed.files.layout import ERROR_FILE, RESULTS_FILE, SUMMARY_FILE, SWEEP_FILE
from testbed.experiment.runner import run_sweep, summary_table
from testbed.experiment.sweep import Sweep, expand
from testbed.experiment.tuning import plan_pilots
from testbed.paper.flagship import FLAGSHIP, format_flagship, time_flagship
from testbed.plugins import load_plugins
from testbed.cli.params import ADDRESS_OPTION, EXECUTOR_HELP, SET_OPTION, RegisteredName, check_address, plugins_of
from testbed.cli.plugin_commands import PluginCommandsGroup
from testbed.cli.progress import PhaseProgress
from testbed.cli.check import check
from testbed.cli.new import new
from testbed.cli.score import score
from testbed.plugins.registry import KINDS
from testbed.experiment.signals import command_signals


class TestbedGroup(PluginCommandsGroup):
    """The ``testbed`` group: built-in commands, the plugins' (``register_commands``), and errors as one line."""

    def invoke(self, ctx: click.Context):
        """Run the command; a TestbedError or a usage error becomes one ``Error:`` line and exit 1."""
        try:
            return super().invoke(ctx)
        except TestbedError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(1)
        except click.UsageError as exc:  # a bad option or argument is bad input too: exit 1
            hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
            click.echo(f"Error: {exc.format_message()}{hint}", err=True)
            ctx.exit(1)


def _load_sweep(path: str, overrides: tuple[str, ...], start_workers: bool = False):
    """The plugins and the checked sweep of the config at ``path``; ``start_workers``: the local
    executor's worker server starts before the check, so that their imports (seconds each) overlap."""
    plugins = plugins_of(click.get_current_context(silent=True))  # those its --executor was checked with
    plugins.require_healthy()
    raw = apply_overrides(load_yaml(path), list(overrides))
    if start_workers:
        start_worker_server(plugins)
    return plugins, expand(raw, plugins.registry, default_name=Path(path).stem)


@click.group(cls=TestbedGroup)
@click.version_option(__version__, prog_name="testbed")
def main() -> None:
    """Optimizer testbed on linear Transformers for in-context regression (Ahn et al., ICLR 2024)."""


main.add_command(score)
main.add_command(new)
main.add_command(check)


@main.command()
@click.argument("config_path", metavar="CONFIG")
@SET_OPTION
@click.option("--logdir", default="runs", show_default=True, help="Root of the TensorBoard log directories.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Parallel runs (default: config, else one per core; with ray: the cluster's CPUs).")
@click.option("--executor", type=RegisteredName("executor"), default="local", show_default=True, help=EXECUTOR_HELP)
@ADDRESS_OPTION
@click.option("--force", is_flag=True, help="Run again runs that are already done.")
@click.option("--dry-run", is_flag=True, help="Print the plan (runs, what is done, estimated time) and stop.")
@command_signals()  # Ctrl-C and SIGTERM (`kill`, `timeout`, schedulers) stop the runs alike
def run(config_path: str, overrides: tuple[str, ...], logdir: str, workers: int | None, executor: str,
        address: str | None, force: bool, dry_run: bool) -> None:
    """Run an experiment or a sweep: every point x optimizer entry x seed of CONFIG."""
    plugins, sweep = _load_sweep(config_path, overrides, start_workers=executor == LocalExecutor.name and not dry_run)
    check_address(plugins.registry, executor, address)
    if dry_run:
        from testbed.experiment.dryrun import describe, estimate_seconds, plan_states

        states = plan_states(sweep, plugins, Path(logdir), force)
        capacity = workers or sweep.points[0].config.workers or (os.cpu_count() or 1)
        seconds = estimate_seconds(states, plugins, capacity)
        for line in describe(sweep, states, seconds, capacity):
            click.echo(line)
        return
    runner = make_executor(plugins.registry, executor, workers or sweep.points[0].config.workers, address)
    _describe_plan(sweep, Path(logdir))
    progress = PhaseProgress()
    try:
        outcome = run_sweep(sweep, plugins, logdir, report=progress, on_phase=progress.start, force=force,
                            executor=runner)
    finally:
        progress.close()
        runner.close()
    if outcome.executed == 0:
        click.echo(f"nothing to run: all {outcome.cached} runs are already done (--force runs them again)")
    click.echo("")
    if sweep.swept:
        rows = [(e.directory.name, row) for e in outcome.experiments for row in e.summary()]
        click.echo(summary_table([row for _, row in rows], points=[point for point, _ in rows]))
    else:
        click.echo(summary_table(outcome.experiments[0].summary()))
    click.echo("")
    click.echo(f"{outcome.status} in {outcome.wall_seconds:.1f} s ({outcome.executed} runs executed, "
               f"{outcome.resumed} of them resumed; {outcome.cached} already done); "
               f"results: {_results_path(outcome, sweep)}")
    click.echo(f"TensorBoard: tensorboard --logdir {outcome.directory}")
    for result in outcome.results:
        if result.warnings:
            click.echo(_warning_line(result), err=True)
        for line in _diagnostic_warning_lines(result):
            click.echo(line, err=True)
    if outcome.status == "interrupted":
        sys.exit(130)
    if any(r.status == "failed" for r in outcome.results):
        failed = next(r for r in outcome.results if r.status == "failed")
        click.echo(f"Error: run {failed.key} failed: {failed.error}", err=True)
        sys.exit(1)


def _warning_line(result) -> str:
    """One line for a run whose numbers are right but something around them is not (its warnings)."""
    more = len(result.warnings) - 1
    rest = f" (and {more} more in its {SUMMARY_FILE})" if more else ""
    return f"Warning: run {result.key}: {result.warnings[0]}{rest}"


def _diagnostic_warning_lines(result) -> list[str]:
    """One line per diagnostic of a run that raised or returned a non-finite value: its first problem,
    how many more, and where a raising one's traceback is."""
    lines = []
    for messages in problems_by_diagnostic(result.diagnostic_errors).values():
        more = f" (and {len(messages) - 1} more in its {SUMMARY_FILE})" if len(messages) > 1 else ""
        where = f" (traceback in {Path(result.run_dir) / ERROR_FILE})" if raised(messages[0]) else ""
        lines.append(f"Warning: run {result.key}: diagnostic {messages[0]}{more}{where}")
    return lines


def _describe_plan(sweep, logdir: Path) -> None:
    config = sweep.points[0].config
    runs, pilots = _run_counts(sweep)
    if sweep.swept:
        click.echo(f"sweep {sweep.name}: {len(sweep.points)} points over {', '.join(sweep.keys)}; {runs} runs, "
                   f"logs in {logdir / sweep.name}")
    else:
        click.echo(f"experiment {config.name}: {runs} runs ({len(config.optimizers)} optimizers x "
                   f"{len(config.train.seeds)} seeds), {config.train.steps} steps each, logs in {logdir / config.name}")
    if pilots:
        tuned = sorted({spec.label for p in sweep.points for spec in p.config.optimizers if spec.tune is not None})
        click.echo(f"learning-rate tuning first: {pilots} pilot runs for {', '.join(tuned)}")


def _run_counts(sweep) -> tuple[int, int]:
    """(main runs, learning-rate pilot runs) over every point of a sweep."""
    runs = sum(len(p.config.optimizers) * len(p.config.train.seeds) for p in sweep.points)
    pilots = sum(len(plan_pilots(p.config, Path(p.directory))) for p in sweep.points)
    return runs, pilots


def _results_path(outcome, sweep) -> Path:
    return outcome.directory / (SWEEP_FILE if sweep.swept else RESULTS_FILE)


@main.command()
@click.argument("config_path", metavar="CONFIG")
@SET_OPTION
@click.option("--show", is_flag=True, help="Print the resolved config.")
def validate(config_path: str, overrides: tuple[str, ...], show: bool) -> None:
    """Check CONFIG without running anything."""
    import yaml

    _, sweep = _load_sweep(config_path, overrides)
    runs, pilots = _run_counts(sweep)
    tuning = f" after {pilots} learning-rate pilot runs" if pilots else ""
    what = f"sweep {sweep.name} of {len(sweep.points)} points" if sweep.swept else f"experiment {sweep.name}"
    click.echo(f"{config_path}: valid; {what}, {runs} runs{tuning}")
    if show:
        for point in sweep.points:
            if sweep.swept:
                click.echo(f"# point {point.directory}")
            click.echo(yaml.safe_dump(point.config.to_dict(), sort_keys=False))


@main.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins_command(as_json: bool) -> None:
    """List every plugin with its distribution, version and what it registers; exit 1 if one failed to load."""
    plugins = load_plugins()
    registered = {info.name: {kind: [e.name for e in plugins.registry.list(kind) if e.plugin == info.name]
                              for kind in KINDS} for info in plugins.infos}
    if as_json:
        rows = [{**info.__dict__, "registers": registered[info.name]} for info in plugins.infos]
        click.echo(json.dumps(rows, indent=2))
    else:
        for info in plugins.infos:
            click.echo(f"{info.name}  ({info.distribution} {info.version}, {info.module})")
            if info.error:
                click.echo(f"    FAILED TO LOAD: {info.error}")
                continue
            for kind, names in registered[info.name].items():
                if names:
                    click.echo(f"    {kind}s: {', '.join(names)}")
    if plugins.failed:  # everything is listed; the exit status says that not all of it loaded
        names = ", ".join(info.name for info in plugins.failed)
        raise PluginError(f"{len(plugins.failed)} plugin(s) failed to load: {names}")


@main.command("list")
@click.argument("kind", type=click.Choice([f"{kind}s" for kind in KINDS]))
def list_command(kind: str) -> None:
    """Describe the registered optimizers, tasks, diagnostics or executors and their options."""
    plugins = load_plugins()
    entries = plugins.registry.list(kind[:-1])
    if not entries:
        click.echo(f"no {kind} registered")
    for entry in entries:
        click.echo(f"{entry.name}  [plugin {entry.plugin}]  {entry.doc}")
        if entry.kind == "optimizer":
            click.echo(f"    needs a closure: {_closure_need(entry.metadata['needs_closure'])}")
        for name, option in entry.config_options.items():
            click.echo(f"    {name}: {option.describe()}")
    for info in plugins.failed:
        click.echo(f"(plugin {info.name} failed to load: {info.error})", err=True)


def _closure_need(flag) -> str:
    # needs_closure is a flag or a function of the optimizer's options
    return "depends on its options" if callable(flag) else ("yes" if flag else "no")


@main.command()
@click.argument("directories", nargs=-1, required=True, metavar="DIR...")
@click.option("--out", default="report", show_default=True, help="Directory to write the report into.")
@click.option("--steps", default="750,1250", show_default=True,
              help="Steps of the R_med ratio table, comma-separated (the paper's: 750 and 1250).")
def report(directories: tuple[str, ...], out: str, steps: str) -> None:
    """Write a report (report.md, index.html, figures) for the experiments under DIR..."""
    from testbed.paper.report import paper_extras
    from testbed.report import make_report

    try:
        table_steps = tuple(int(s) for s in steps.split(",") if s.strip())
    except ValueError:
        raise click.BadParameter("expected comma-separated integers", param_hint="--steps") from None
    directory, claims = make_report(list(directories), out, paper_extras(table_steps), load_plugins().registry,
                                    note=click.echo, warn=_warn)
    for claim in claims:
        click.echo(f"{claim.verdict:>13}  {claim.title}")
    click.echo(f"report: {directory / 'report.md'} and {directory / 'index.html'}")


def _warn(line: str) -> None:
    click.echo(line, err=True)


@main.command()
@click.option("--quick", is_flag=True, help="A shrunk profile of every experiment: minutes, not hours.")
@click.option("--out", default="reproduction", show_default=True, help="Directory for the runs and the report.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker processes (default: one per core).")
@click.option("--suite", default=None, help="Directory of experiment files (default: the paper's suite, testbed/paper/suite).")
@click.option("--force", is_flag=True, help="Run again runs that are already done (by default an interrupted "
                                            "reproduction goes on where it stopped).")
@click.option("--dry-run", is_flag=True, help="Per experiment: runs done, resumable and to run, and an estimated time.")
@click.option("--executor", type=RegisteredName("executor"), default=None,
              help=f"{EXECUTOR_HELP} Default: local worker processes, as many as each experiment's workers.")
@ADDRESS_OPTION
@command_signals()
def reproduce(quick: bool, out: str, workers: int | None, suite: str | None, force: bool, dry_run: bool,
              executor: str | None, address: str | None) -> None:
    """Run the paper's suite (testbed/paper/suite) and write the report with the claims checked."""
    from testbed.paper.reproduce import QUICK_NOTE, SUITE, relative_cost, suite_configs
    from testbed.paper.reproduce import reproduce as run_suite

    plugins = load_plugins()
    plugins.require_healthy()
    check_address(plugins.registry, executor or "local", address)
    if dry_run:
        from testbed.experiment.dryrun import cost_table, duration, plan_states, summary_line, training_cost

        capacity = workers or os.cpu_count() or 1
        costs = []
        for config in sorted(suite_configs(plugins, Path(suite) if suite else SUITE, quick), key=relative_cost):
            states = plan_states(Sweep.of(config), plugins, Path(out) / "runs", force)
            costs.append((config.name, training_cost(states, plugins)))
            click.echo(f"{config.name}: {summary_line(states)}; about {duration(costs[-1][1].core_seconds / capacity)}")
        click.echo("")
        for line in cost_table(costs, capacity):
            click.echo(line)
        total = sum(cost.core_seconds for _, cost in costs) / capacity
        click.echo(f"estimated time left: {duration(total)} on {capacity} workers (training steps only, timed here "
                   "on one thread; diagnostics add to it: README, Reproducing the paper, has the full table)")
        return
    progress = PhaseProgress()

    def start(config) -> None:
        runs = len(config.optimizers) * len(config.train.seeds)
        click.echo(f"experiment {config.name}: {runs} runs, {config.train.steps} steps each")

    if quick:
        click.echo(QUICK_NOTE)

    runner = make_executor(plugins.registry, executor, workers, address) if executor else None
    try:
        outcomes, directory, claims = run_suite(plugins, out, quick=quick, workers=workers, on_experiment=start,
                                                report=progress, on_phase=progress.start,
                                                suite=Path(suite) if suite else SUITE, force=force,
                                                note=click.echo, warn=_warn, executor=runner)
    finally:
        progress.close()
        if runner is not None:
            runner.close()
    seconds = sum(o.wall_seconds for o in outcomes)
    click.echo(f"{len(outcomes)} experiments in {seconds:.0f} s")
    for claim in claims:
        click.echo(f"{claim.verdict:>13}  {claim.title}")
    click.echo(f"report: {directory / 'report.md'} and {directory / 'index.html'}")


@main.command()
@click.option("--budget", default=2.0, show_default=True, help="Seconds of timed steps per side and round.")
@click.option("--rounds", default=3, show_default=True, help="Alternating rounds; the median is reported.")
@click.option("--noise-samples", default=10_000, show_default=True,
              help="Minibatch gradients in the timed gradient-noise measurement (paper: 10,000).")
@click.option("--quick", is_flag=True, help="A fast smoke run: short budgets, small n, few noise samples.")
@click.option("--json", "json_path", default=None, help="Also write the numbers to this JSON file.")
@click.option("--flagship", "flagship", is_flag=False, flag_value=FLAGSHIP, default=None,
              metavar="[CONFIG]", help="Instead, time the whole `testbed run` of the flagship (default: "
              "examples/heavy_tail.yaml, in a checkout) in a temporary log directory: its wall time, "
              "and its runs' time split into training and each diagnostic.")
def bench(budget: float, rounds: int, noise_samples: int, quick: bool, json_path: str | None,
          flagship: str | None) -> None:
    """Time the engine against the direct formula (one thread), a Hessian and the gradient-noise
    measurement; or, with --flagship, the whole flagship command."""
    from testbed.paper.bench import format_bench, run_bench

    if flagship is not None:  # a subprocess: the other cases' imports and threads stay out of it
        results = time_flagship(flagship)
        click.echo(format_flagship(results))
    else:
        if quick:
            results = run_bench(budget=0.05, rounds=1, max_steps=5, noise_samples=20, context_lengths=(20, 80))
        else:
            results = run_bench(budget=budget, rounds=rounds, noise_samples=noise_samples)
        click.echo(format_bench(results))
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2))

