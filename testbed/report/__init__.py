"""`testbed report`: turn experiment directories into a self-contained report directory.

For every experiment: eval-loss curves, the gradient-noise histogram, R_med, sharpness and directional
smoothness along training, the generalized-smoothness scatter, and a results table; across
experiments: the paper's claims checked on the data. Works on any experiment, not only the paper's.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

from testbed.errors import ResultsError
from testbed.files.safe_paths import path_under, safe_filename
from testbed.report import figures, sweeps
from testbed.paper.claims import Claim, check_claims, condition_ratios, median_smoothness, noise_skewness
from testbed.report.data import Experiment
from testbed.report.load import find_experiments
from testbed.report.render import Section, write, writing

QUICK_PROFILE = ("Quick profile (testbed reproduce --quick): every experiment was shrunk (fewer steps, prompts "
                 "and seeds, smaller tuning grids and diagnostic budgets) to run in minutes, so its verdicts "
                 "test the pipeline, not the paper.")
FULL_PROFILE = ("Full profile (testbed reproduce): every experiment ran the paper's protocol as its suite file "
                "states it.")


def _results_table(experiment: Experiment) -> tuple[list[str], list[list[str]]]:
    header = ["optimizer", "lr", "runs", "diverged", "final eval loss (mean)", "median directional smoothness"]
    rows = []
    for label in experiment.labels:
        runs = experiment.runs_of(label)
        final = experiment.mean_final(label)
        smooth = median_smoothness(experiment, label)
        lrs = ", ".join(dict.fromkeys(f"{r.lr:g}" for r in runs if r.lr is not None)) or "-"
        rows.append([label, lrs, str(len(runs)), str(sum(r.status == "diverged" for r in runs)),
                     "-" if final is None else f"{final:.4g}", "-" if smooth is None else f"{smooth:.4g}"])
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


def _ratio_pair(experiment: Experiment) -> tuple[str, str] | None:
    """The paper's SGD/Adam; for other experiments, the first optimizer over "adam" (or the last)."""
    labels = experiment.labels
    if len(labels) < 2:
        return None
    denominator = "adam" if "adam" in labels else labels[-1]
    numerator = "sgd" if "sgd" in labels and denominator != "sgd" else next(l for l in labels if l != denominator)
    return numerator, denominator


def condition_table(experiment: Experiment, steps: tuple[int, ...]) -> tuple[list[str], list[list[str]]] | None:
    pair = _ratio_pair(experiment)
    if pair is None or not experiment.has("robust_condition_number/proxy"):
        return None
    ratios = condition_ratios(experiment, steps, *pair)
    if not ratios:
        return None
    header = ["experiment"] + [f"step {s}" for s in steps]
    row = [f"{experiment.name}: {pair[0]}/{pair[1]} R_med, mean (std) over seeds"]
    row += [f"{ratios[s][0]:.2f} ({ratios[s][1]:.2f})" if s in ratios else "-" for s in steps]
    return header, [row]


def experiment_section(experiment: Experiment, out: Path, steps: tuple[int, ...], stem: str) -> Section:
    """The experiment's tables, paragraphs and figures; its figure files are named ``stem``-<kind>.png."""
    section = Section(experiment.name)
    task = experiment.config["task"]
    model = experiment.config["model"]
    section.paragraphs.append(
        f"Task {task['name']} (d={task['d']}, n={task['n']}, options {task.get('options') or {}}); "
        f"model L={model['layers']}, {model['parameterization']}, {model['attention']} attention; "
        f"{experiment.config['train']['steps']} steps, batch {experiment.config['train']['batch_size']}, "
        f"seeds {experiment.config['train']['seeds']}.")
    section.tables.append(_results_table(experiment))
    section.paragraphs += [p for p in (divergence_paragraph(experiment), unfinished_paragraph(experiment)) if p]
    table = condition_table(experiment, steps)
    if table:
        section.tables.append(table)
    skew = noise_skewness(experiment)
    if skew is not None:
        section.paragraphs.append(f"Gradient noise at initialization: mean skewness {skew:.2f} over the runs that measured it.")

    def figure(kind: str) -> Path:
        return path_under(out / "figures", f"{stem}-{kind}.png")

    candidates = [
        (figures.loss_curves(experiment, figure("loss")),
         "Eval loss on the fixed batch, mean over seeds (band: range over seeds), log scale"),
        (figures.noise_histograms(experiment, figure("noise")),
         "Density histogram of the gradient-noise norms ||g_k - g|| at initialization"),
        (figures.diagnostic_curves(experiment, "robust_condition_number/proxy", "robust condition number R_med",
                                   figure("rmed")),
         "Robust condition number max|H_ii| / median|H_ii| along training, mean over seeds, log scale"),
        (figures.diagnostic_curves(experiment, "directional_smoothness/value", "directional smoothness",
                                   figure("ds"), log=False),
         "Directional smoothness along the update actually taken, mean over seeds"),
        (figures.diagnostic_curves(experiment, "sharpness/lambda_max", "sharpness lambda_max", figure("sharpness")),
         "Largest Hessian eigenvalue (Lanczos on the eval batch) along training, mean over seeds, log scale"),
        (figures.smoothness_scatter(experiment, figure("gs")),
         "log directional smoothness against log gradient norm, coloured by step"),
    ]
    section.figures += [(str(path.relative_to(out)), caption) for path, caption in candidates if path is not None]
    return section


