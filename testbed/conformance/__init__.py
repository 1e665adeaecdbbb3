"""Conformance checks for registered optimizers, tasks and diagnostics (`testbed check`).

Each check builds the plugin through the engine's own code (``testbed.engine.build``), runs it on a
tiny problem (d=3, n=6, batches of 32, a few steps) and either passes or fails with a message that
names the fault: a factory that rejects its declared options, randomness drawn from the global RNG,
a ``state_dict`` that loses state, a closure ignored, a task off the label law, a diagnostic that
changes what it measures. ``runner`` resolves names and runs the checks; ``optimizers``, ``tasks``
and ``diagnostics`` hold the checks of each kind; ``harness`` the tiny problem they share.
"""

from testbed.conformance.runner import Outcome, check_entries, resolve_names

__all__ = ["Outcome", "check_entries", "resolve_names"]
