"""`testbed report`: turn experiment directories into a self-contained report directory.

For every experiment: a results table, the eval-loss curves and the figures its diagnostics declare
when they register (testbed.Plot); for every sweep: its best configurations and learning-rate
sensitivity. Generic: it names no optimizer, task or diagnostic. A layer above adds its own
paragraphs, claims, columns and tables through ``ReportExtras`` (testbed/paper/ adds the paper's).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from testbed.diagnostics import Plot
from testbed.errors import ResultsError
from testbed.files.safe_paths import path_under, safe_filename
from testbed.plugins.registry import Registry
from testbed.report import figures, sweeps
from testbed.report.data import Experiment
from testbed.report.extras import Column, ReportExtras
from testbed.report.load import find_experiments
from testbed.report.render import Claim, Claims, Section, write, writing

LOSS_CAPTION = "Eval loss on the fixed batch, mean over seeds (band: range over seeds), log scale"


def _results_table(experiment: Experiment, columns: Sequence[Column] = ()) -> tuple[list[str], list[list[str]]]:
    header = ["optimizer", "lr", "runs", "diverged", "final eval loss (mean)", *(c.header for c in columns)]
    rows = []
    for label in experiment.labels:
        runs = experiment.runs_of(label)
        final = experiment.mean_final(label)
        lrs = ", ".join(dict.fromkeys(f"{r.lr:g}" for r in runs if r.lr is not None)) or "-"
        rows.append([label, lrs, str(len(runs)), str(sum(r.status == "diverged" for r in runs)),
                     "-" if final is None else f"{final:.4g}", *(c.cell(experiment, label) for c in columns)])
    return header, rows


def divergence_paragraph(experiment: Experiment) -> str | None:
    """Where runs diverged and on what, and the steps clipping zeroed (a float32-overflowing norm)."""
    parts = []
    for label in experiment.labels:
        runs = experiment.runs_of(label)
        diverged = [r for r in runs if r.status == "diverged" and r.diverged_at is not None]
        if diverged:
            on = Counter(r.diverged_on or "unrecorded" for r in diverged)
            steps = sorted(r.diverged_at for r in diverged)
            parts.append(f"{label} {len(diverged)} of {len(runs)} (steps {steps[0]}-{steps[-1]}; non-finite "
                         + ", ".join(f"{what} {count}" for what, count in sorted(on.items())) + ")")
    zeroed = [r for r in experiment.runs if r.zeroed_steps]
    text = f"Diverged runs: {'; '.join(parts)}." if parts else ""
    if zeroed:
        text += (f" {sum(len(r.zeroed_steps) for r in zeroed)} steps in {len(zeroed)} run(s) had a gradient norm "
                 "that overflowed float32 with finite entries: clipping made them zero steps, not divergence.")
    return text.strip() or None


def unfinished_paragraph(experiment: Experiment) -> str | None:
    """The runs that did not finish (interrupted or failed) and why: they are in no loss or figure."""
    runs = [r for r in experiment.runs if r.unfinished]
    if not runs:
        return None
    # An error may span lines (a traceback's message): one line each, for the console and tables.
    described = [f"{r.label} seed {r.seed} {r.status}" + (f" ({' '.join(r.error.split())})" if r.error else "")
                 for r in runs]
    text = f"Not finished, so in no loss or figure: {'; '.join(described)}."
    if experiment.status == "interrupted":
        text += " The experiment was interrupted: the same command again finishes it."
    return text


@dataclass
class FigureFiles:
    """Names the report's figure files under ``out``/figures: safe whatever the text, and never one
    name twice (no figure may overwrite another, whatever the experiments and diagnostics are named)."""

    out: Path
    taken: set[str] = field(default_factory=set)

    def path(self, name: str) -> Path:
        """A fresh file for the figure ``name`` (.png added)."""
        stem, copy = safe_filename(name), 1
        while stem in self.taken:
            copy += 1
            stem = f"{safe_filename(name)}-{copy}"
        self.taken.add(stem)
        return path_under(self.out / "figures", f"{stem}.png")

    def relative(self, path: Path) -> str:
        """How the report's pages refer to a figure file."""
        return str(path.relative_to(self.out))


def experiment_section(experiment: Experiment, files: FigureFiles, stem: str, plots: Mapping[str, Sequence[Plot]],
                       extras: ReportExtras = ReportExtras()) -> Section:
    """The experiment's tables, paragraphs and figures: the eval loss, then the plots each of its
    diagnostics declares (``plots``: diagnostic name -> declarations; a name missing from it is a
    diagnostic whose plugin is not installed, said in a paragraph). Figure files are named
    ``stem``-loss.png and ``stem``-<diagnostic>-<tag>.png."""
    section = Section(experiment.name)
    task = experiment.config["task"]
    model = experiment.config["model"]
    section.paragraphs.append(
        f"Task {task['name']} (d={task['d']}, n={task['n']}, options {task.get('options') or {}}); "
        f"model L={model['layers']}, {model['parameterization']}, {model['attention']} attention; "
        f"{experiment.config['train']['steps']} steps, batch {experiment.config['train']['batch_size']}, "
        f"seeds {experiment.config['train']['seeds']}.")
    section.tables.append(_results_table(experiment, extras.columns))
    section.paragraphs += [p for p in (divergence_paragraph(experiment), unfinished_paragraph(experiment)) if p]
    unknown = [name for name in measured_diagnostics(experiment) if name not in plots]
    if unknown:
        section.paragraphs.append(unknown_paragraph(unknown))
    extras.section(experiment, section)

    candidates = [(figures.loss_curves(experiment, files.path(f"{stem}-loss")), LOSS_CAPTION)]
    for name in measured_diagnostics(experiment):
        for plot in plots.get(name, ()):
            path = figures.declared_figure(experiment, name, plot, files.path(f"{stem}-{name}-{plot.tag}"))
            candidates.append((path, plot.caption or f"{name}: {plot.title}"))
    section.figures += [(files.relative(path), caption) for path, caption in candidates if path is not None]
    return section


