"""Checkpoints: everything a run needs to go on from a step exactly as if it had never stopped.

A checkpoint holds the model and optimizer states, every random state the run draws from (its data
stream, and torch's, numpy's and Python's global ones for plugins that use them), the diagnostics'
state, the result so far (eval curve, diagnostic values) and the logger position: the size of each
TensorBoard event file at the checkpoint, after a flush. On resume the event files are cut back to
those sizes, so whatever was logged after the checkpoint (and is about to be logged again) is gone:
no step appears twice and no curve goes backwards.

It is written atomically (a temporary file, then a rename), so a run killed while writing keeps its
previous checkpoint.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FILE = "checkpoint.pt"
EVENT_FILE_PREFIX = "events.out.tfevents."


@dataclass
class Checkpoint:
    run_id: str
    step: int
    model: dict[str, Any]
    optimizer: dict[str, Any]
    data_stream: torch.Tensor
    global_random: dict[str, Any]
    diagnostics: dict[str, Any]
    result: dict[str, Any]  # the RunResult fields that grow during the run
    event_files: dict[str, int]  # event file name -> its size at the checkpoint


def global_random_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_global_random_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def event_file_sizes(run_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in run_dir.iterdir() if p.name.startswith(EVENT_FILE_PREFIX)}


def save(run_dir: Path, checkpoint: Checkpoint) -> None:
    path = run_dir / CHECKPOINT_FILE
    tmp = path.with_suffix(".tmp")
    torch.save(checkpoint.__dict__, tmp)
    os.replace(tmp, path)


def load(run_dir: Path, run_id: str) -> Checkpoint | None:
    """The run's checkpoint if there is one for this very run (same id), else None."""
    path = run_dir / CHECKPOINT_FILE
    if not path.exists():
        return None
    try:
        data = torch.load(path, weights_only=False)
        checkpoint = Checkpoint(**data)
    except Exception:  # unreadable or from another testbed version: start over
        return None
    return checkpoint if checkpoint.run_id == run_id else None


def has_checkpoint(run_dir: Path, run_id: str) -> int | None:
    """The step of this run's checkpoint, if it has one."""
    checkpoint = load(run_dir, run_id)
    return None if checkpoint is None else checkpoint.step


def rewind_event_files(run_dir: Path, sizes: dict[str, int]) -> None:
    """Cut the event files back to their sizes at the checkpoint; remove files made after it."""
    for path in run_dir.iterdir():
        if not path.name.startswith(EVENT_FILE_PREFIX):
            continue
        if path.name not in sizes:
            path.unlink()
        elif path.stat().st_size > sizes[path.name]:
            with open(path, "r+b") as handle:
                handle.truncate(sizes[path.name])


def remove(run_dir: Path) -> None:
    (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
