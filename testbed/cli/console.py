"""The ``testbed`` console script. Loading the CLI imports torch, about a second: a Ctrl-C or SIGTERM
in that second is a quiet exit 130 (stopped before anything ran), not a KeyboardInterrupt traceback.
From then on the commands handle signals themselves (``testbed.experiment.signals``)."""

from __future__ import annotations

import gc
import signal
import sys
from typing import Any


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Load the CLI, then run it."""
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_IGN:
        signal.signal(signal.SIGTERM, _interrupt)
    # No collection while the CLI imports torch: each would walk its growing heap of objects, all of
    # which live as long as the process (0.3 s in all).
    gc.disable()
    try:
        from testbed.cli.commands import main as cli
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        if previous is not signal.SIG_IGN:
            signal.signal(signal.SIGTERM, previous)
    # What the imports made (torch's objects, most of the heap): out of the collector's sight, no
    # collection walks it again (the command's own, nor the last ones).
    gc.freeze()
    gc.enable()
    try:
        cli()
    finally:
        # The interpreter's last collections at exit would walk every object the command made;
        # collect the garbage made so far (its finalizers run), then leave the rest out of them.
        gc.collect()
        gc.freeze()
