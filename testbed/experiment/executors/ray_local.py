"""The Ray instance that ``--executor ray`` starts on this machine when it is given no cluster address:
it listens on the loopback interface only, and its processes do not outlive a killed driver for long.

Loopback only. Ray turns a node address of 127.0.0.1 into the machine's outward address (Ray 2.60,
``services.resolve_ip_for_localhost``) unless its cluster mode is off, which is how Ray keeps a local
instance on loopback on macOS and Windows (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``, read by
``ray_constants.ENABLE_RAY_CLUSTER``). With it off the node address stays 127.0.0.1, and every server of
the instance binds to it instead of to every interface: the GCS, the raylet and its object manager, the
driver, the workers, the dashboard agent and the runtime-env agent. The setting applies only while
``ray.init`` starts the instance (the processes it starts inherit it); a driver that joins a cluster
(``--address``) keeps the cluster's own settings.

Leftovers. On Linux Ray starts the GCS, the raylet and its monitors with PR_SET_PDEATHSIG (its "kernel
fate sharing"), so they die with the driver, and the workers die with the raylet. The raylet's own
children, the dashboard agent and the runtime-env agent (about 85 MB each), notice the raylet's death
but then block up to 60 s reporting it to the GCS, which is dead too; Ray has no option that stops them
sooner, and should they miss the raylet's death they would run on. So a record in a per-user temporary
directory names each instance: a random id, its driver, and the processes running under the driver once
``ray.init`` has returned (each by pid and start time, as pids are reused). Each start stops the
processes of every recorded instance whose driver is dead, and a clean shutdown stops whatever of its
own instance outlived ``ray.shutdown``. A process is stopped only if it is verifiably one of the
instance's: the same pid with the same start time as recorded, or the instance's id in its environment,
which every process ``ray.init`` starts inherits (Ray's retitled processes, like its agents, overwrite
theirs, hence the record). Of a driver killed before ``ray.init`` returned, only processes that kept the
id are found.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import ray  # noqa: F401  (first: Ray ships psutil in ray/thirdparty_files and puts it on sys.path)
import psutil
from ray._private import ray_constants

from testbed.errors import TestbedError

LOOPBACK = "127.0.0.1"
INSTANCE_VAR = "TESTBED_RAY_INSTANCE"  # the environment variable that names a process's instance
STOP_GRACE_SECONDS = 3.0  # between SIGTERM and SIGKILL


def records_dir() -> Path:
    """Where instance records live: one directory per user, who can stop only their own processes."""
    user = os.getuid() if hasattr(os, "getuid") else os.getlogin()
    return Path(tempfile.gettempdir()) / f"testbed-ray-{user}"


Identity = tuple[int, float]  # (pid, start time): one process, even once its pid is reused


@dataclass
class LocalInstance:
    """A local Ray instance started by a testbed driver: a random id, the driver, and the processes seen
    running under the driver once the instance had started."""

    id: str
    driver: Identity
    processes: list[Identity] = field(default_factory=list)

    @classmethod
    def begin(cls) -> LocalInstance:
        """Stop what killed drivers left running, then record a new instance started by this process."""
        stop_orphans()
        instance = cls(uuid.uuid4().hex, _identity(psutil.Process()))
        instance.save()
        return instance

    @classmethod
    def load(cls, path: Path) -> LocalInstance:
        """The instance recorded in ``path``."""
        fields = json.loads(path.read_text())
        return cls(fields["id"], tuple(fields["driver"]), [tuple(process) for process in fields["processes"]])

    @property
    def record(self) -> Path:
        """The file this instance is recorded in."""
        return records_dir() / f"{self.id}.json"

    def save(self) -> None:
        """Write the record, whole or not at all; a failure is a TestbedError."""
        partial = self.record.with_suffix(".partial")
        try:
            self.record.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(asdict(self)))
            partial.replace(self.record)  # a record is never read half-written
        except OSError as exc:
            raise TestbedError(f"cannot record the local Ray instance in {records_dir()}: {exc}") from None

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """Around ``ray.init``: the instance binds to loopback only, and the processes it starts carry its id."""
        names = (INSTANCE_VAR, ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR)
        saved_env, saved_mode = {name: os.environ.get(name) for name in names}, ray_constants.ENABLE_RAY_CLUSTER
        # The environment reaches the processes ray.init starts; this process read it when it imported ray.
        os.environ.update({INSTANCE_VAR: self.id, ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR: "0"})
        ray_constants.ENABLE_RAY_CLUSTER = False
        try:
            yield
        finally:
            ray_constants.ENABLE_RAY_CLUSTER = saved_mode
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def note_processes(self) -> None:
        """Record the processes now running under this driver: Ray's servers, its agents, idle workers."""
        seen = {_identity(process) for process in psutil.Process().children(recursive=True)}
        seen.discard(None)  # ended meanwhile
        self.processes = sorted(seen.union(self.processes))
        self.save()

    def running(self) -> list[psutil.Process]:
        """This instance's processes that still run: those seen under its driver (the same pid and start
        time), and those whose environment carries its id (Ray's retitled processes, like its agents and
        workers, overwrite theirs)."""
        found = {process.pid: process for process in map(_running, self.processes) if process}
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):  # gone meanwhile, or another user's
                if process.pid != os.getpid() and process.environ().get(INSTANCE_VAR) == self.id:
                    found.setdefault(process.pid, process)
        return list(found.values())

    def stop(self) -> None:
        """Stop every process of this instance that still runs, then forget the instance."""
        _terminate(self.running())
        self.record.unlink(missing_ok=True)


def recorded() -> list[LocalInstance]:
    """Every instance on record for this user."""
    instances = []
    for path in records_dir().glob("*.json"):
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):  # unreadable: nothing to act on
            instances.append(LocalInstance.load(path))
    return instances


def stop_orphans() -> None:
    """Stop the processes of every recorded instance whose driver is dead (SIGKILLed, crashed)."""
    for instance in recorded():
        if _running(instance.driver) is None:
            instance.stop()


def _identity(process: psutil.Process) -> Identity | None:
    with contextlib.suppress(psutil.Error):
        return process.pid, process.create_time()
    return None


def _running(identity: Identity) -> psutil.Process | None:
    """The process ``identity`` names, if it still runs (a zombie has ended: only its exit status is left)."""
    pid, started = identity
    with contextlib.suppress(psutil.Error):
        process = psutil.Process(pid)
        if math.isclose(process.create_time(), started, abs_tol=0.01) and process.status() != psutil.STATUS_ZOMBIE:
            return process
    return None


def _terminate(processes: list[psutil.Process]) -> None:
    """SIGTERM, then SIGKILL whatever still runs STOP_GRACE_SECONDS later (psutil checks that each pid
    still names the process it found, so a reused pid is never signalled)."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=STOP_GRACE_SECONDS)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=STOP_GRACE_SECONDS)
