"""The leaderboard: every baseline's score on the suite (LEADERBOARD.md), and the shipped per-seed
baseline results, ``benchmark/<version>/baselines-<profile>.json``: per workload and baseline the
chosen hyperparameters, the trial scores and each scoring seed's eval curve, so that scoring a new
optimizer need not rerun the baselines. ``compare_records`` says where a rerun differs from them."""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from testbed.errors import ResultsError
from testbed.files.json_io import write_json
from testbed.report.render import writing
from testbed.score.records import Scored, SeedRun, Trial, trial_score
from testbed.score.scorecard import TAU_MAX, Scorecard, number, point_text
from testbed.score.stats import paired_comparison
from testbed.score.suite import BENCHMARK

FORMAT = 1  # of baselines-<profile>.json; a reader refuses another
RTOL = 1e-6  # a rerun differing by less than this (relative) is float rounding, not a difference


def shipped_path(version: str, profile: str, root: Path = BENCHMARK) -> Path:
    """Where the package (or another benchmark ``root``) keeps the baselines' per-seed results of
    ``profile``."""
    return Path(root) / version / f"baselines-{profile}.json"


def machine() -> str:
    """This machine in a few words: OS, processor, cores (the leaderboard's wall time ran there)."""
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


@dataclass(frozen=True)
class BaselineResults:
    """A baselines-<profile>.json: which suite and profile, how long it took where, and its records."""

    version: str
    profile: str
    wall_seconds: float  # the command that wrote it, start to end
    machine: str
    records: tuple[Scored, ...]
    run_seconds: float | None = None  # the runs' own wall times summed (cached ones too); None: not recorded
    executed: int | None = None  # runs the command executed; the others it found done (cached)
    cached: int | None = None

    def covers(self, workloads: Iterable[str], labels: Iterable[str]) -> bool:
        """Whether it has every (workload, label) asked for."""
        have = {(r.workload, r.label) for r in self.records}
        return all((w, label) in have for w in workloads for label in labels)


# ------------------------------------------------------------------ JSON
def record_json(record: Scored) -> dict[str, Any]:
    """One record as plain JSON data (inf becomes null, as strict JSON has no inf)."""
    return {"optimizer": record.optimizer, "chosen": dict(record.chosen), "at_edge": record.at_edge,
            "sensitivity": record.sensitivity,
            "trials": [{"point": dict(t.point), "score": t.score} for t in record.trials],
            "seeds": [{"seed": r.seed, "status": r.status, "eval_steps": list(r.eval_steps),
                       "eval_losses": list(r.eval_losses), "seconds": r.seconds, "steps_done": r.steps_done,
                       "gradient_evaluations": r.gradient_evaluations} for r in record.runs]}


def write_baselines(path: str | Path, results: BaselineResults) -> Path:
    """Write ``results`` to ``path`` (atomically); returns the path."""
    path = Path(path)
    workloads: dict[str, dict[str, Any]] = {}
    for record in results.records:
        workloads.setdefault(record.workload, {})[record.label] = record_json(record)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"format": FORMAT, "suite": results.version, "profile": results.profile,
                      "wall_seconds": results.wall_seconds, "machine": results.machine,
                      "run_seconds": results.run_seconds, "executed": results.executed, "cached": results.cached,
                      "workloads": workloads})
    return path


