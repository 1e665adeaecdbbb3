"""What the paper adds to the generic report (`testbed report`, `testbed reproduce`): its claims
checked on the data, the SGD/Adam R_med table, the median directional smoothness of each optimizer,
the gradient-noise skewness at initialization, and which reproduction profile made the data."""

from __future__ import annotations

from testbed.paper.claims import check_claims, condition_ratios, median_smoothness, noise_skewness
from testbed.report.data import Experiment
from testbed.report.extras import Column, ReportExtras
from testbed.report.render import Section

TABLE_STEPS = (750, 1250)  # the paper's R_med table
SMOOTHNESS_FROM = 250  # the paper compares directional smoothness from this step on

QUICK_PROFILE = ("Quick profile (testbed reproduce --quick): every experiment was shrunk (fewer steps, prompts "
                 "and seeds, smaller tuning grids and diagnostic budgets) to run in minutes, so its verdicts "
                 "test the pipeline, not the paper.")
FULL_PROFILE = ("Full profile (testbed reproduce): every experiment ran the paper's protocol as its suite file "
                "states it.")


def paper_extras(steps: tuple[int, ...] = TABLE_STEPS, smoothness_from: int = SMOOTHNESS_FROM) -> ReportExtras:
    """The paper's additions to the report: R_med ratios at ``steps``, directional smoothness
    compared from step ``smoothness_from``."""

    def section(experiment: Experiment, into: Section) -> None:
        table = condition_table(experiment, steps)
        if table:
            into.tables.append(table)
        skew = noise_skewness(experiment)
        if skew is not None:
            into.paragraphs.append(f"Gradient noise at initialization: mean skewness {skew:.2f} over the runs "
                                   "that measured it.")

    return ReportExtras(preface=profile_paragraphs, claims_heading="Claims of the paper",
                        claims=lambda experiments: check_claims(experiments, steps, smoothness_from),
                        columns=(Column("median directional smoothness", smoothness_cell),), section=section)


def smoothness_cell(experiment: Experiment, label: str) -> str:
    """The results table's median directional smoothness of an optimizer label (over its runs)."""
    smooth = median_smoothness(experiment, label)
    return "-" if smooth is None else f"{smooth:.4g}"


def ratio_pair(experiment: Experiment) -> tuple[str, str] | None:
    """The paper's SGD/Adam; for other experiments, the first optimizer over "adam" (or the last)."""
    labels = experiment.labels
    if len(labels) < 2:
        return None
    denominator = "adam" if "adam" in labels else labels[-1]
    numerator = "sgd" if "sgd" in labels and denominator != "sgd" else next(l for l in labels if l != denominator)
    return numerator, denominator


def condition_table(experiment: Experiment, steps: tuple[int, ...]) -> tuple[list[str], list[list[str]]] | None:
    """The paper's table: the ratio of R_med of the pair's optimizers at ``steps``, paired by seed."""
    pair = ratio_pair(experiment)
    if pair is None or not experiment.has("robust_condition_number/proxy"):
        return None
    ratios = condition_ratios(experiment, steps, *pair)
    if not ratios:
        return None
    header = ["experiment"] + [f"step {s}" for s in steps]
    row = [f"{experiment.name}: {pair[0]}/{pair[1]} R_med, mean (std) over seeds"]
    row += [f"{ratios[s][0]:.2f} ({ratios[s][1]:.2f})" if s in ratios else "-" for s in steps]
    return header, [row]


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
