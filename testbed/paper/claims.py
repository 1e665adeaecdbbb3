"""The paper's claims (docs/paper.md section 5), each checked on measured data: holds, does not hold,
or not measured, with the numbers behind the verdict. Pure functions of loaded experiments; only the
paper's experiments are evidence (``paper_experiment``), whatever else the report covers."""

from __future__ import annotations

import functools
import math
import statistics
from typing import Callable

from testbed.model.config import MODEL_SCHEMA
from testbed.report.data import Experiment
from testbed.report.render import FAILS, HOLDS, NOT_JUDGED, UNMEASURED, Claim

ANY = object()  # an option whose value is a draw, not part of the setting (a teacher's seed)
# The paper's tasks as its experiments set them (docs/paper.md section 2); an option left out of a
# config is taken at the paper's value. A plugin's task, or a standard one with other options (a
# lighter tail, label noise), is not the paper's setting, even with sgd and adam runs.
PAPER_TASKS: dict[str, dict[str, object]] = {
    "gaussian": {"label_noise": 0.0},
    "gamma": {"shape": 0.1, "scale": None, "label_noise": 0.0},
    "spherical": {"label_noise": 0.0},
    "nonlinear": {"hidden": 10, "teacher_seed": ANY, "label_noise": 0.0},
}
PAPER_INIT_STD = 0.05
NONLINEAR_FEATURE_MAP = [30]  # the nonlinear experiment's student: an MLP 5-30-5 before full attention
PAPER_OPTIMIZERS = ("sgd", "adam")  # a label the claims read is the optimizer of that name
# The deep experiments' claims get a verdict in each precision: float32 is the authors' (their deep
# runs diverge in it), float64 is where the same runs train.
PRECISIONS = ("float32", "float64")
# A loss claim needs at least this share of each compared optimizer's runs completed: the mean of
# the few survivors of a mostly diverged experiment is no verdict.
MIN_COMPLETED = 0.5


def paper_experiment(e: Experiment) -> bool:
    """Whether ``e`` is one of the paper's experiments: a paper task with the paper's options, the
    paper's model (block-sparse P and Q without a feature map, or the nonlinear experiment's full
    attention after its MLP; linear or softmax attention, any depth, init std 0.05), and labels sgd
    and adam, where used, naming those optimizers."""
    task = e.config["task"]
    expected = PAPER_TASKS.get(task["name"])
    options = task.get("options") or {}
    if expected is None or set(options) - set(expected):
        return False
    if any(value is not ANY and options.get(name, value) != value for name, value in expected.items()):
        return False
    model = {**{name: option.default for name, option in MODEL_SCHEMA.items()}, **e.config["model"]}
    if model["init_std"] != PAPER_INIT_STD or not _paper_optimizers(e):
        return False
    if task["name"] == "nonlinear":
        return model["parameterization"] == "full" and (model["feature_map"] or {}).get("hidden") == NONLINEAR_FEATURE_MAP
    return model["parameterization"] == "block_sparse" and not model["feature_map"]


def _paper_optimizers(e: Experiment) -> bool:
    """No entry is labelled sgd or adam while being another optimizer (configs written without
    their optimizers are taken at their labels)."""
    return all(entry["name"] == entry.get("label", entry["name"]) for entry in e.config.get("optimizers", [])
               if entry.get("label", entry["name"]) in PAPER_OPTIMIZERS)


def _pair(experiment: Experiment) -> tuple[str, str] | None:
    """(SGD-like, Adam-like) labels: "sgd" and "adam" when present."""
    labels = experiment.labels
    if "sgd" in labels and "adam" in labels:
        return "sgd", "adam"
    return None


def _verdict(results: list[bool]) -> str:
    return UNMEASURED if not results else HOLDS if all(results) else FAILS


def _ratio(top: float, bottom: float) -> float:
    """top / bottom, infinite over a loss of exactly 0 (results files are read, not trusted)."""
    return top / bottom if bottom else math.inf


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _main_model(e: Experiment) -> bool:
    """The paper's main-comparison model: 3 block-sparse linear-attention layers, no feature map.
    The depth study, softmax attention, the larger model and the nonlinear variant have claims of
    their own."""
    model = e.config["model"]
    return (e.attention == "linear" and e.layers == 3 and model.get("parameterization") == "block_sparse"
            and not model.get("feature_map") and e.config["task"]["d"] == 5)


