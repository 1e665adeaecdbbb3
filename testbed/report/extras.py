"""The seam through which a layer above the generic report adds to it (testbed/paper/ adds the
paper's claims, its R_med table, the noise paragraph and the reproduction profile): the report itself
knows no optimizer, task or diagnostic by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from testbed.report.data import Experiment
from testbed.report.render import Claim, Section


@dataclass(frozen=True)
class Column:
    """An extra column of an experiment's results table: its header and the cell of each optimizer label."""

    header: str
    cell: Callable[[Experiment, str], str]


def _no_paragraphs(experiments: list[Experiment]) -> list[str]:
    return []


def _no_claims(experiments: list[Experiment]) -> list[Claim]:
    return []


def _unchanged(experiment: Experiment, section: Section) -> None:
    return None


@dataclass(frozen=True)
class ReportExtras:
    """What the report adds to its generic content. ``preface``: paragraphs at the top of the page
    (each also a note on the console), from every experiment. ``claims``: statements checked on the
    experiments that are no sweep point, in a table under ``claims_heading``. ``columns``: appended to
    each experiment's results table. ``section``: adds tables or paragraphs to an experiment's section
    once its generic content is in (its figures come after either way)."""

    preface: Callable[[list[Experiment]], list[str]] = _no_paragraphs
    claims_heading: str = "Claims"
    claims: Callable[[list[Experiment]], list[Claim]] = _no_claims
    columns: tuple[Column, ...] = field(default_factory=tuple)
    section: Callable[[Experiment, Section], None] = _unchanged