def measured_diagnostics(experiment: Experiment) -> list[str]:
    """The diagnostics of an experiment: those its config names, in its order, then any other its
    runs recorded scalars of (a results file written by hand may have no diagnostics section)."""
    configured = experiment.config.get("diagnostics")
    names = [d.get("name") for d in configured if isinstance(d, dict)] if isinstance(configured, list) else []
    names += [key.split("/", 1)[0] for run in experiment.runs for key in run.diagnostics]
    return list(dict.fromkeys(n for n in names if isinstance(n, str) and n))


def unknown_paragraph(names: Sequence[str]) -> str:
    """Diagnostics no installed plugin registers: what they would draw is not known."""
    listed = ", ".join(names)
    which = "this diagnostic, so its" if len(names) == 1 else "these diagnostics, so their"
    return f"No figures for {listed}: no installed plugin registers {which} declared plots are unknown."


def declared_plots(registry: Registry) -> dict[str, tuple[Plot, ...]]:
    """Diagnostic name -> the plots it declared when it registered."""
    return {entry.name: entry.metadata["plots"] for entry in registry.list("diagnostic")}


def sweep_section(name: str, points: list[Experiment], files: FigureFiles, stem: str) -> Section:
    """A sweep's best-configuration table and its learning-rate sensitivity figure, ``stem``-lr-sensitivity.png."""
    section = Section(f"sweep {name}")
    keys = list(dict.fromkeys(k for p in points for k in p.point))
    section.paragraphs.append(f"{len(points)} points over {', '.join(keys)}; the best configuration of each "
                              "optimizer by mean final eval loss over seeds (a configuration with a diverged "
                              "seed wins only if all have one).")
    section.tables.append(sweeps.best_table(points))
    section.paragraphs += [f"{p.name}: {text}" for p in points if (text := unfinished_paragraph(p))]
    figure = sweeps.sensitivity_curves(name, points, files.path(f"{stem}-lr-sensitivity"))
    if figure is not None:
        section.figures.append((files.relative(figure),
                                "Final eval loss against the learning rate, mean over seeds (band: range), log-log"))
    return section


def make_report(paths: list[str | Path], out: str | Path, extras: ReportExtras = ReportExtras(),
                registry: Registry | None = None, note: Callable[[str], None] = lambda line: None,
                warn: Callable[[str], None] = lambda line: None) -> tuple[Path, list[Claim]]:
    """Write report.md, index.html and figures/*.png under ``out`` for the experiments under
    ``paths``; return the report directory and the claims ``extras`` checked. The figures of each
    diagnostic are those it declared in ``registry`` (default: the installed plugins'). ``note``
    receives a line for each thing a user should know before reading the page (runs that did not
    finish, a diagnostic without figures, the extras' preface); ``warn`` one for each experiment
    skipped because its results.json cannot be read. No experiment readable: a ResultsError saying why."""
    experiments, skipped = find_experiments(paths)
    if not experiments:
        raise ResultsError("; ".join(skipped))
    for problem in skipped:
        warn(f"Warning: skipped {problem}")
    if registry is None:
        from testbed.plugins import load_plugins  # only now: loading imports every plugin

        registry = load_plugins().registry
    plots = declared_plots(registry)
    out = Path(out)
    with writing(out):
        (out / "figures").mkdir(parents=True, exist_ok=True)
    single = [e for e in experiments if e.sweep is None]
    swept: dict[str, list[Experiment]] = {}
    for experiment in experiments:
        if experiment.sweep is not None:
            swept.setdefault(experiment.sweep, []).append(experiment)
    # Names come from the files: each becomes a distinct, safe file-name stem.
    stems = iter(file_stems([*swept, *(e.name for e in single)]))
    files = FigureFiles(out)
    sections = [sweep_section(name, points, files, next(stems)) for name, points in swept.items()]
    sections += [experiment_section(e, files, next(stems), plots, extras) for e in single]
    for experiment in experiments:
        if (text := unfinished_paragraph(experiment)) is not None:
            note(f"{experiment.name}: {text}")
    for experiment in single:
        unknown = [name for name in measured_diagnostics(experiment) if name not in plots]
        if unknown:
            note(f"{experiment.name}: {unknown_paragraph(unknown)}")
    preface = extras.preface(experiments)
    for paragraph in preface:
        note(paragraph)
    if skipped:
        preface.append("Skipped, their results could not be read: " + "; ".join(skipped) + ".")
    claims = extras.claims(single)
    write(out, "testbed report", sections, Claims(extras.claims_heading, claims), preface)
    return out, claims


def file_stems(names: Iterable[str]) -> list[str]:
    """One file-name stem per name: safe whatever the text, and distinct even where two
    experiments share a name (neither may overwrite the other's figures)."""
    stems: list[str] = []
    for name in names:
        stem, copy = safe_filename(name), 1
        while stem in stems:
            copy += 1
            stem = f"{safe_filename(name)}-{copy}"
        stems.append(stem)
    return stems
