"""`testbed score` as a library call: what to run (the candidate, the references it still needs, or
every baseline), the protocol run under ``out``/runs, then the scorecard (and with ``baselines_only``
the leaderboard and the per-seed baseline results) written under ``out``."""

from __future__ import annotations

import copy
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from testbed.engine.loop import Report
from testbed.errors import ConfigError
from testbed.experiment.config import apply_overrides
from testbed.experiment.executors.base import Executor
from testbed.experiment.runner import Phase
from testbed.plugins import Plugins
from testbed.report.render import writing
from testbed.score.candidates import Candidate, baselines, load_candidate, missing_baselines
from testbed.score.leaderboard import (BaselineResults, compare_records, leaderboard_markdown, machine,
                                       shipped_baselines, shipped_path, write_baselines)
from testbed.score.protocol import run_protocol
from testbed.score.records import Scored, Scores, from_score_data
from testbed.score.scorecard import FIGURES_DIR, Scorecard, WorkloadInfo, build_scorecard, write_scorecard
from testbed.score.suite import BENCHMARK, Suite, load_suite

DEFAULT_REFERENCES = ("adam", "sgdm")
LEADERBOARD_FILE = "LEADERBOARD.md"


@dataclass(frozen=True)
class ScoreRequest:
    """What a `testbed score` call asks for (its command line, validated by ``plan``)."""

    optimizer: str | None  # a registered name, a baseline's label or a YAML file; None with baselines_only
    profile: str = "quick"
    workloads: Sequence[str] | None = None  # None: every workload of the suite
    against: Sequence[str] = DEFAULT_REFERENCES
    out: Path = Path("score")
    overrides: Sequence[str] = ()  # --set KEY=VALUE on every workload's config
    baselines_only: bool = False
    rerun_baselines: bool = False
    ship: bool = False  # with baselines_only: also write the package's shipped files
    version: str | None = None  # the suite version; None: the latest under root
    root: Path = BENCHMARK  # where <version>/suite.yaml, baselines.yaml and the shipped results lie


@dataclass
class Plan:
    """What will run: the suite (selected, overridden), the candidates to run, and the records of
    references taken from the shipped baseline results instead of running them."""

    suite: Suite
    profile: str
    candidate: Candidate | None
    references: list[Candidate]
    to_run: list[Candidate]
    shipped: BaselineResults | None  # the shipped results (used, or compared with a rerun)
    from_shipped: list[Scored] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what a user should know before the runs
    root: Path = BENCHMARK  # the benchmark directory the suite came from (its shipped results lie there)


@dataclass
class ScoreOutcome:
    """What a score came to: its scorecard, where it was written, how long it took, and more."""

    card: Scorecard
    out: Path
    wall_seconds: float
    status: str  # complete | interrupted (as the protocol's runs)
    executed: int = 0  # runs executed by this call
    cached: int = 0  # runs found done and not run again
    differences: list[str] | None = None  # --rerun-baselines: where the rerun differs from the shipped results
    written: list[Path] = field(default_factory=list)  # the leaderboard's files


def plan(request: ScoreRequest, plugins: Plugins) -> Plan:
    """Validate the request before anything runs: suite, profile, workloads, the candidate and the
    references (by baseline label), and which references the shipped results cover."""
    suite = load_suite(request.version, request.root).select(list(request.workloads) if request.workloads else None)
    suite.profile(request.profile)
    suite = with_overrides(suite, request.overrides)
    registry = plugins.registry
    known = {c.label: c for c in baselines(suite.version, registry, request.root)}
    notes = missing_baselines(suite.version, registry, request.root)
    if request.baselines_only:
        if request.optimizer is not None:
            raise ConfigError("--baselines-only scores every baseline: give no OPTIMIZER")
        candidate, references = None, list(known.values())
    else:
        if request.optimizer is None:
            raise ConfigError("missing OPTIMIZER: a registered optimizer name or a YAML file "
                              "(or --baselines-only for the leaderboard)")
        candidate = known.get(request.optimizer) or load_candidate(request.optimizer, registry)
        references = [reference(label, known) for label in request.against if label != candidate.label]
        if candidate.label in known and known[candidate.label] != candidate:
            raise ConfigError(f"the candidate's label {candidate.label!r} is a baseline's: give it another "
                              "label (the label key of its YAML file)")
    if request.ship and (not request.baselines_only or request.workloads or request.overrides):
        raise ConfigError("--ship goes with --baselines-only on the whole suite, without --set: the shipped "
                          "results are the suite's own")
    shipped = None if request.overrides else shipped_baselines(suite.version, request.profile, request.root)
    from_shipped: list[Scored] = []
    run_references = references
    names = [w.name for w in suite.workloads]
    if shipped is not None and not request.rerun_baselines and not request.baselines_only:
        covered = [c for c in references if shipped.covers(names, [c.label])]
        from_shipped = [r for r in shipped.records if r.workload in names and r.label in {c.label for c in covered}]
        run_references = [c for c in references if c not in covered]
        if covered:
            shipped_file = shipped_path(suite.version, request.profile, request.root).name
            notes.append(f"{', '.join(c.label for c in covered)}: the shipped per-seed results of "
                         f"{shipped_file} (--rerun-baselines runs them here)")
    if request.rerun_baselines and shipped is None:
        notes.append(f"--rerun-baselines: no shipped results of the {request.profile} profile to compare with")
    to_run = ([candidate] if candidate is not None else []) + run_references
    return Plan(suite, request.profile, candidate, references, to_run, shipped, from_shipped, notes, request.root)