def adam_beats_sgd(experiments: list[Experiment]) -> Claim:
    """Adam's mean final eval loss is below SGD's in each main-model experiment (Settings 1-3)."""
    results, evidence = [], []
    for e in experiments:
        pair = _pair(e) if _main_model(e) else None
        if pair is None or e.mean_final(pair[0]) is None or e.mean_final(pair[1]) is None:
            continue
        sgd, adam = e.mean_final(pair[0]), e.mean_final(pair[1])
        results.append(adam < sgd)
        evidence.append(f"{e.name}: Adam {_fmt(adam)} vs SGD {_fmt(sgd)} (SGD/Adam {_ratio(sgd, adam):.2f})")
    return Claim("Adam reaches a lower eval loss than SGD with momentum (L = 3 linear attention: Settings 1-3, "
                 "spherical)", _verdict(results), "; ".join(evidence))


def noise_skewness(experiment: Experiment) -> float | None:
    """Mean skewness of the gradient noise at init over the experiment's runs; None if unmeasured."""
    values = [r.value_at("gradient_noise/skewness", 0) for r in experiment.runs]
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def noise_heavy_tailed(experiments: list[Experiment]) -> Claim:
    """Gradient noise at init is right-skewed with positive excess kurtosis in every experiment."""
    results, evidence = [], []
    for e in experiments:
        skew = noise_skewness(e)
        if skew is None:
            continue
        kurtosis = [r.value_at("gradient_noise/excess_kurtosis", 0) for r in e.runs]
        kurtosis = statistics.fmean([k for k in kurtosis if k is not None])
        results.append(skew > 0 and kurtosis > 0)
        evidence.append(f"{e.name}: skewness {skew:.2f}, excess kurtosis {kurtosis:.2f}")
    return Claim("Gradient noise at init is heavy-tailed (right-skewed, long tail)", _verdict(results),
                 "; ".join(evidence))


def noise_ordering(experiments: list[Experiment]) -> Claim:
    """Noise skewness orders the tasks at L = 3: gamma > gaussian > spherical."""
    by_task = {}
    for e in experiments:
        skew = noise_skewness(e)
        if skew is not None and e.layers == 3:
            by_task.setdefault(e.task, skew)
    if not {"gamma", "gaussian", "spherical"} <= set(by_task):
        return Claim("Noise is heavier with Gamma covariates, nearly Gaussian with spherical ones", UNMEASURED,
                     f"needs noise measured on gamma, gaussian and spherical tasks (have: {sorted(by_task) or 'none'})")
    gamma, gaussian, spherical = by_task["gamma"], by_task["gaussian"], by_task["spherical"]
    return Claim("Noise is heavier with Gamma covariates, nearly Gaussian with spherical ones",
                 _verdict([gamma > gaussian > spherical]),
                 f"skewness: gamma {gamma:.2f} > gaussian {gaussian:.2f} > spherical {spherical:.2f}")


def _setting1_shape(e: Experiment) -> bool:
    """Gaussian data with d = 5, n = 20 and linear attention: the depth study's family."""
    task = e.config["task"]
    return e.task == "gaussian" and task["d"] == 5 and task["n"] == 20 and e.attention == "linear"


def precision(e: Experiment) -> str:
    """The experiment's training precision (train.dtype; float32 where its config does not say)."""
    return e.config.get("train", {}).get("dtype", "float32")


def _in_precision(title: str, dtype: str) -> str:
    return f"{title}, in {dtype}" + (" (the authors' precision)" if dtype == "float32" else "")


def _precision_family(family: list[Experiment], dtype: str) -> tuple[list[Experiment], str]:
    """``family`` as measured in ``dtype``: its experiments in that precision and, at a depth with
    none, the other precision's (the shallow depths run in float32 only: they train there), with a
    note naming the depths so borrowed. Nothing when no experiment of ``family`` is in ``dtype``."""
    own = [e for e in family if precision(e) == dtype]
    if not own:
        return [], ""
    depths = {e.layers for e in own}
    borrowed = [e for e in family if precision(e) != dtype and e.layers not in depths]
    others = sorted({(e.layers, precision(e)) for e in borrowed})
    note = "; ".join(f"L={L} in {other} (no {dtype} runs)" for L, other in others)
    return own + borrowed, note