def read_baselines(path: str | Path) -> BaselineResults:
    """The baseline results of ``path``; a file that is not one is a ResultsError naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ResultsError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ResultsError(f"{path} is not JSON: {exc}") from None
    try:
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, this testbed reads {FORMAT}")
        records = tuple(_record(workload, label, entry) for workload, labels in data["workloads"].items()
                        for label, entry in labels.items())
        return BaselineResults(str(data["suite"]), str(data["profile"]), float(data["wall_seconds"]),
                               str(data["machine"]), records, _optional(data.get("run_seconds"), float),
                               _optional(data.get("executed"), int), _optional(data.get("cached"), int))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ResultsError(f"{path} is not a baseline results file: {what}") from None


def _record(workload: str, label: str, entry: dict[str, Any]) -> Scored:
    runs = tuple(SeedRun(int(s["seed"]), str(s["status"]), tuple(int(x) for x in s["eval_steps"]),
                         tuple(_loss(x) for x in s["eval_losses"]), float(s["seconds"]), int(s["steps_done"]),
                         int(s["gradient_evaluations"])) for s in entry["seeds"])
    trials = tuple(Trial(dict(t["point"]), trial_score(t["score"])) for t in entry["trials"])
    return Scored(workload, label, dict(entry["chosen"]), bool(entry["at_edge"]), float(entry["sensitivity"]),
                  trials, runs, str(entry.get("optimizer", "")))


def _optional(value: Any, kind: type) -> Any:
    """``kind(value)``, or None for a field an older file does not have."""
    return None if value is None else kind(value)


def _loss(value: Any) -> float:
    """An eval loss as written: null stands for a non-finite one."""
    return math.inf if value is None else float(value)


def shipped_baselines(version: str, profile: str, root: Path = BENCHMARK) -> BaselineResults | None:
    """The package's (or ``root``'s) baseline results of ``profile``, if it ships them."""
    path = shipped_path(version, profile, root)
    return read_baselines(path) if path.is_file() else None


# ------------------------------------------------------------------ rerun against shipped
def compare_records(shipped: Sequence[Scored], rerun: Sequence[Scored], rtol: float = RTOL) -> list[str]:
    """Where ``rerun`` differs from ``shipped`` beyond float rounding (relative ``rtol``): one line per
    (workload, optimizer) and kind of difference. Wall times are not compared (they are the machine's)."""
    theirs = {(r.workload, r.label): r for r in shipped}
    lines = []
    for record in rerun:
        old = theirs.get((record.workload, record.label))
        name = f"{record.workload}/{record.label}"
        if old is None:
            lines.append(f"{name}: not in the shipped results")
            continue
        lines += [f"{name}: {difference}" for difference in record_differences(old, record, rtol)]
    return lines


def record_differences(old: Scored, new: Scored, rtol: float = RTOL) -> list[str]:
    """What differs between two records of one optimizer on one workload (shipped, then rerun)."""
    found = []
    if not _same_point(old.chosen, new.chosen, rtol):
        found.append(f"chosen {point_text(old.chosen)} shipped, {point_text(new.chosen)} rerun")
    old_trials = [(t.point, t.score) for t in old.trials]
    new_trials = [(t.point, t.score) for t in new.trials]
    if len(old_trials) != len(new_trials) or not all(
            _same_point(a[0], b[0], rtol) and _close(a[1], b[1], rtol) for a, b in zip(old_trials, new_trials)):
        found.append("trial scores differ")
    runs = {r.seed: r for r in old.runs}
    for run in new.runs:
        before = runs.get(run.seed)
        if before is None:
            found.append(f"seed {run.seed}: not in the shipped results")
        elif (problem := run_difference(before, run, rtol)) is not None:
            found.append(f"seed {run.seed}: {problem}")
    return found


def run_difference(old: SeedRun, new: SeedRun, rtol: float = RTOL) -> str | None:
    """The first difference between two runs of one seed, or None when they agree to ``rtol``."""
    for field in ("status", "steps_done", "gradient_evaluations", "eval_steps"):
        if getattr(old, field) != getattr(new, field):
            return f"{field.replace('_', ' ')} {getattr(old, field)} shipped, {getattr(new, field)} rerun"
    for step, a, b in zip(old.eval_steps, old.eval_losses, new.eval_losses):
        if not _close(a, b, rtol):
            return f"eval loss at step {step}: {a!r} shipped, {b!r} rerun"
    return None


def _close(a: float, b: float, rtol: float) -> bool:
    if math.isinf(a) or math.isinf(b) or math.isnan(a) or math.isnan(b):
        return (math.isinf(a) and math.isinf(b)) or (math.isnan(a) and math.isnan(b))
    return math.isclose(a, b, rel_tol=rtol, abs_tol=0.0)


def _same_point(a: dict[str, Any], b: dict[str, Any], rtol: float) -> bool:
    if a.keys() != b.keys():
        return False
    return all(_close(float(a[k]), float(b[k]), rtol) if isinstance(a[k], (int, float)) and
               isinstance(b[k], (int, float)) else a[k] == b[k] for k in a)


# ------------------------------------------------------------------ LEADERBOARD.md
def ranking_rows(card: Scorecard) -> list[list[str]]:
    """The leaderboard's rows: rank, optimizer, score, then its median steps to target per workload."""
    rows = []
    for rank, label, score in card.ranks():
        steps = [number(card.times[label].get(w.name, math.inf)) for w in card.workloads]
        rows.append([str(rank), label, f"{score:.3f}", *steps])
    return rows


def heavy_tail_lines(card: Scorecard, heavy: Sequence[str], better: str = "adam", worse: str = "sgd") -> list[str]:
    """The paper's finding checked on the heavy-tailed workloads: ``better`` against ``worse``,
    paired over seeds on the final loss, and their places in the ranking."""
    lines = []
    for workload in heavy:
        ours, theirs = card.seeds.get((workload, better)), card.seeds.get((workload, worse))
        if not ours or not theirs:
            continue
        comparison = paired_comparison(ours, theirs, "final_loss")
        lines.append(f"{workload}: {better} against {worse}: {comparison.verdict} (final loss ratio "
                     f"x{number(comparison.ratio)}, 95% CI x{number(math.exp(comparison.ci[0]))}-"
                     f"x{number(math.exp(comparison.ci[1]))}); steps to target {better} "
                     f"{number(card.times.get(better, {}).get(workload, math.inf))}, {worse} "
                     f"{number(card.times.get(worse, {}).get(workload, math.inf))}")
    return lines


def leaderboard_markdown(card: Scorecard, results: BaselineResults, heavy: Sequence[str] = (),
                         figures: Sequence[tuple[str, str]] = ()) -> str:
    """LEADERBOARD.md: the ranking by score with each optimizer's steps to target per workload, the
    heavy-tailed check, what regenerating it cost on which machine, and its ``figures`` ((path
    relative to the file, caption), as write_scorecard returns them)."""
    header = ["rank", "optimizer", "score", *(w.name for w in card.workloads)]
    lines = [f"# Leaderboard: suite {card.version}, {card.profile} profile", ""]
    if card.note:
        lines += [f"> {card.note}", ""]
    lines += [f"Score: the area under the performance profile on steps to target (tau <= {TAU_MAX:g}), normalized "
              "to [0, 1]. "
              "Columns: median steps to target over the scoring seeds ('never': not reached by most seeds).", "",
              "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in ranking_rows(card)]
    lines += ["", "Targets: " + ", ".join(f"{w.name} {w.target:g}" for w in card.workloads) + "."]
    checks = heavy_tail_lines(card, heavy)
    if checks:
        lines += ["", "Heavy-tailed workloads (the paper: Adam beats SGD there):", ""]
        lines += [f"- {line}" for line in checks]
    lines += ["", cost_line(card, results), ""]
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{caption}]({path})\n\n*{caption}*\n" for path, caption in figures]
    return "\n".join(lines)


def cost_line(card: Scorecard, results: BaselineResults) -> str:
    """What regenerating the leaderboard took: the command's wall time, and (when recorded) how many
    runs it executed or found done, and what computing every run cost (their own times summed)."""
    command = f"`testbed score --baselines-only --profile {card.profile} --suite {card.version}`"
    took = f"{results.wall_seconds:.0f} s" if results.wall_seconds < 60 else f"{results.wall_seconds / 60:.1f} minutes"
    line = f"Regenerated by {command} in {took} on {results.machine}"
    if results.executed is None or results.cached is None:
        return line + "."
    line += f": {results.executed} runs executed, {results.cached} found done"
    if results.run_seconds is not None:
        line += (f". The {results.executed + results.cached} runs' own wall times sum to "
                 f"{results.run_seconds / 3600:.2f} core-hours")
    return line + "."
