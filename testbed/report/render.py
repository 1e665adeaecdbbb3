"""Writing the report: report.md and an HTML page showing the same content with its figures."""

from __future__ import annotations

import html
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from testbed.errors import StorageError

# A claim's verdict (each has its colour in the HTML page). Not judged: measured, but on too few
# completed runs (most diverged) for the verdict to mean anything.
HOLDS, FAILS, UNMEASURED, NOT_JUDGED = "holds", "does not hold", "not measured", "not judged"


@dataclass(frozen=True)
class Claim:
    """A statement checked on the measured data: its verdict and the numbers behind it."""

    title: str
    verdict: str
    evidence: str


@dataclass
class Claims:
    """The report's table of claims under its heading (no table without claims)."""

    heading: str = "Claims"
    claims: list[Claim] = field(default_factory=list)


@dataclass
class Section:
    """One part of the report: its paragraphs, then its tables, then its figures."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[list[str], list[list[str]]]] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (relative path, caption)


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an OSError while writing under ``path`` (a read-only place, a full disk, a file where a
    directory should be) into one line naming the file."""
    try:
        yield
    except OSError as exc:
        raise StorageError.writing(exc.filename or path, exc) from None


def to_markdown(title: str, sections: list[Section], claims: Claims, preface: list[str] = ()) -> str:
    """The report as Markdown: preface, claims, then each section."""
    lines = [f"# {title}", ""]
    for paragraph in preface:
        lines += [paragraph, ""]
    if claims.claims:
        lines += [f"## {claims.heading}", "", "| claim | verdict | evidence |", "| --- | --- | --- |"]
        lines += [f"| {c.title} | **{c.verdict}** | {c.evidence or '-'} |" for c in claims.claims]
        lines.append("")
    for section in sections:
        lines += [f"## {section.title}", ""]
        for paragraph in section.paragraphs:
            lines += [paragraph, ""]
        for header, rows in section.tables:
            lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
            lines.append("")
        for path, caption in section.figures:
            lines += [f"![{caption}]({path})", "", f"*{caption}*", ""]
    return "\n".join(lines)


def to_html(title: str, sections: list[Section], claims: Claims, preface: list[str] = ()) -> str:
    """The report as a self-contained HTML page (figures referenced by relative path)."""
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse;margin:0.5em 0 1em}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}img{max-width:100%}"
             ".holds{color:#176317}.does-not-hold{color:#a01010}.not-measured{color:#777}.not-judged{color:#9a6700}</style></head><body>",
             f"<h1>{e(title)}</h1>", *(f"<p>{e(p)}</p>" for p in preface)]
    if claims.claims:
        parts += [f"<h2>{e(claims.heading)}</h2>", "<table><tr><th>claim</th><th>verdict</th><th>evidence</th></tr>"]
        for c in claims.claims:
            css = c.verdict.replace(" ", "-")
            parts.append(f"<tr><td>{e(c.title)}</td><td class='{css}'><b>{e(c.verdict)}</b></td>"
                         f"<td>{e(c.evidence or '-')}</td></tr>")
        parts.append("</table>")
    for section in sections:
        parts.append(f"<h2>{e(section.title)}</h2>")
        parts += [f"<p>{e(p)}</p>" for p in section.paragraphs]
        for header, rows in section.tables:
            parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
            parts.append("</table>")
        for path, caption in section.figures:
            parts.append(f"<figure><img src='{e(path)}' alt='{e(caption)}'><figcaption>{e(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write(out: Path, title: str, sections: list[Section], claims: Claims, preface: list[str] = ()) -> None:
    """report.md and index.html; ``preface``: paragraphs above the claims (what the data is)."""
    with writing(out):
        (out / "report.md").write_text(to_markdown(title, sections, claims, preface), encoding="utf-8")
        (out / "index.html").write_text(to_html(title, sections, claims, preface), encoding="utf-8")
