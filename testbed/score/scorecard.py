"""The scorecard of one candidate: per workload and optimizer the metrics table, the candidate's
paired verdict against each reference, the performance profile and score of every optimizer scored;
written as scorecard.md, index.html and figures/*.png, and summed up in console lines."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from testbed.files.safe_paths import safe_filename
from testbed.report.render import Claims, Section, to_html, to_markdown, writing
from testbed.score import figures
from testbed.score.metrics import SeedMetrics, seed_metrics
from testbed.score.records import Scored, Scores
from testbed.score.stats import paired_comparison, performance_profile, profile_score, summarize

FIGURES_DIR = "figures"  # under the scorecard's directory: the pages refer to figures/<name>.png
TAU_MAX = 4.0  # AlgoPerf's: a workload solved more than 4x slower than the best counts as not solved


@dataclass(frozen=True)
class WorkloadInfo:
    """What the scorecard says of a workload besides its records: its name, title and target."""

    name: str
    title: str
    target: float


@dataclass
class Scorecard:
    """A candidate's score against its references on a suite's workloads (see ``build_scorecard``)."""

    version: str
    profile: str
    candidate: str | None  # None: no candidate, every optimizer alike (the leaderboard)
    references: list[str]
    workloads: list[WorkloadInfo]
    scores: Scores
    seeds: dict[tuple[str, str], list[SeedMetrics]] = field(default_factory=dict)  # (workload, label)
    summaries: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    verdicts: dict[tuple[str, str], Any] = field(default_factory=dict)  # (workload, reference) -> Comparison
    times: dict[str, dict[str, float]] = field(default_factory=dict)  # label -> workload -> median steps
    profile_scores: dict[str, float] = field(default_factory=dict)
    note: str | None = None  # the profile's caveat, said first (the quick profile's smoke-test line)

    @property
    def labels(self) -> list[str]:
        """The candidate, its references, then every other optimizer scored."""
        return list(dict.fromkeys([*self.compared, *self.scores.labels]))

    @property
    def compared(self) -> list[str]:
        """The candidate (if any) and its references."""
        return [self.candidate, *self.references] if self.candidate else list(self.references)

    def records(self, workload: str) -> list[Scored]:
        """The records of ``workload``, candidate and references first."""
        return [r for label in self.labels if (r := self.scores.get(workload, label)) is not None]

    def ranking(self) -> list[tuple[str, float]]:
        """Every optimizer with its score, best first (ties by label)."""
        return sorted(self.profile_scores.items(), key=lambda item: (-item[1], item[0]))

    def ranks(self) -> list[tuple[int, str, float]]:
        """The ranking with each optimizer's rank; equal scores share a rank (1, 2, 2, 4)."""
        ranking = self.ranking()
        scores = [score for _, score in ranking]
        return [(scores.index(score) + 1, label, score) for label, score in ranking]


def build_scorecard(version: str, profile: str, candidate: str | None, references: Sequence[str],
                    workloads: Sequence[WorkloadInfo], scores: Scores, note: str | None = None) -> Scorecard:
    """Compute every number of the scorecard from the records: each optimizer's per-seed metrics and
    their summary per workload, the candidate's paired comparison with each reference on the final
    loss, and the performance profile score of every optimizer over the workloads."""
    card = Scorecard(version, profile, candidate, list(references), list(workloads), scores, note=note)
    for workload in card.workloads:
        for record in card.records(workload.name):
            metrics = [seed_metrics(run, workload.target) for run in record.runs]
            card.seeds[(workload.name, record.label)] = metrics
            card.summaries[(workload.name, record.label)] = summarize(metrics)
        ours = card.seeds.get((workload.name, candidate)) if candidate else None
        for reference in card.references:
            theirs = card.seeds.get((workload.name, reference))
            if ours and theirs:
                card.verdicts[(workload.name, reference)] = paired_comparison(ours, theirs, "final_loss")
    card.times = {label: {w.name: card.summaries[(w.name, label)]["steps_to_target_median"]
                          for w in card.workloads if (w.name, label) in card.summaries}
                  for label in card.labels}
    card.times = {label: times for label, times in card.times.items() if len(times) == len(card.workloads)}
    card.profile_scores = profile_score(card.times, tau_max=TAU_MAX) if card.times else {}
    return card


