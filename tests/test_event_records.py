"""The event file's records are what tensorboard writes: the compiled checksum of the record framing
(testbed.native.checksum) is tensorboard's own masked CRC-32C, and a scalar's event, refilled for
every record of its tag, serializes to the bytes of a new event."""

import math
import random
import struct

import pytest
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

from testbed.engine.events import EventFile
from testbed.native import checksum


def test_the_compiled_checksum_is_tensorboards_for_every_length():
    compiled = checksum.masked_crc32c_function()
    if compiled is checksum.python_masked_crc32c:
        pytest.skip("no C++ compiler: tensorboard's own function is used")
    rng = random.Random(0)
    for length in [*range(0, 130), 1000, 65537]:
        data = bytes(rng.randrange(256) for _ in range(length))
        assert compiled(data) == masked_crc32c(data), length


def test_crc32c_check_value():
    # The CRC-32C of "123456789" is 0xE3069283 (RFC 3720, B.4); the masked form rotates and offsets it.
    crc = 0xE3069283
    masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    assert checksum.masked_crc32c_function()(b"123456789") == masked


def _records(path) -> list[bytes]:
    """The data of every record of an event file, its framing checked."""
    content, records, at = path.read_bytes(), [], 0
    while at < len(content):
        (length,) = struct.unpack("<Q", content[at:at + 8])
        assert struct.unpack("<I", content[at + 8:at + 12])[0] == masked_crc32c(content[at:at + 8])
        data = content[at + 12:at + 12 + length]
        assert struct.unpack("<I", content[at + 12 + length:at + 16 + length])[0] == masked_crc32c(data)
        records.append(data)
        at += 16 + length
    return records


def test_scalar_records_are_the_bytes_of_new_events(tmp_path):
    logged = [("train/loss", 1.5, 7), ("optim/lr", 0.02, 7), ("train/loss", 0.0, 0), ("train/loss", -0.0, 3),
              ("optim/lr", math.nan, 8), ("train/loss", math.inf, 9), ("train/loss", 1e39, 10),
              ("train/loss", 1e-50, 11), ("optim/lr", 2.5, -4), ("diag/" + "x" * 200, 3.25, 2**40)]
    events = EventFile(tmp_path)
    for tag, value, step in logged:
        events.add_scalar(tag, value, step)
    events.flush()
    records = _records(events.path)[1:]  # after the file-version record
    assert len(records) == len(logged)
    for data, (tag, value, step) in zip(records, logged):
        wall_time = Event.FromString(data).wall_time
        new = Event(wall_time=wall_time, step=step, summary=Summary(value=[Summary.Value(tag=tag, simple_value=value)]))
        assert data == new.SerializeToString(), (tag, value, step)