def _with_note(evidence: str, note: str) -> str:
    return f"{evidence}; {note}" if note else evidence


def _unjudged(experiments: list[Experiment]) -> str | None:
    """Why a loss comparison of ``experiments``' SGD and Adam runs is not judged ("N of M runs
    diverged ..."), or None when each has at least MIN_COMPLETED of its runs completed."""
    short, runs = [], []
    for e in experiments:
        for label in ("sgd", "adam"):
            of_label = e.runs_of(label)
            runs += of_label
            completed = len(e.runs_of(label, completed=True))
            if of_label and completed < MIN_COMPLETED * len(of_label):
                short.append(f"{label} L={e.layers} {completed} of {len(of_label)} completed")
    if not short:
        return None
    diverged = sum(r.status == "diverged" for r in runs)
    return f"not judged: {diverged} of {len(runs)} runs diverged (fewer than half completed: {', '.join(short)})"


def noise_depth(experiments: list[Experiment], dtype: str = "float32") -> Claim:
    """Every deep model's (L = 6, 8) noise is more skewed than every shallow one's (L = 2, 4), in
    ``dtype`` (depths without runs in it taken from the other precision)."""
    title = _in_precision("Noise is heavier for deeper models (L = 6, 8 vs 2, 4)", dtype)
    family = [e for e in experiments if _setting1_shape(e) and e.layers in (2, 4, 6, 8) and noise_skewness(e) is not None]
    family, note = _precision_family(family, dtype)
    shallow = [noise_skewness(e) for e in family if e.layers in (2, 4)]
    deep = [noise_skewness(e) for e in family if e.layers in (6, 8)]
    if not shallow or not deep:
        return Claim(title, UNMEASURED, f"needs noise measured at L in {{2, 4}} and in {{6, 8}}, {dtype} among them")
    return Claim(title, _verdict([min(deep) > max(shallow)]), _with_note(
        f"skewness L=2,4: {', '.join(f'{s:.2f}' for s in shallow)}; L=6,8: {', '.join(f'{s:.2f}' for s in deep)}", note))


def condition_ratios(experiment: Experiment, steps: tuple[int, ...], numerator: str, denominator: str,
                     key: str = "robust_condition_number/proxy") -> dict[int, tuple[float, float, int]]:
    """{step: (mean, std, seeds)} of numerator/denominator R_med, paired by seed."""
    table = {}
    for step in steps:
        ratios = []
        for run in experiment.runs_of(numerator):
            partner = next((r for r in experiment.runs_of(denominator) if r.seed == run.seed), None)
            top, bottom = run.value_at(key, step), partner.value_at(key, step) if partner else None
            if top is not None and bottom:
                ratios.append(top / bottom)
        if ratios:
            spread = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
            table[step] = (statistics.fmean(ratios), spread, len(ratios))
    return table


def condition_number(experiments: list[Experiment], steps: tuple[int, ...]) -> Claim:
    """The paper's table: the main comparison (the depth study has a claim of its own)."""
    results, evidence = [], []
    for e in experiments:
        pair = _pair(e) if _main_model(e) else None
        if pair is None:
            continue
        for step, (mean, std, count) in condition_ratios(e, steps, *pair).items():
            results.append(mean > 1)
            evidence.append(f"{e.name} step {step}: SGD/Adam R_med {mean:.2f} ({std:.2f}), {count} seeds")
    return Claim("SGD's trajectory has a larger robust condition number than Adam's (L = 3 linear attention)",
                 _verdict(results),
                 "; ".join(evidence))


def _mean_ratio(e: Experiment, steps: tuple[int, ...]) -> float | None:
    """SGD/Adam R_med averaged over the table's steps (each step's ratio is a mean over seeds)."""
    pair = _pair(e)
    ratios = condition_ratios(e, steps, *pair) if pair else {}
    return statistics.fmean(mean for mean, _, _ in ratios.values()) if ratios else None


