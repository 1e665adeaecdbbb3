"""A TensorBoard event file written by this process, in bulk: records are framed as they come and
reach the file a batch at a time.

torch's SummaryWriter hands every record to a writer thread through a queue of ten; the thread
computes the records' checksums in pure Python while holding the interpreter lock, so a run logging
three scalars a step paid about 0.2 ms a step, most of it waiting for that thread. Here a record
costs its encoding and a compiled checksum (``testbed.native.checksum``: tensorboard's pure-Python
one took about 5 of a scalar's 12 microseconds) and the file is appended to once per
``FLUSH_BYTES`` of records or ``FLUSH_SECONDS`` (and at every ``flush``), in this thread: a write
that fails raises here, at the call that wrote.
"""

from __future__ import annotations

import functools
import itertools
import os
import socket
import struct
import time
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event, SourceMetadata
from tensorboard.compat.proto.summary_pb2 import Summary

from testbed.files.layout import EVENT_FILE_PREFIX
from testbed.native.checksum import masked_crc32c_function

FLUSH_BYTES = 8192  # about 50 steps of train/ and optim/ scalars
FLUSH_SECONDS = 10.0  # as SummaryWriter's flush_secs: TensorBoard shows a live run this late at most

_file_numbers = itertools.count()  # the last part of an event file's name, as tensorboard's own counter


def record(data: bytes) -> bytes:
    """``data`` framed as one TFRecord: its length, the length's masked CRC-32C, data, data's CRC."""
    return _header(len(data)) + data + struct.pack("<I", masked_crc32c_function()(data))


@functools.lru_cache(maxsize=1024)
def _header(length: int) -> bytes:
    """A record's length and its checksum (a scalar's records have a handful of lengths: the CRC
    is computed once for each)."""
    header = struct.pack("<Q", length)
    return header + struct.pack("<I", masked_crc32c_function()(header))


class EventFile:
    """One event file in ``directory``, named as tensorboard names its own; it starts with the
    file-version record, on disk as soon as the file is made. Like tensorboard's file object it
    opens the path anew for every append, so a file deleted meanwhile is recreated with the later
    records (``written`` tells how many bytes it should hold). After a failed write every call
    raises that error again: the file no longer holds what was written into it."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / (f"{EVENT_FILE_PREFIX}{int(time.time()):010d}.{socket.gethostname()}"
                                       f".{os.getpid()}.{next(_file_numbers)}")
        self.written = 0  # bytes appended to the file so far
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._last_write = time.monotonic()
        self._failure: OSError | None = None
        self._scalar_events: dict[str, tuple[Event, Summary.Value]] = {}  # tag -> its event, refilled
        self.path.parent.mkdir(parents=True, exist_ok=True)  # as tensorboard's writer does
        self.add(Event(wall_time=time.time(), file_version="brain.Event:2",
                       source_metadata=SourceMetadata(writer="tensorboard.summary.writer.event_file_writer")))
        self.flush()

    def add_summary(self, summary: Summary, step: int | None = None) -> None:
        """An event holding ``summary`` at ``step`` (none: step 0), stamped with the time now."""
        event = Event(wall_time=time.time(), summary=summary)
        if step is not None:
            event.step = int(step)
        self.add(event)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        """A scalar event, as SummaryWriter.add_scalar writes it (a float32 ``simple_value``). The
        tag's event is built once and its time, step and value set anew (``add`` serializes it at
        once): the same bytes as a new event's, at a quarter of the cost."""
        if tag not in self._scalar_events:
            event = Event(summary=Summary(value=[Summary.Value(tag=tag)]))
            self._scalar_events[tag] = event, event.summary.value[0]
        event, summary_value = self._scalar_events[tag]
        event.wall_time, event.step = time.time(), int(step)
        summary_value.simple_value = float(value)
        self.add(event)

    def add(self, event: Event) -> None:
        """Append ``event``; the file gets it at the next flush (due now after enough bytes or seconds)."""
        self._raise_failure()
        framed = record(event.SerializeToString())
        self._pending.append(framed)
        self._pending_bytes += len(framed)
        if self._pending_bytes >= FLUSH_BYTES or time.monotonic() - self._last_write >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Append every pending record to the file."""
        self._raise_failure()
        if not self._pending:
            return
        content = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        try:
            with open(self.path, "ab") as handle:
                handle.write(content)
        except OSError as exc:
            self._failure = exc
            raise
        self.written += len(content)
        self._last_write = time.monotonic()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure
