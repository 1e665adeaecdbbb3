"""Imported last by the worker server (multiprocessing's forkserver), once the engine and the plugins
are: it takes what their imports made out of the garbage collector's sight (``gc.freeze``), as
Python's docs advise before fork(), and turns the collector back on (``preloading`` turned it off
for the imports), so the workers forked from here collect as usual. Their collections then skip
those objects (and their memory pages stay shared), and so do the server's last collections at
exit, which otherwise walk them for about a second while whoever reads the command's output waits
for the server to end. No collection first: the imports leave no garbage worth 0.16 s of walking.

The server then ends without tearing down its modules either (0.15-0.25 s of torch's, after the
driver has printed its last line): it holds nothing to clean up (the driver owns the server's socket,
and the workers, which fork from it, end on their own), so at its exit it leaves at once."""

import atexit
import gc
import os
import sys
from multiprocessing import forkserver


def _imported_by_the_worker_server() -> bool:
    """Whether multiprocessing's forkserver is importing this module (its preloads), not another process."""
    frame = sys._getframe()
    while frame is not None:
        if frame.f_code is forkserver.main.__code__:
            return True
        frame = frame.f_back
    return False


def _leave_at_once() -> None:
    """End the server now: an exit of code 0 (the server's only), without the interpreter's teardown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


gc.freeze()
gc.enable()
if _imported_by_the_worker_server():
    atexit.register(_leave_at_once)
