"""Stop signals. SIGINT (Ctrl-C) and SIGTERM (what ``kill``, ``timeout`` and batch schedulers send)
mean the same: stop. The first asks the running runs to stop at their next step, with a checkpoint,
and no other run to start; the second stops them at once. A signal ignored from the start stays
ignored: a non-interactive shell starts its background jobs with SIGINT ignored, so that a Ctrl-C
meant for the foreground job leaves them running (SIGTERM still stops them).

Two scopes. ``stop_on_signals`` while an executor runs runs. ``command_signals`` around a whole
command: there a signal raises KeyboardInterrupt as Ctrl-C does (before any run started, or for an
executor that stops on KeyboardInterrupt, like ray), except once runs were stopped on a signal:
later signals are then ignored, so that the experiment writes its results and exits with 130
whatever the user presses meanwhile.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
Handler = Callable[[int, Any], None]


class CommandHandler:
    """The handler ``command_signals`` installs."""

    def __init__(self) -> None:
        self.stopping = False  # set by stop_on_signals when the runs were asked to stop

    def __call__(self, signum: int, frame: Any) -> None:
        if not self.stopping:
            raise KeyboardInterrupt


@contextlib.contextmanager
def command_signals() -> Iterator[None]:
    """Signals for a whole command (a decorator too). Once runs were stopped on a signal, later
    signals stay ignored: what is left is the process exiting, which takes seconds in a process
    that imported torch, and which a signal would only cut short with another exit code. (Ignored,
    not handled: Python puts its handlers back to the default as it starts to tear down.)"""
    handler = CommandHandler()
    previous = _install(handler)
    try:
        yield
    finally:
        if handler.stopping:
            _install(signal.SIG_IGN)
        else:
            _restore(previous)


@contextlib.contextmanager
def stop_on_signals(request_stop: Callable[[], None], stop_at_once: Callable[[], None]) -> Iterator[None]:
    """While an executor runs runs: the first signal calls ``request_stop``, the second
    ``stop_at_once``, later ones nothing."""
    received = 0

    def handle(signum: int, frame: Any) -> None:
        nonlocal received
        received += 1
        if received == 1:
            for outer in previous.values():
                if isinstance(outer, CommandHandler):
                    outer.stopping = True
            request_stop()
        elif received == 2:
            stop_at_once()

    previous = _install(handle)
    try:
        yield
    finally:
        _restore(previous)


def _install(handler: Handler) -> dict[int, Any]:
    """``handler`` for every stop signal not ignored; returns the handlers it replaced. Only the main
    thread may set handlers (and only it receives signals)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, handler) for signum in SIGNALS
            if signal.getsignal(signum) is not signal.SIG_IGN}


def _restore(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
