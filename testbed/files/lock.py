"""One writer per log directory: a lock file naming its holder, held with the kernel's ``flock``.

Two `testbed run` of one experiment at once would both run every run, log every TensorBoard step
twice and resume each other's live checkpoints. The lock is an ``flock`` on ``<directory>/testbed.lock``:
the kernel releases it when its holder exits, however it exits, so the lock of a crashed or killed
process is simply taken over. The file's contents (pid, host, command, start time) only name the
holder in the error that a second writer gets.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from testbed.errors import DirectoryInUseError, StorageError, TestbedError
from testbed.files.layout import LOCK_FILE

# A holder writes its details right after it takes the lock: a reader that comes in between waits this long.
HOLDER_WAIT_SECONDS = 1.0


@contextmanager
def directory_lock(directory: str | Path) -> Iterator[None]:
    """Hold ``directory``'s lock (creating the directory) while the block runs. Raises
    DirectoryInUseError, naming the holder, if another process (or another open of the lock in this
    one) holds it."""
    path = Path(directory) / LOCK_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TestbedError(f"cannot prepare the log directory {path.parent}: {exc.strerror or exc}") from None
    try:
        fd = _acquire(path)
    except StorageError:  # already one clear line (the lock file could not be written)
        raise
    except OSError as exc:
        raise TestbedError(f"cannot lock the log directory {path.parent}: {exc.strerror or exc}") from None
    try:
        yield
    finally:
        _release(path, fd)


def _acquire(path: Path) -> int:
    """The open, locked lock file, with this process's details written into it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DirectoryInUseError(f"{path.parent} is in use by {describe(read_holder(path))}; "
                                      f"wait for it to finish or stop it") from None
        except BaseException:
            os.close(fd)
            raise
        if _is_current(fd, path):
            break
        os.close(fd)  # the holder removed it between our open and our lock: lock the new one
    try:
        _write_holder(fd, path)
    except BaseException:
        _release(path, fd)
        raise
    return fd


def _is_current(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (a releasing holder removes the file)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
    except FileNotFoundError:
        return False


def _write_holder(fd: int, path: Path) -> None:
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "command": f"{_program()} {shlex.join(sys.argv[1:])}".rstrip(),
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
    except OSError as exc:
        raise StorageError.writing(path, exc) from None


def _program() -> str:
    """How this process was started: ``testbed``, or ``python -m testbed.cli``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:  # python -m: argv[0] is the module's file
        return f"python -m {spec.name.removesuffix('.__main__')}"
    return Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"


def _release(path: Path, fd: int) -> None:
    """Remove the lock file while still holding it (so that nobody locks a file about to vanish),
    unless it is no longer ours, then let go of the lock."""
    try:
        if _is_current(fd, path):
            path.unlink()
    finally:
        os.close(fd)


def read_holder(path: Path) -> dict[str, Any] | None:
    """The details the holder of ``path`` wrote, or None if it wrote none in time."""
    deadline = time.monotonic() + HOLDER_WAIT_SECONDS
    while True:
        try:
            holder = json.loads(path.read_text())
            if isinstance(holder, dict) and "pid" in holder:
                return holder
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def describe(holder: dict[str, Any] | None) -> str:
    """``pid 123 on host, since 2024-05-01 12:00:00 (testbed run x.yaml)``, as far as known."""
    if holder is None:
        return "another process"
    text = f"pid {holder.get('pid')} on {holder.get('host', 'an unknown host')}"
    if holder.get("since"):
        text += f", since {holder['since']}"
    if holder.get("command"):
        text += f" ({holder['command']})"
    return text