def reference(label: str, known: dict[str, Candidate]) -> Candidate:
    """The baseline called ``label``; an unknown one is a ConfigError naming the baselines."""
    if label not in known:
        raise ConfigError(f"unknown reference {label!r} in --against; baselines: {', '.join(known)}")
    return known[label]


def with_overrides(suite: Suite, overrides: Sequence[str]) -> Suite:
    """The suite with ``--set KEY=VALUE`` applied to every workload's config (validated when the
    protocol parses each experiment)."""
    if not overrides:
        return suite
    workloads = tuple(replace(w, base=apply_overrides(copy.deepcopy(dict(w.base)), list(overrides)))
                      for w in suite.workloads)
    return Suite(suite.version, workloads, suite.profiles)


def workload_infos(suite: Suite, profile: str) -> list[WorkloadInfo]:
    """What the scorecard says of each workload, with ``profile``'s target."""
    return [WorkloadInfo(w.name, w.title, w.target_for(profile)) for w in suite.workloads]


def run_score(request: ScoreRequest, plugins: Plugins, executor: Executor, chosen: Plan | None = None,
              report: Report = lambda event: None, on_phase: Callable[[Phase], None] = lambda phase: None) -> ScoreOutcome:
    """Run what ``chosen`` (default: ``plan(request)``) needs under ``request.out``/runs (runs already
    done are not run again: an interrupted score goes on where it stopped), then write the scorecard;
    with ``baselines_only`` also LEADERBOARD.md and baselines-<profile>.json under ``out`` (and, with
    ``ship``, in the package)."""
    chosen = chosen or plan(request, plugins)
    out = Path(request.out)
    started = time.perf_counter()
    data = run_protocol(chosen.suite, chosen.profile, chosen.to_run, plugins, out, executor, report, on_phase)
    wall = time.perf_counter() - started
    scores = Scores().add(from_score_data(data)).add(chosen.from_shipped)
    note = chosen.suite.profile(chosen.profile).note
    candidate = chosen.candidate.label if chosen.candidate else None
    card = build_scorecard(chosen.suite.version, chosen.profile, candidate, [c.label for c in chosen.references],
                           workload_infos(chosen.suite, chosen.profile), scores, note=note)
    outcome = ScoreOutcome(card, out, wall, data.status, data.executed, data.cached)
    if data.status != "complete":  # an interrupted score writes no scorecard: the same command finishes it
        return outcome
    drawn = write_scorecard(card, out)
    if request.rerun_baselines:
        labels = {c.label for c in chosen.references}
        rerun = [r for r in scores.records.values() if r.label in labels]
        outcome.differences = compare_records(chosen.shipped.records, rerun) if chosen.shipped else None
    if request.baselines_only:
        results = BaselineResults(chosen.suite.version, chosen.profile, wall, machine(),
                                  tuple(scores.records.values()), data.run_seconds, data.executed, data.cached)
        outcome.written = write_leaderboard(chosen, card, results, out, drawn, request.ship)
    return outcome


def write_leaderboard(chosen: Plan, card: Scorecard, results: BaselineResults, out: Path,
                      figures: Sequence[tuple[str, str]], ship: bool) -> list[Path]:
    """LEADERBOARD.md, baselines-<profile>.json and the ``figures`` (drawn under ``out``) under
    ``out``, and with ``ship`` also beside the suite in the package: what `testbed score` then uses
    instead of rerunning the baselines."""
    heavy = [w.name for w in chosen.suite.workloads if w.heavy_tailed]
    text = leaderboard_markdown(card, results, heavy, figures)
    written = write_board(out, results, text)
    if ship:
        written += ship_leaderboard(shipped_path(chosen.suite.version, chosen.profile, chosen.root).parent,
                                    results, text, out, figures)
    return written


def write_board(directory: Path, results: BaselineResults, text: str) -> list[Path]:
    """baselines-<profile>.json and LEADERBOARD.md (``text``) in ``directory``; returns their paths."""
    written = [write_baselines(directory / f"baselines-{results.profile}.json", results)]
    with writing(directory / LEADERBOARD_FILE):
        (directory / LEADERBOARD_FILE).write_text(text, encoding="utf-8")
    return [*written, directory / LEADERBOARD_FILE]


def ship_leaderboard(directory: Path, results: BaselineResults, text: str, out: Path,
                     figures: Sequence[tuple[str, str]]) -> list[Path]:
    """Copy the leaderboard, its per-seed results and its figures from ``out`` into the benchmark's
    ``directory`` (the figures keep their paths relative to LEADERBOARD.md). Figures of an earlier
    leaderboard there that this one did not draw are removed: what lies there is one leaderboard."""
    written = write_board(directory, results, text)
    keep = {directory / path for path, _ in figures}
    with writing(directory / FIGURES_DIR):
        (directory / FIGURES_DIR).mkdir(exist_ok=True)
        for stale in (directory / FIGURES_DIR).glob("*.png"):
            if stale not in keep:
                stale.unlink()
        for path, _ in figures:
            shutil.copyfile(out / path, directory / path)
            written.append(directory / path)
    return written
