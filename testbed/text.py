"""Plain text that every layer prints or names things with: learning rates and aligned tables.

Pure Python, no torch: the bottom of the core, beside the plugin API, so that the file layout, the
engine, the experiment driver and the command line all spell a learning rate and a table alike.
"""

from __future__ import annotations

from typing import Sequence


def format_lr(lr: float) -> str:
    """A learning rate, compact but exact: 0.02, 1e-05, 1e+06 (the repr where %g would round)."""
    short = f"{lr:g}"
    return short if float(short) == lr else repr(lr)


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """``rows`` (the header first) as left-aligned columns two spaces apart, with a dashed rule
    under the header and no trailing spaces."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