def condition_gap_heavy_tails(experiments: list[Experiment], steps: tuple[int, ...]) -> Claim:
    """The SGD/Adam R_med ratio is larger on gamma than on gaussian data (L = 3, n = 20)."""
    title = "The R_med gap (SGD/Adam) is larger with heavy-tailed (Gamma) covariates than Gaussian ones"
    ratio = lambda task: next((r for e in experiments if e.task == task and e.layers == 3  # noqa: E731
                               and e.config["task"]["n"] == 20 and (r := _mean_ratio(e, steps)) is not None), None)
    gamma, gaussian = ratio("gamma"), ratio("gaussian")
    if gamma is None or gaussian is None:
        return Claim(title, UNMEASURED, "needs R_med for SGD and Adam on gamma and gaussian tasks (L = 3, n = 20)")
    return Claim(title, _verdict([gamma > gaussian]),
                 f"SGD/Adam R_med, mean over steps {', '.join(map(str, steps))}: gamma {gamma:.2f}, gaussian {gaussian:.2f}")


def condition_gap_depth(experiments: list[Experiment], steps: tuple[int, ...], dtype: str = "float32") -> Claim:
    """The SGD/Adam R_med ratio grows with depth on Setting 1's data (tuned runs when enough), in
    ``dtype`` (depths without runs in it taken from the other precision)."""
    title = _in_precision("The R_med gap (SGD/Adam) grows with the number of layers", dtype)
    family = [e for e in experiments if _setting1_shape(e) and _mean_ratio(e, steps) is not None]
    if len({e.layers for e in family if _tuned(e)}) >= 2:
        family = [e for e in family if _tuned(e)]
    family, note = _precision_family(family, dtype)
    by_depth = {e.layers: _mean_ratio(e, steps) for e in sorted(family, key=lambda e: e.layers)}
    if len(by_depth) < 2:
        return Claim(title, UNMEASURED,
                     f"needs R_med for SGD and Adam on Gaussian data at two or more depths, {dtype} among them")
    ratios = list(by_depth.values())
    return Claim(title, _verdict([all(b > a for a, b in zip(ratios, ratios[1:]))]),
                 _with_note(", ".join(f"L={L}: {r:.2f}" for L, r in by_depth.items()), note))


def median_smoothness(experiment: Experiment, label: str, start: int = 0) -> float | None:
    """Median over the label's runs of each run's median directional smoothness from ``start``."""
    medians = []
    for run in experiment.runs_of(label):
        steps, values = run.series("directional_smoothness/value")
        values = [v for s, v in zip(steps, values) if s >= start]
        if values:
            medians.append(statistics.median(values))
    return statistics.median(medians) if medians else None


def smaller_smoothness(experiments: list[Experiment], start: int = 250) -> Claim:
    """Adam's median directional smoothness is below SGD's in each experiment with both."""
    results, evidence = [], []
    for e in experiments:
        pair = _pair(e)
        if pair is None:
            continue
        sgd, adam = median_smoothness(e, pair[0], start), median_smoothness(e, pair[1], start)
        if sgd is None or adam is None:
            continue
        results.append(adam < sgd)
        evidence.append(f"{e.name}: median DS from step {start}, Adam {adam:.3g} vs SGD {sgd:.3g}")
    return Claim("Adam's directional smoothness is smaller than SGD's", _verdict(results), "; ".join(evidence))


def generalized_smoothness(experiments: list[Experiment]) -> Claim:
    """The final log-gradient-norm/log-smoothness correlation is positive in every run."""
    results, evidence = [], []
    for e in experiments:
        for run in e.runs:
            steps, values = run.series("generalized_smoothness/correlation")
            if values:
                slope = run.series("generalized_smoothness/slope")[1]
                results.append(values[-1] > 0)
                evidence.append(f"{e.name} {run.label} seed {run.seed}: correlation {values[-1]:.2f}"
                                + (f", slope {slope[-1]:.2f}" if slope else ""))
    return Claim("log gradient norm and log directional smoothness are positively correlated", _verdict(results),
                 "; ".join(evidence))


