"""The layout of a log directory: every file and directory name that testbed writes or reads.

    <logdir>/<experiment>/                  testbed.lock, config.yaml, results.json (results.previous.json
                                            while an attempt runs), profile.json (`testbed reproduce`)
    <logdir>/<sweep>/                       testbed.lock, sweep.json, and one experiment per <point>/
    <experiment>/<label>/seed-<s>/          a run: events.out.tfevents.*, config.yaml, summary.json,
                                            checkpoint.pt until it finishes, error.txt (the
                                            tracebacks of its failure and of diagnostics that raised),
                                            summary.invalid-<n>.json kept aside
    <experiment>/tuning/<label>/lr-<lr>/seed-<s>/   a learning-rate pilot run, laid out as a run

Writers and readers (the runner, the cache, the engine, the report, the reproduction) all take the
names from here, so that what one writes the other finds.
"""

from __future__ import annotations

import re

from testbed.text import format_lr

# An experiment's (or a sweep's) directory.
LOCK_FILE = "testbed.lock"
CONFIG_FILE = "config.yaml"  # also in every run directory: the config that run ran with
RESULTS_FILE = "results.json"
# results.json of the previous attempt while this one runs: kept, but not where it would pass as this
# attempt's result (an attempt that dies leaves no results.json); removed once the new one is written
PREVIOUS_RESULTS_FILE = "results.previous.json"
PROFILE_FILE = "profile.json"  # written by `testbed reproduce`: the profile (quick or full) it ran with
SWEEP_FILE = "sweep.json"
TUNING_DIR = "tuning"

# A run's directory.
SUMMARY_FILE = "summary.json"
INVALID_SUMMARY = re.compile(r"summary\.invalid-\d+\.json")  # a summary.json kept aside
CHECKPOINT_FILE = "checkpoint.pt"
ERROR_FILE = "error.txt"  # the tracebacks of a run's failure and of its diagnostics that raised
EVENT_FILE_PREFIX = "events.out.tfevents."  # TensorBoard's event files


def invalid_summary_name(n: int) -> str:
    """The name the ``n``-th summary.json kept aside in a run directory gets (it matches INVALID_SUMMARY)."""
    return f"summary.invalid-{n}.json"


def run_parts(label: str, seed: int) -> tuple[str, str]:
    """A run's directory below its experiment's: (<label>, seed-<s>)."""
    return label, f"seed-{seed}"


def pilot_parts(label: str, lr: float, seed: int) -> tuple[str, str, str, str]:
    """A learning-rate pilot run's directory below its experiment's: (tuning, <label>, lr-<lr>, seed-<s>)."""
    return TUNING_DIR, label, f"lr-{format_lr(lr)}", f"seed-{seed}"