def sweep_section(name: str, points: list[Experiment], out: Path, stem: str) -> Section:
    """A sweep's best-configuration table and its learning-rate sensitivity figure, ``stem``-lr-sensitivity.png."""
    section = Section(f"sweep {name}")
    keys = list(dict.fromkeys(k for p in points for k in p.point))
    section.paragraphs.append(f"{len(points)} points over {', '.join(keys)}; the best configuration of each "
                              "optimizer by mean final eval loss over seeds (a configuration with a diverged "
                              "seed wins only if all have one).")
    section.tables.append(sweeps.best_table(points))
    section.paragraphs += [f"{p.name}: {text}" for p in points if (text := unfinished_paragraph(p))]
    figure = sweeps.sensitivity_curves(name, points, path_under(out / "figures", f"{stem}-lr-sensitivity.png"))
    if figure is not None:
        section.figures.append((str(figure.relative_to(out)),
                                "Final eval loss against the learning rate, mean over seeds (band: range), log-log"))
    return section


def make_report(paths: list[str | Path], out: str | Path, steps: tuple[int, ...] = (750, 1250),
                smoothness_from: int = 250, note: Callable[[str], None] = lambda line: None,
                warn: Callable[[str], None] = lambda line: None) -> tuple[Path, list[Claim]]:
    """Write report.md, index.html and figures/*.png under ``out`` for the experiments under
    ``paths``; return the report directory and the claims. ``note`` receives a line for each thing
    a user should know before reading the page (runs that did not finish, the reproduction
    profile); ``warn`` one for each experiment skipped because its results.json cannot be read.
    No experiment readable: a ResultsError saying why."""
    experiments, skipped = find_experiments(paths)
    if not experiments:
        raise ResultsError("; ".join(skipped))
    for problem in skipped:
        warn(f"Warning: skipped {problem}")
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
    sections = [sweep_section(name, points, out, next(stems)) for name, points in swept.items()]
    sections += [experiment_section(e, out, steps, next(stems)) for e in single]
    for experiment in experiments:
        if (text := unfinished_paragraph(experiment)) is not None:
            note(f"{experiment.name}: {text}")
    preface = profile_paragraphs(experiments)
    for paragraph in preface:
        note(paragraph)
    if skipped:
        preface.append("Skipped, their results could not be read: " + "; ".join(skipped) + ".")
    claims = check_claims(single, steps, smoothness_from)
    write(out, "testbed report", sections, claims, preface)
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


def profile_paragraphs(experiments: list[Experiment]) -> list[str]:
    """What the data is, when `testbed reproduce` made it: the quick profile's verdicts test the
    pipeline, not the paper. Names the experiments of each profile when they are mixed."""
    by_profile: dict[str, list[str]] = {}
    for experiment in experiments:
        if experiment.profile is not None:
            by_profile.setdefault(experiment.profile, []).append(experiment.name)
    texts = {"quick": QUICK_PROFILE, "full": FULL_PROFILE}
    if len(by_profile) == 1 and sum(map(len, by_profile.values())) == len(experiments):
        return [texts[profile] for profile in by_profile]
    return [f"{texts[profile]} Experiments: {', '.join(names)}." for profile, names in sorted(by_profile.items(),
                                                                                          reverse=True)]
