"""No writing through symbolic links below a log directory.

An experiment or run directory that is a link to somewhere else would get config, summaries and
event files written into its target, and the removal of a stale run directory would delete the
target's contents. So every directory below the log directory that a run writes or removes must be
a real directory (or not exist yet). The log directory itself may be a link (``runs -> /data/runs``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from testbed.errors import TestbedError


def refuse_links(root: str | Path, paths: Iterable[str | Path]) -> None:
    """Raise TestbedError naming the first path component below ``root`` (``root`` excluded) of any
    of ``paths`` that is a symbolic link."""
    root = Path(root)
    checked: set[Path] = set()
    for path in paths:
        relative = Path(path).relative_to(root)
        component = root
        for part in relative.parts:
            component = component / part
            if component in checked:
                continue
            checked.add(component)
            if component.is_symlink():
                raise TestbedError(f"{component} is a symbolic link (to {os.readlink(component)}); testbed "
                                   f"does not write through links in a log directory: remove it, or use the "
                                   f"real directory as the log directory")