# ------------------------------------------------------------------ text
def number(value: float, digits: int = 3, infinite: str = "never") -> str:
    """A table cell: ``infinite`` for inf (default ``never``: a target not reached), else ``digits``
    significant digits."""
    if value is None:
        return "-"
    if math.isinf(value):
        return infinite if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def loss(value: float) -> str:
    """A loss cell: inf is a diverged or failed run's loss."""
    return number(value, infinite="inf")


def point_text(point: dict[str, Any]) -> str:
    """A hyperparameter point as ``lr=0.01, rho=0.05``."""
    return ", ".join(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in point.items())


def verdict_text(comparison: Any, reference: str) -> str:
    """``better than adam (x0.42, 95% CI x0.30-x0.61)``: the verdict and the geometric mean ratio of
    final losses over seeds with its interval."""
    low, high = comparison.ci
    ratio = f"x{number(comparison.ratio)}, 95% CI x{number(math.exp(low))}-x{number(math.exp(high))}"
    wording = {"better": f"better than {reference}", "worse": f"worse than {reference}"}
    return f"{wording.get(comparison.verdict, f'{comparison.verdict} vs {reference}')} ({ratio})"


def console_lines(card: Scorecard) -> list[str]:
    """The console scorecard: the profile's caveat, one line per workload (the verdict against each
    reference and the steps to target of each), then the scores."""
    lines = [card.note] if card.note else []
    width = max(len(w.name) for w in card.workloads) if card.workloads else 0
    for workload in card.workloads:
        verdicts = [verdict_text(card.verdicts[(workload.name, ref)], ref) for ref in card.references
                    if (workload.name, ref) in card.verdicts]
        steps = ", ".join(f"{label} {number(card.summaries[(workload.name, label)]['steps_to_target_median'])}"
                          for label in card.compared if (workload.name, label) in card.summaries)
        said = f"{'; '.join(verdicts)}; " if verdicts else ""  # no candidate (the leaderboard): no verdicts
        lines.append(f"{workload.name:<{width}}  {said}steps to target: {steps}")
    ranking = ", ".join(f"{label} {score:.3f}" for label, score in card.ranking())
    lines.append(f"score (area under the performance profile, tau <= {TAU_MAX:g}): {ranking or '-'}")
    return lines


def metrics_table(card: Scorecard, workload: WorkloadInfo) -> tuple[list[str], list[list[str]]]:
    """One row per optimizer of ``workload``: the chosen hyperparameters and the metrics over seeds."""
    header = ["optimizer", "chosen", "median final loss", "mean final loss [95% CI]", "steps to target",
              "gradient evals to target", "seconds to target", "lr sensitivity", "diverged", "spikes"]
    rows = []
    for record in card.records(workload.name):
        summary = card.summaries[(workload.name, record.label)]
        low, high = summary["final_loss_ci"]
        edge = " (at the edge!)" if record.at_edge else ""
        rows.append([record.label, point_text(record.chosen) + edge, loss(summary["final_loss_median"]),
                     f"{loss(summary['final_loss_mean'])} [{loss(low)}, {loss(high)}]",
                     number(summary["steps_to_target_median"]), number(summary["evals_to_target_median"]),
                     number(summary["seconds_to_target_median"]), f"{record.sensitivity:.2f}",
                     f"{summary['divergences']}/{len(record.runs)}",
                     str(summary["spikes"])])
    return header, rows


def verdict_table(card: Scorecard, workload: WorkloadInfo) -> tuple[list[str], list[list[str]]]:
    """The candidate against each reference on ``workload``: paired over seeds, on the final loss."""
    header = ["reference", "verdict", f"{card.candidate} / reference (geometric mean) [95% CI]", "Wilcoxon p", "seeds"]
    rows = []
    for reference in card.references:
        comparison = card.verdicts.get((workload.name, reference))
        if comparison is None:
            continue
        low, high = comparison.ci
        rows.append([reference, comparison.verdict,
                     f"{number(comparison.ratio)} [{number(math.exp(low))}, {number(math.exp(high))}]",
                     number(comparison.wilcoxon_p), str(len(comparison.seeds))])
    return header, rows


def edge_warnings(card: Scorecard) -> list[str]:
    """A line per optimizer and workload whose chosen lr sits at the edge of its search space."""
    return [f"Warning: {r.label} on {w.name}: the chosen {point_text(r.chosen)} is at the edge of its search "
            "space; a wider range may do better." for w in card.workloads for r in card.records(w.name) if r.at_edge]


