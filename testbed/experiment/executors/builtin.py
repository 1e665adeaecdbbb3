"""The built-in executors, ``local`` and ``ray``, registered through ``register_executors`` and the
entry-point group ``testbed`` like any plugin's. Light to import (worker processes preload it): each
factory imports its executor when called, so Ray loads only for ``--executor ray``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from testbed import hookimpl

if TYPE_CHECKING:
    from testbed.experiment.executors.base import Executor


def local_executor(workers: int | None, address: str | None) -> "Executor":
    """This machine's worker processes, ``workers`` of them (default: one per core)."""
    from testbed.experiment.executors.local import LocalExecutor

    return LocalExecutor(workers)


def ray_executor(workers: int | None, address: str | None) -> "Executor":
    """Ray tasks on the cluster at ``address`` ('auto': the one on this machine; None: a local instance)."""
    from testbed.experiment.executors.ray import RayExecutor

    return RayExecutor(address, workers)


@hookimpl
def register_executors(register) -> None:
    """``local`` and ``ray``."""
    register("local", local_executor, doc="worker processes on this machine, one torch thread each")
    register("ray", ray_executor, doc="Ray tasks on a cluster (--address) or a local instance "
                                      "(pip install 'testbed[ray]')", takes_address=True)
