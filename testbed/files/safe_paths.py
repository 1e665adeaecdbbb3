"""Paths built from untrusted text: names read from files someone else wrote (a results.json's
experiment or sweep name, a run's label) must not choose where testbed reads or writes.

Two tools: ``safe_filename`` turns any text into one plain file name, and ``path_under`` joins
parts to a root and refuses a result that leaves it. Both judge the text, not the file system:
symbolic links are another matter (see ``testbed.files.links``)."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from testbed.errors import TestbedError

# Portable file-name characters; everything else (separators, quotes, spaces, control characters,
# non-ASCII) becomes "_". "=" and "," stay: sweep point names are made of them.
UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")
MAX_LENGTH = 120  # far below the usual 255-byte limit, leaving room for suffixes like "-<figure>.png"


def safe_filename(text: str) -> str:
    """``text`` as a single file name that names nothing but itself: unsafe characters replaced,
    leading dots dropped (no "..", no hidden file), length capped. A name that had to change gets
    a short hash of the original text, so that two different texts never share a file."""
    name = UNSAFE.sub("_", text).lstrip(".")[:MAX_LENGTH]
    if name == text and name:
        return name
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{name or 'unnamed'}-{digest}"


def path_under(root: Path, *parts: str) -> Path:
    """``root`` joined with ``parts``; a TestbedError when the result (after resolving "..") is
    not inside ``root``, as an absolute part or a climbing one would make it."""
    path = root.joinpath(*parts)
    inside = os.path.normpath(path)
    base = os.path.normpath(root)
    if inside != base and not inside.startswith(base.rstrip(os.sep) + os.sep):
        raise TestbedError(f"{os.path.join(*parts) if parts else ''!r} points outside {root}")
    return path
