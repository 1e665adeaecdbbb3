"""Checkpoints: everything a run needs to go on from a step exactly as if it had never stopped.

A checkpoint holds the model and optimizer states, every random state the run draws from (its data
stream, and torch's, numpy's and Python's global ones for plugins that use them), the diagnostics'
state, the result so far (eval curve, diagnostic values) and the logger position: the size of each
TensorBoard event file at the checkpoint, after a flush. On resume the event files are cut back to
those sizes, so whatever was logged after the checkpoint (and is about to be logged again) is gone:
no step appears twice and no curve goes backwards.

It is written atomically (a temporary file, then a rename), so a run killed while writing keeps its
previous checkpoint.

Run directories are shared between researchers, so reading one must never execute code: a checkpoint
holds only tensors and plain values (numbers, strings, None, lists, tuples, dicts) and is read with
``torch.load(weights_only=True)``, which refuses anything else. A checkpoint that does not load that
way is treated as absent (the run starts over); one whose content would not load that way is not
written (see ``UnsafeCheckpoint``).
"""

from __future__ import annotations

import io
import os
import pickle
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from testbed.errors import StorageError
from testbed.files.layout import CHECKPOINT_FILE, EVENT_FILE_PREFIX


@dataclass
class Checkpoint:
    """One run's state at the end of ``step``: all a resumed run needs to continue bitwise unchanged."""

    run_id: str  # the run it belongs to: a checkpoint of another run id is never resumed from
    step: int  # steps done; the resumed run starts with step + 1
    model: dict[str, Any]
    optimizer: dict[str, Any]
    data_stream: torch.Tensor  # state of the run's training-data generator
    global_random: dict[str, Any]  # as global_random_state() returns it
    diagnostics: dict[str, Any]  # DiagnosticRunner.state_dict()
    result: dict[str, Any]  # the RunResult fields that grow during the run
    event_files: dict[str, int]  # event file name -> its size at the checkpoint


class UnsafeCheckpoint(ValueError):
    """A part of a checkpoint (a plugin's optimizer or diagnostic state) holds something other than
    tensors and plain values, so ``torch.load(weights_only=True)`` could not read it back."""


def global_random_state() -> dict[str, Any]:
    """torch's, numpy's and Python's global random states, as tensors and plain values."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    return {"torch": torch.get_rng_state(),
            "numpy": (name, keys.tolist(), position, has_gauss, cached_gaussian),  # an ndarray is refused
            "python": random.getstate()}


def set_global_random_state(state: dict[str, Any]) -> None:
    """Restore the global random states that ``global_random_state`` returned."""
    torch.set_rng_state(state["torch"])
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    random.setstate(state["python"])


def event_file_sizes(run_dir: Path) -> dict[str, int]:
    """Event file name -> its size in bytes now, for every TensorBoard event file in ``run_dir``."""
    return {p.name: p.stat().st_size for p in run_dir.iterdir() if p.name.startswith(EVENT_FILE_PREFIX)}


def save(run_dir: Path, checkpoint: Checkpoint) -> None:
    """Write the checkpoint atomically; raise UnsafeCheckpoint (writing nothing) if it would not
    load with weights_only=True: resuming from it would silently start over. A write that fails
    (disk full) raises StorageError and leaves the previous checkpoint as it was."""
    content = _safe_bytes(checkpoint.__dict__)
    path = run_dir / CHECKPOINT_FILE
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_bytes(content)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError.writing(path, exc) from None


def _safe_bytes(data: dict[str, Any]) -> bytes:
    """``data`` serialized, after reading it back the way ``load`` will."""
    content = _serialized(data)
    try:
        torch.load(io.BytesIO(content), weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpoint(f"{_unsafe_part(data)} {_refusal(exc)}") from None
    return content


def _serialized(data: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(data, buffer)
    return buffer.getvalue()


def _unsafe_part(data: dict[str, Any]) -> str:
    """Which part of a refused checkpoint holds what weights_only refuses, e.g. "diagnostic 'x' state"."""
    parts = {f"{field} state": value for field, value in data.items() if field != "diagnostics"}
    parts |= {f"diagnostic {name!r} state": value
              for name, value in data.get("diagnostics", {}).get("diagnostics", {}).items()}
    for part, value in parts.items():
        try:
            torch.load(io.BytesIO(_serialized(value)), weights_only=True)
        except pickle.UnpicklingError:
            return part
    return "its content"


def _refusal(exc: pickle.UnpicklingError) -> str:
    """What torch refused, e.g. "holds a mymodule.Window, which ..." (its message is mostly advice
    on loading unsafely, which is not ours to give)."""
    refused = re.search(r"GLOBAL (\S+)", str(exc))
    what = f"a {refused.group(1)}" if refused else "something other than tensors and plain values"
    return f"holds {what}, which torch.load(weights_only=True) refuses"


def load(run_dir: Path, run_id: str) -> Checkpoint | None:
    """The run's checkpoint if there is one for this very run (same id), else None. It is read
    with weights_only=True, so a crafted file cannot execute code; one that does not load that way
    (unsafe, unreadable or from another testbed version) counts as absent: the run starts over."""
    path = run_dir / CHECKPOINT_FILE
    if not path.exists():
        return None
    try:
        data = torch.load(path, weights_only=True)
        checkpoint = Checkpoint(**data)
    except Exception:
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
    """Delete the run's checkpoint, if any (a finished run no longer needs it)."""
    (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
