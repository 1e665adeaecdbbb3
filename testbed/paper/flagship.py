"""`testbed bench --flagship`: the whole flagship command, `testbed run examples/heavy_tail.yaml`
(12 runs x 10,000 steps with the paper's diagnostics), timed from its start to its exit, in a
temporary log directory, with where its runs' time went (training or each diagnostic)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from testbed.errors import ConfigError, TestbedError
from testbed.files.layout import RESULTS_FILE

FLAGSHIP = "examples/heavy_tail.yaml"  # in a checkout of testbed


def time_flagship(config: str | Path = FLAGSHIP) -> dict[str, Any]:
    """Run `testbed run CONFIG` as a subprocess in a fresh temporary log directory (nothing cached)
    and return its wall time, the runner's own time and the runs' seconds split into training and
    diagnostics (summed over runs: worker time, not wall time)."""
    config = Path(config)
    if not config.is_file():
        raise ConfigError(f"--flagship: no config file {str(config)!r} (the flagship is {FLAGSHIP}, in a checkout)")
    with tempfile.TemporaryDirectory(prefix="testbed-flagship-") as logdir:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "testbed.cli", "run", str(config), "--logdir", logdir],
                              capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
            raise TestbedError(f"the flagship command failed (exit code {done.returncode}): {last}")
        (results,) = Path(logdir).glob(f"*/{RESULTS_FILE}")
        data = json.loads(results.read_text())
    return {"config": str(config), "wall_seconds": wall, **split(data)}


def split(results: dict[str, Any]) -> dict[str, Any]:
    """Where an experiment's time went, from its results.json: the runner's wall time, the runs'
    seconds, and of those, each diagnostic's and training's (the rest: steps, evaluation, logging)."""
    runs = results["runs"]
    diagnostics: dict[str, float] = {}
    for run in runs:
        for name, seconds in run.get("diagnostic_seconds", {}).items():
            diagnostics[name] = diagnostics.get(name, 0.0) + seconds
    run_seconds = sum(run["seconds"] for run in runs)
    return {"runs": len(runs), "status": results["status"], "runner_seconds": results["wall_seconds"],
            "run_seconds": run_seconds, "training_seconds": run_seconds - sum(diagnostics.values()),
            "diagnostic_seconds": dict(sorted(diagnostics.items(), key=lambda item: -item[1]))}


def format_flagship(timing: dict[str, Any]) -> str:
    """The flagship's line and its split, as `testbed bench --flagship` prints them."""
    diagnostics = timing["diagnostic_seconds"]
    each = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in diagnostics.items()) or "none"
    outside = timing["wall_seconds"] - timing["runner_seconds"]
    return "\n".join([
        f"flagship: testbed run {timing['config']}: {timing['wall_seconds']:.1f} s from the command to its exit "
        f"({timing['runs']} runs, {timing['status']}; {outside:.1f} s of it starting, checking and writing results)",
        f"  run time, summed over the runs (worker time): {timing['run_seconds']:.1f} s = "
        f"training {timing['training_seconds']:.1f} s + diagnostics {sum(diagnostics.values()):.1f} s ({each})",
    ])