def _progress(experiment: Experiment, label: str) -> float | None:
    """Final over initial eval loss, mean over completed runs: smaller = faster convergence."""
    ratios = [r.eval_losses[-1] / r.eval_losses[0] for r in experiment.runs_of(label, completed=True)
              if r.eval_losses and r.eval_losses[0] and r.eval_losses[-1] is not None]
    return statistics.fmean(ratios) if ratios else None


def spherical_vs_gamma(experiments: list[Experiment]) -> Claim:
    """Spherical data converges faster than gamma data for both optimizers, and Adam's
    advantage (SGD/Adam final loss) is no smaller there."""
    title = "Spherical data: both converge much faster than with Gamma data; Adam's advantage does not shrink"
    spherical = next((e for e in experiments if e.task == "spherical" and _pair(e)), None)
    gamma = next((e for e in experiments if e.task == "gamma" and _pair(e) and e.layers == 3), None)
    if spherical is None or gamma is None:
        return Claim(title, UNMEASURED, "needs SGD and Adam on both spherical and gamma tasks")
    checks, evidence = [], []
    for label in ("sgd", "adam"):
        s, g = _progress(spherical, label), _progress(gamma, label)
        if s is None or g is None:
            return Claim(title, UNMEASURED, f"no completed {label} runs")
        checks.append(s < g)
        evidence.append(f"{label} final/initial loss: spherical {s:.3g} vs gamma {g:.3g}")
    advantage = {e.task: _ratio(e.mean_final("sgd"), e.mean_final("adam")) for e in (spherical, gamma)}
    checks.append(advantage["spherical"] >= advantage["gamma"])
    evidence.append(f"SGD/Adam final loss: spherical {advantage['spherical']:.2f} vs gamma {advantage['gamma']:.2f}")
    return Claim(title, _verdict(checks), "; ".join(evidence))


def _tuned(e: Experiment) -> bool:
    return any(o.get("tune") for o in e.config.get("optimizers", []))


def _final(e: Experiment, label: str) -> tuple[float | None, str]:
    """Mean final eval loss over the completed runs, and how to print it (with the diverged count)."""
    runs, mean = e.runs_of(label), e.mean_final(label)
    diverged = sum(r.status == "diverged" for r in runs)
    text = _fmt(mean) if mean is not None else "no run finished"
    return mean, text + (f" ({diverged} of {len(runs)} diverged)" if diverged else "")


def depth(experiments: list[Experiment], dtype: str = "float32") -> Claim:
    """With depth, both optimizers' final losses fall and the SGD/Adam gap grows (Setting 1's data),
    in ``dtype`` (depths without runs in it taken from the other precision); not judged where fewer
    than MIN_COMPLETED of an optimizer's runs at a depth completed."""
    title = _in_precision("More layers: lower loss for both optimizers and a larger Adam-SGD gap", dtype)
    family = [e for e in experiments if _setting1_shape(e) and _pair(e)]
    # The depth study tunes each depth's learning rates: compare its experiments with each other,
    # not with fixed-rate ones (Setting 1 at L = 3), when it has two depths or more.
    if len({e.layers for e in family if _tuned(e)}) >= 2:
        family = [e for e in family if _tuned(e)]
    family, note = _precision_family(family, dtype)
    chosen = {e.layers: e for e in sorted(family, key=lambda e: e.layers)}
    if len(chosen) < 2:
        return Claim(title, UNMEASURED, f"needs SGD and Adam on Gaussian data at two or more depths, {dtype} among them")
    finals = {L: (_final(e, "sgd"), _final(e, "adam")) for L, e in chosen.items()}
    # A depth where every run of an optimizer diverged has no loss to compare: the claim fails there.
    measured = {L: (s, a) for L, ((s, _), (a, _)) in finals.items() if s is not None and a is not None}
    sgd, adam = [s for s, _ in measured.values()], [a for _, a in measured.values()]
    gap = [_ratio(s, a) for s, a in zip(sgd, adam)]
    checks = [all(b < a for a, b in zip(seq, seq[1:])) for seq in (sgd, adam)]
    checks += [all(b > a for a, b in zip(gap, gap[1:])), len(measured) == len(finals)]
    evidence = [f"L={L}: SGD {s_text}, Adam {a_text}" + (f", SGD/Adam {_ratio(s, a):.2f}" if L in measured else "")
                for L, ((s, s_text), (a, a_text)) in finals.items()]
    unjudged = _unjudged(list(chosen.values()))
    if unjudged:
        return Claim(title, NOT_JUDGED, _with_note("; ".join([unjudged, *evidence]), note))
    return Claim(title, _verdict(checks), _with_note("; ".join(evidence), note))


