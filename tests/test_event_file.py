"""The run's event file (testbed.engine.events, issue 15): the records torch's SummaryWriter writes,
read back by TensorBoard's own loader, written in bulk in the caller's thread."""

from __future__ import annotations

import resource
import signal
from pathlib import Path

import matplotlib
import pytest
import torch
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from torch.utils.tensorboard import SummaryWriter

from testbed.engine.events import FLUSH_BYTES, EventFile
from testbed.engine.tblog import RunLogger, custom_scalar_layout

matplotlib.use("Agg")


def events_of(directory: Path) -> list:
    """Every event of the one event file in ``directory``, wall times cleared (they differ run to run)."""
    (path,) = directory.glob("events.out.tfevents.*")
    events = list(EventFileLoader(str(path)).Load())
    for event in events:
        event.wall_time = 0
    return events


def figure():
    from matplotlib import pyplot

    fig = pyplot.figure(figsize=(2, 2))
    pyplot.plot([0, 1, 2], [1, 0, 1])
    return fig


def test_the_records_are_those_summary_writer_writes(tmp_path):
    values = torch.tensor([0.5, -2.0, 3.0, 1e-3], dtype=torch.float64)
    layout = custom_scalar_layout({})
    ours = RunLogger(str(tmp_path / "ours"))
    ours.scalar("train/loss", 0.25, 1)
    ours.scalar("optim/lr", 0.02, 7)
    ours.histogram("diag/x/spectrum", values, 3)
    ours.histogram("diag/x/counts", values, 3, bins=5)
    ours.text("config", "    a: 1", 0)
    ours.figure("diag/x/figure", figure(), 4)
    ours.layout({})
    ours.close()
    theirs = SummaryWriter(str(tmp_path / "theirs"))
    theirs.add_scalar("train/loss", 0.25, 1)
    theirs.add_scalar("optim/lr", 0.02, 7)
    theirs.add_histogram("diag/x/spectrum", values, 3)
    theirs.add_histogram("diag/x/counts", values, 3, bins=5)
    theirs.add_text("config", "    a: 1", 0)
    theirs.add_figure("diag/x/figure", figure(), 4)
    theirs.add_custom_scalars(layout)
    theirs.close()
    ours_events, their_events = events_of(tmp_path / "ours"), events_of(tmp_path / "theirs")
    assert len(ours_events) == 8  # the file version, then one event per record
    assert [e.SerializeToString() for e in ours_events] == [e.SerializeToString() for e in their_events]


def test_records_reach_the_file_in_bulk_and_at_every_flush(tmp_path):
    events = EventFile(tmp_path)
    first = events.path.stat().st_size
    assert first == events.written > 0  # the file-version record is on disk from the start
    events.add_scalar("train/loss", 1.0, 1)
    assert events.path.stat().st_size == first  # pending
    events.flush()
    assert events.path.stat().st_size == events.written > first
    flushed, step = events.written, 1
    while events.path.stat().st_size == flushed and step < 10_000:  # no flush: they go when enough
        step += 1
        events.add_scalar("train/loss", 1.0, step)
    assert FLUSH_BYTES <= events.written - flushed < 2 * FLUSH_BYTES
    events.flush()
    assert [e.step for e in events_of(tmp_path)[1:]] == list(range(1, step + 1))


def test_a_deleted_file_is_recreated_and_its_written_bytes_tell(tmp_path):
    logger = RunLogger(str(tmp_path))
    logger.scalar("train/loss", 1.0, 1)
    logger.flush()
    logger.event_file().unlink()
    logger.scalar("train/loss", 1.0, 2)
    logger.flush()
    (warning,) = logger.lost_event_files()
    assert logger.event_file().name in warning and "deleted" in warning


def test_a_failed_write_raises_at_that_call_and_at_every_later_one(tmp_path):
    events = EventFile(tmp_path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (events.written + 10, hard))
    try:
        events.add_scalar("train/loss", 1.0, 1)
        with pytest.raises(OSError):
            events.flush()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    with pytest.raises(OSError):  # room again, but the file no longer holds what was written
        events.add_scalar("train/loss", 1.0, 2)
    with pytest.raises(OSError):
        events.flush()