# ------------------------------------------------------------------ files
def sections(card: Scorecard, out: Path) -> list[Section]:
    """The scorecard's sections, drawing their figures under ``out``/figures."""
    palette = figures.colours(card.labels)
    overview = Section("Score")
    overview.paragraphs.append(scope_paragraph(card))
    overview.tables.append((["rank", "optimizer", "score"],
                            [[str(rank), label, f"{score:.3f}"] for rank, label, score in card.ranks()]))
    overview.paragraphs += edge_warnings(card)
    curves = profile_curves(card)
    path = figures.profile_figure(curves, card.profile_scores, TAU_MAX, out / FIGURES_DIR / "performance-profile.png")
    if path is not None:
        overview.figures.append((relative(path, out), "Performance profile on steps to target (Dolan-More); the "
                                 f"score is the area under each curve on [1, {TAU_MAX:g}], normalized"))
    panels = [(w.title, card.records(w.name)) for w in card.workloads]
    path = figures.sensitivity_figure(panels, palette, out / FIGURES_DIR / "lr-sensitivity.png")
    if path is not None:
        overview.figures.append((relative(path, out), "Tuning trials: score against the learning rate, per workload"))
    result = [overview]
    for workload in card.workloads:
        section = Section(f"{workload.title} ({workload.name})")
        section.paragraphs.append(f"Target eval loss {workload.target:g}.")
        if card.candidate is not None:  # the leaderboard compares no candidate: no verdict table
            section.tables.append(verdict_table(card, workload))
        section.tables.append(metrics_table(card, workload))
        path = figures.loss_figure(workload.title, card.records(workload.name), workload.target, palette,
                                   out / FIGURES_DIR / f"loss-{safe_filename(workload.name)}.png")
        if path is not None:
            section.figures.append((relative(path, out), f"{workload.title}: eval loss, median over scoring seeds "
                                    "(band: min-max), log scale"))
        result.append(section)
    return result


def scope_paragraph(card: Scorecard) -> str:
    """What was scored against what, and how a verdict is reached."""
    scored = f"{len(card.labels)} optimizers" if card.candidate is None else \
        f"{card.candidate} against {', '.join(card.references) or 'no reference'}"
    return (f"Suite {card.version}, {card.profile} profile: {scored} on {len(card.workloads)} workloads. Verdicts "
            "compare final losses seed by seed (same initialization and prompts): 'better' or 'worse' only when "
            "the bootstrap 95% interval of the mean log ratio excludes 0 and the exact signed-rank test gives "
            "p < 0.05 (so six seeds at least). Score: the area under the performance "
            f"profile on steps to target for tau in [1, {TAU_MAX:g}], normalized to [0, 1].")


def profile_curves(card: Scorecard, points: int = 400) -> dict[str, tuple[list[float], list[float]]]:
    """rho(tau) of every optimizer on a fine grid of tau in [1, TAU_MAX], for the figure."""
    if not card.times:
        return {}
    taus = [1.0 + (TAU_MAX - 1.0) * i / (points - 1) for i in range(points)]
    return {label: (taus, list(rhos)) for label, rhos in performance_profile(card.times, taus).items()}


def relative(path: Path, out: Path) -> str:
    """How the pages refer to a file under ``out``."""
    return str(path.relative_to(out))


def write_scorecard(card: Scorecard, out: str | Path) -> list[tuple[str, str]]:
    """scorecard.md, index.html and figures/*.png under ``out``; returns the figures drawn, as
    (path relative to ``out``, caption)."""
    out = Path(out)
    with writing(out):
        (out / FIGURES_DIR).mkdir(parents=True, exist_ok=True)
    title = f"testbed score: {card.candidate or 'every baseline'} ({card.version}, {card.profile} profile)"
    parts = sections(card, out)
    preface = [card.note] if card.note else []
    # The caveat comes first, before the title: a quick profile's page must not read as a verdict.
    markdown = (f"> {card.note}\n\n" if card.note else "") + to_markdown(title, parts, Claims())
    with writing(out):
        (out / "scorecard.md").write_text(markdown, encoding="utf-8")
        (out / "index.html").write_text(to_html(title, parts, Claims(), preface), encoding="utf-8")
    return [figure for part in parts for figure in part.figures]