def linear_vs_softmax(experiments: list[Experiment]) -> Claim:
    """Linear attention ends with a lower eval loss than softmax attention on the same task (L = 3)."""
    title = "Linear attention trains much faster than softmax attention (L = 3)"
    def key(e: Experiment) -> tuple:
        task = e.config["task"]
        return task["name"], task["d"], task["n"], e.layers

    linear = {key(e): e for e in experiments if e.attention == "linear" and e.layers == 3}
    pairs = [(linear[key(e)], e) for e in experiments if e.attention == "softmax" and e.layers == 3 and key(e) in linear]
    checks, evidence = [], []
    for lin, soft in pairs:
        for label in set(lin.labels) & set(soft.labels):
            a, b = lin.mean_final(label), soft.mean_final(label)
            if a is not None and b is not None:
                checks.append(a < b)
                evidence.append(f"{label} on {lin.task}: linear {a:.3g} vs softmax {b:.3g}")
    return Claim(title, _verdict(checks), "; ".join(evidence) or "needs linear and softmax runs on the same task")


def larger_model(experiments: list[Experiment], dtype: str = "float32") -> Claim:
    """On a larger model (d >= 20, L >= 8) trained in ``dtype`` Adam still ends below SGD; not
    judged where fewer than MIN_COMPLETED of an optimizer's runs completed."""
    title = _in_precision("A larger model (L = 8, d = 20, n = 60) behaves the same way (Adam ahead)", dtype)
    large = [e for e in experiments if e.config["task"]["d"] >= 20 and e.layers >= 8 and _pair(e)
             and precision(e) == dtype]
    checks, evidence = [], []
    for e in large:
        (sgd, sgd_text), (adam, adam_text) = _final(e, "sgd"), _final(e, "adam")
        checks.append(sgd is not None and adam is not None and adam < sgd)
        evidence.append(f"{e.name}: Adam {adam_text} vs SGD {sgd_text}")
    if not large:
        return Claim(title, UNMEASURED, f"needs SGD and Adam in {dtype} on a model with d >= 20 and L >= 8")
    unjudged = _unjudged(large)
    if unjudged:
        return Claim(title, NOT_JUDGED, "; ".join([unjudged, *evidence]))
    return Claim(title, _verdict(checks), "; ".join(evidence))


def check_claims(experiments: list[Experiment], steps: tuple[int, ...] = (750, 1250),
                 smoothness_from: int = 250) -> list[Claim]:
    """Every claim, on the paper's experiments among ``experiments`` (the others are no evidence);
    R_med ratios at ``steps``, directional smoothness from step ``smoothness_from``. The deep
    experiments' claims come once per precision (PRECISIONS)."""
    experiments = [e for e in experiments if paper_experiment(e)]
    checks: list[Callable[[list[Experiment]], Claim]] = [
        adam_beats_sgd, noise_heavy_tailed, noise_ordering, *in_each_precision(noise_depth),
        lambda es: condition_number(es, steps), lambda es: condition_gap_heavy_tails(es, steps),
        *in_each_precision(functools.partial(condition_gap_depth, steps=steps)),
        lambda es: smaller_smoothness(es, smoothness_from), generalized_smoothness,
        spherical_vs_gamma, *in_each_precision(depth), linear_vs_softmax, *in_each_precision(larger_model),
    ]
    return [check(experiments) for check in checks]


def in_each_precision(check: Callable[..., Claim]) -> list[Callable[[list[Experiment]], Claim]]:
    """``check`` once per precision of PRECISIONS (its ``dtype`` keyword)."""
    return [functools.partial(check, dtype=dtype) for dtype in PRECISIONS]
