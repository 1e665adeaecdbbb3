#!/usr/bin/env python3
"""The hostile sweep of issue 11: well over a hundred cases of bad input and bad luck (configs,
files, signals, plugins, a full disk, concurrent invocations) against the real `testbed` command.

Each case sets up a directory of its own (a config, more files, throwaway plugin modules, a finished
experiment to tamper with), runs one or more `testbed` commands in it, may act while a command runs
(a signal to the driver, its process group or a worker; a second invocation; a deleted file) and
then checks the standards of issue 11 on every command:

- it exits 0, 1 or 130 (or exactly what the case demands), without a traceback or a crash;
- an exit 1 comes with exactly one "Error: ..." line on stderr;
- nothing a user computed is lost: a finished run's summary.json and an experiment's results.json
  that existed before the command still exist afterwards, or byte for byte under another name;
- it writes only where it may: `run` under its --logdir, `report` under its --out, `validate`
  nowhere. The working directory sits three levels below the case directory, so a path that
  climbs out of it is caught;
- a `run` that exits 0 leaves a fresh results.json with status complete, one that exits 130 a fresh
  one with status interrupted; no process of a command outlives it.

Usage (with the project's virtualenv active; only the standard library and the installed `testbed`
command are needed):

    python scripts/hostile_sweep.py                     # every case, 2 at a time: a markdown table
    python scripts/hostile_sweep.py --list              # the cases, by category
    python scripts/hostile_sweep.py --only sigterm --jobs 1 --json rows.json --keep

Cases share HOME and TESTBED_CACHE, so the compiled kernel is built once. Every command runs with
an address-space limit (--memory-gib, default 4) so that a case that allocates without bound fails
alone instead of taking the shared machine down. Exit status: 0 when every case passed, 1 when one failed, 2 when `testbed` cannot be started.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import copy
import glob
import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

# ====================================================================== what a case is

# Exit codes as a shell reports them: a process that died of signal n exits 128 + n. So a driver
# that ends itself by SIGINT after Ctrl-C (the Unix convention, which lets a calling script stop
# too) exits 130 like one that calls sys.exit(130).
OK_EXITS = frozenset({0, 1, 130})  # issue 11: every command ends with one of these
DONE = frozenset({0})
ERROR = frozenset({1})
STOPPED = frozenset({130})
KILLED = frozenset({128 + signal.SIGKILL})  # a process the case killed with SIGKILL

RUNS = "runs"  # the --logdir of every case (the default of `testbed run` is "runs" too)
CHECKPOINT = "runs/**/checkpoint.pt"  # "the run is under way": its first checkpoint exists
CRASH_MARKERS = ("Traceback (most recent call last)", "Fatal Python error", "Segmentation fault",
                 "core dumped", "munmap_chunk", "double free", "corrupted size")
FINISHED = ("completed", "diverged")
STATUSES = ("completed", "diverged", "failed", "interrupted")  # of a run
EXPERIMENT_STATUSES = ("complete", "interrupted", "failed")  # of results.json: failed = stopped by an error

When = Union[str, float]  # a glob (relative to the working directory) that must match, or seconds


@dataclass(frozen=True)
class Signal:
    """Send ``signum`` to the ``driver`` (its pid), its process ``group`` (what Ctrl-C in a terminal
    does) or one ``worker`` process, once ``when`` holds; ``again_after`` seconds later once more."""

    signum: int
    target: str = "driver"
    when: When = CHECKPOINT
    again_after: float | None = None

    def describe(self) -> str:
        return f"{signal.Signals(self.signum).name} to the {self.target}"


@dataclass(frozen=True)
class Concurrently:
    """Start a second command once ``when`` holds and wait for it (its outcome is checked too)."""

    step: "Step"
    when: When = CHECKPOINT

    def describe(self) -> str:
        return f"a concurrent `testbed {' '.join(self.step.argv)}`"


@dataclass(frozen=True)
class Delete:
    """Delete what matches ``pattern`` (relative to the working directory) once ``when`` holds."""

    pattern: str
    when: When = CHECKPOINT

    def describe(self) -> str:
        return f"deleting {self.pattern}"


Action = Union[Signal, Concurrently, Delete]


@dataclass(frozen=True)
class Step:
    """One `testbed` command line and what it must do."""

    argv: tuple[str, ...]
    exits: frozenset[int] = OK_EXITS
    during: tuple[Action, ...] = ()
    fsize: int | None = None  # RLIMIT_FSIZE: writes past this many bytes fail as on a full disk
    mentions: tuple[str, ...] = ()  # text its stderr must contain (case-insensitive)
    writes: tuple[str, ...] = ()  # places (relative to the working directory) it may write besides its own
    reap: bool = True  # kill what is left of its process group at once (False: give orphans time to stop)


def testbed(*argv: str, exits: frozenset[int] = OK_EXITS, during: Sequence[Action] = (), fsize: int | None = None,
            mentions: Sequence[str] = (), writes: Sequence[str] = (), reap: bool = True) -> Step:
    """A `testbed ARGV...` step."""
    return Step(tuple(argv), exits, tuple(during), fsize, tuple(mentions), tuple(writes), reap)


@dataclass(frozen=True)
class Tamper:
    """A change to the working directory between commands (or before the first one)."""

    what: str
    apply: Callable[[Path], None]


Stage = Union[Step, Tamper]
Check = Callable[["CaseRun"], list[str]]  # problems found after the last stage (empty: fine)


@dataclass(frozen=True)
class Case:
    name: str
    category: str  # configs | files | signals | plugins | disk | concurrency
    stages: tuple[Stage, ...]
    config: dict | str | bytes | None = None  # written to config.yaml (a dict as YAML)
    files: Mapping[str, str | bytes] = field(default_factory=dict)  # more files, relative paths
    plugins: Mapping[str, str] = field(default_factory=dict)  # module name -> source, via $TESTBED_PLUGINS
    prior: bool = False  # start with a finished copy of the tiny experiment in runs/tiny
    checks: tuple[Check, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


# ====================================================================== configs and YAML

TINY: dict[str, Any] = {  # tests/shared_fixtures.py's TINY: a fraction of a second per run
    "name": "tiny",
    "task": {"name": "gamma", "d": 3, "n": 6, "options": {"shape": 0.5}},
    "model": {"layers": 2},
    "train": {"steps": 20, "batch_size": 64, "seeds": 2},
    "eval": {"every": 10, "batch_size": 64},
    "workers": 1,
    "optimizers": [
        {"name": "sgd", "lr": 0.01, "options": {"momentum": 0.9}},
        {"name": "adam", "lr": 0.01, "options": {"betas": [0.9, 0.9]}},
    ],
}
DROP = object()  # as a value in ``tiny(...)``: remove the key


def tiny(changes: Mapping[str, Any] | None = None, base: Mapping[str, Any] = TINY) -> dict[str, Any]:
    """A copy of ``base`` with dotted-path ``changes`` (list items by index; DROP removes a key)."""
    config = copy.deepcopy(dict(base))
    for path, value in (changes or {}).items():
        *parents, last = path.split(".")
        node: Any = config
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        if isinstance(node, list):
            node[int(last)] = value
        elif value is DROP:
            node.pop(last, None)
        else:
            node[last] = value
    return config


# Long enough to be signalled mid-way: 3,000 steps, a checkpoint every 100.
LONG = tiny({"name": "long", "train.steps": 3000, "train.checkpoint_every": 100, "train.seeds": 1,
             "eval.every": 100})
LONG1 = tiny({"optimizers": TINY["optimizers"][:1]}, LONG)  # one run
LONG2 = tiny({"workers": 2, "train.seeds": 2}, LONG)  # 4 runs on 2 worker processes


def to_yaml(value: Any) -> str:
    """Block YAML for a config dict: one ``key: <flow value>`` line per top-level key. Floats are
    spelled so that PyYAML (YAML 1.1) reads them as floats: 1.0e-05, not 1e-05 (a string there)."""
    return "".join(f"{_flow(key)}: {_flow(item)}\n" for key, item in value.items())


def _flow(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _yaml_float(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_flow(k)}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as YAML")


def _yaml_float(value: float) -> str:
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value)
    mantissa, _, exponent = text.partition("e")
    if exponent and "." not in mantissa:
        text = f"{mantissa}.0e{exponent}"
    return text


# ====================================================================== tampering helpers

def put(rel: str, content: str | bytes) -> Tamper:
    """Write ``content`` at ``rel`` (replacing whatever is there)."""
    def apply(work: Path) -> None:
        path = work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        _clear(path)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return Tamper(f"write {rel}", apply)


def edit_json(rel: str, change: Callable[[Any], Any]) -> Tamper:
    """Replace the JSON at ``rel`` by ``change(data)``."""
    def apply(work: Path) -> None:
        path = work / rel
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return Tamper(f"edit {rel}", apply)


def link(rel: str, target: str) -> Tamper:
    """Make ``rel`` a symlink to ``target``; a relative target is taken from the working directory
    (made absolute), so ``../outside`` is next to it, outside every place a command may write."""
    def apply(work: Path) -> None:
        path = work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        _clear(path)
        destination = target if os.path.isabs(target) else os.path.normpath(work / target)
        os.symlink(destination, path)
    return Tamper(f"symlink {rel} -> {target}", apply)


def make_dir(rel: str) -> Tamper:
    def apply(work: Path) -> None:
        path = work / rel
        _clear(path)
        path.mkdir(parents=True)
    return Tamper(f"mkdir {rel}", apply)


def truncate(pattern: str, keep: float = 0.5) -> Tamper:
    """Cut every file matching ``pattern`` to ``keep`` of its size (a write killed half-way)."""
    def apply(work: Path) -> None:
        paths = glob.glob(str(work / pattern), recursive=True)
        if not paths:
            raise HarnessError(f"nothing matches {pattern} to truncate")
        for path in paths:
            os.truncate(path, int(os.path.getsize(path) * keep))
    return Tamper(f"truncate {pattern}", apply)


def _clear(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def pickle_payload(marker: str, zipped: bool) -> Callable[[Path], bytes]:
    """The bytes of a checkpoint.pt whose unpickling creates ``marker`` (relative to the case
    directory, outside the working directory): a raw pickle (torch's legacy format reads one before
    anything else) or torch's zip format with the payload as its data.pkl."""
    def make(work: Path) -> bytes:
        payload = pickle.dumps({"run_id": _Opener(str(case_dir_of(work) / marker))}, protocol=2)
        if not zipped:
            return payload
        with tempfile.SpooledTemporaryFile() as buffer:
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
                archive.writestr("archive/data.pkl", payload)
                archive.writestr("archive/byteorder", "little")
                archive.writestr("archive/version", "3\n")
            buffer.seek(0)
            return buffer.read()
    return make


class _Opener:
    """Unpickles as ``open(path, "w")``: code execution that leaves a file behind."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def put_made(rel: str, make: Callable[[Path], bytes], what: str) -> Tamper:
    def apply(work: Path) -> None:
        path = work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(make(work))
    return Tamper(what, apply)


# ====================================================================== checks after the last stage

def marker_absent(marker: str) -> Check:
    """The file a payload would create (relative to the case directory) does not exist."""
    def check(run: CaseRun) -> list[str]:
        return [f"{marker} exists: a payload was executed"] if (run.case_dir / marker).exists() else []
    return check


def kept_aside(rel: str, content: str | bytes) -> Check:
    """The bad ``content`` that was at ``rel`` still exists, there or under another name nearby."""
    data = content.encode() if isinstance(content, str) else content

    def check(run: CaseRun) -> list[str]:
        near = (run.work / rel).parent
        if any(path.read_bytes() == data for path in _files(near)):
            return []
        return [f"the bad {rel} was not kept aside (its bytes are gone)"]
    return check


def statuses(experiment: str, expected: Mapping[str, str], others: str | None = "completed") -> Check:
    """results.json of ``experiment`` gives each run key its ``expected`` status (the rest
    ``others``); each run's summary.json says the same; completed runs did every step."""
    def check(run: CaseRun) -> list[str]:
        results = _read_json(run.work / RUNS / experiment / "results.json")
        if not isinstance(results, dict) or not isinstance(results.get("runs"), list):
            return [f"{experiment}/results.json missing or not a results object"]
        problems = []
        steps = results.get("config", {}).get("train", {}).get("steps")
        for entry in results["runs"]:
            key, status = entry.get("key"), entry.get("status")
            want = expected.get(key, others)
            if want is not None and status != want:
                problems.append(f"run {key} is {status}, expected {want}")
            summary = _read_json(run.work / entry.get("run_dir", ""), "summary.json")
            if isinstance(summary, dict) and summary.get("status") != status:
                problems.append(f"run {key}: results.json says {status}, summary.json {summary.get('status')}")
            if status == "completed" and entry.get("steps_done") != steps:
                problems.append(f"run {key} completed after {entry.get('steps_done')} of {steps} steps")
        return problems
    return check


def resumed(experiment: str) -> Check:
    """Every run of ``experiment`` completed, at least one of them from a checkpoint."""
    def check(run: CaseRun) -> list[str]:
        results = _read_json(run.work / RUNS / experiment / "results.json")
        if not isinstance(results, dict):
            return [f"{experiment}/results.json missing after the rerun"]
        runs = results.get("runs", [])
        problems = [f"run {r.get('key')} is {r.get('status')} after the rerun" for r in runs
                    if r.get("status") != "completed"]
        if not any(r.get("resumed_from") for r in runs):
            problems.append("no run resumed from its checkpoint")
        return problems
    return check


def checkpoint_kept(experiment: str) -> Check:
    def check(run: CaseRun) -> list[str]:
        if list((run.work / RUNS / experiment).glob("**/checkpoint.pt")):
            return []
        return [f"no checkpoint.pt kept under {experiment} after the stop"]
    return check


def has_status(experiment: str, status: str) -> Check:
    """Some run of ``experiment`` has ``status`` (e.g. diverged)."""
    def check(run: CaseRun) -> list[str]:
        results = _read_json(run.work / RUNS / experiment / "results.json")
        runs = results.get("runs", []) if isinstance(results, dict) else []
        return [] if any(r.get("status") == status for r in runs) else [f"no {status} run in {experiment}"]
    return check


def no_tmp_files(run: CaseRun) -> list[str]:
    """No half-written *.tmp file is left behind."""
    left = sorted(str(p.relative_to(run.work)) for p in _files(run.work) if p.name.endswith(".tmp"))
    return [f"left behind: {', '.join(left)}"] if left else []


def _files(root: Path) -> list[Path]:
    return [Path(d) / f for d, _, names in os.walk(root) for f in names if not os.path.islink(Path(d) / f)]


def _read_json(*parts: Any) -> Any:
    try:
        return json.loads(Path(*parts).read_text())
    except (OSError, ValueError):
        return None


# ====================================================================== running a case

def work_dir(case_dir: Path) -> Path:
    """Where a case's commands run: three levels down, so a path climbing out of it is still in the
    case directory, where the fence sees it."""
    return case_dir / "up3" / "up2" / "up1" / "work"


def case_dir_of(work: Path) -> Path:
    """The case directory of a working directory (the inverse of ``work_dir``)."""
    return work.parents[3]


class HarnessError(Exception):
    """The harness could not set a case up (not a verdict on testbed)."""


@dataclass
class Outcome:
    """What one command did."""

    argv: tuple[str, ...]
    code: int | None  # None: it timed out
    seconds: float
    stdout: str
    stderr: str
    problems: list[str] = field(default_factory=list)

    def first_line(self) -> str:
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("Error:")]
        return (errors or lines or [""])[0]


@dataclass
class Row:
    """One line of the table."""

    name: str
    category: str
    exits: str
    verdict: str
    seconds: float
    stderr: str
    problems: list[str]

    @property
    def passed(self) -> bool:
        return self.verdict == "PASS"


@dataclass
class Settings:
    """How the sweep runs its cases."""

    base: Path  # every case directory is made under it
    timeout: float  # seconds any one command may take
    memory: int | None  # RLIMIT_AS of every command, bytes
    command: list[str]  # how to start `testbed`
    keep: bool = False


@dataclass
class CaseRun:
    """A case being run: its directories and what its commands did."""

    case: Case
    settings: Settings
    case_dir: Path
    outcomes: list[Outcome] = field(default_factory=list)
    deleted: set[str] = field(default_factory=set)  # paths the harness itself deleted (Delete actions)
    groups: list[int] = field(default_factory=list)  # process groups left to stop on their own

    @property
    def work(self) -> Path:
        return work_dir(self.case_dir)

    @property
    def harness(self) -> Path:  # logs and plugin sources: not watched by the fence
        return self.case_dir / "harness"


LAUNCHER = """\
import os, resource, signal, sys
fsize, memory = int(sys.argv[1]), int(sys.argv[2])
if fsize >= 0:
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
if memory >= 0:
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
for name in ("SIGINT", "SIGTERM"):  # as in a terminal, even when the sweep itself runs in the background
    signal.signal(getattr(signal, name), signal.SIG_DFL)
os.execv(sys.argv[3], sys.argv[3:])
"""
# Limits are set by this small launcher, which then execs testbed (same pid), rather than in a
# preexec_fn: cases run in parallel threads, and preexec_fn is not safe with threads.


def testbed_command() -> list[str]:
    """The installed `testbed` script next to this Python, else `python -m testbed.cli`."""
    script = Path(sys.executable).with_name("testbed")
    if script.exists():
        return [str(script)]
    found = shutil.which("testbed")
    return [found] if found else [sys.executable, "-m", "testbed.cli"]


def run_case(case: Case, settings: Settings) -> Row:
    """Set the case up, run its stages, check everything; never raises."""
    run = CaseRun(case, settings, settings.base / case.name)
    started = time.monotonic()
    problems: list[str] = []
    try:
        _set_up(run)
        for stage in case.stages:
            if isinstance(stage, Tamper):
                stage.apply(run.work)
                continue
            outcome = run_step(stage, run)
            if outcome.code is None:
                break  # a timeout: later stages would only add noise
        run.outcomes = [o for o in run.outcomes if o is not None]  # None: a command the harness never ran
        problems += [f"{_name(o, i)}: {p}" for i, o in enumerate(run.outcomes) for p in o.problems]
        problems += _wait_for_orphans(run)
        for check in case.checks:
            problems += check(run)
    except HarnessError as exc:
        problems.append(f"harness: {exc}")
    except Exception as exc:  # a harness bug must show in the table, not stop the sweep
        problems.append(f"harness: {type(exc).__name__}: {exc}")
    finally:
        _stop_groups(run.groups)
    run.outcomes = [o for o in run.outcomes if o is not None]
    row = Row(case.name, case.category, _exits(run.outcomes), "PASS" if not problems else f"FAIL: {problems[0]}",
              time.monotonic() - started, _shown_line(run.outcomes), problems)
    if row.passed and not settings.keep:
        shutil.rmtree(run.case_dir, ignore_errors=True)
    return row


def _name(outcome: Outcome, index: int) -> str:
    """``run#2``: the command and its place in the case."""
    return f"{outcome.argv[0] if outcome.argv else 'testbed'}#{index + 1}"


def _exits(outcomes: list[Outcome]) -> str:
    return "→".join("timeout" if o.code is None else str(o.code) for o in outcomes)


def _shown_line(outcomes: list[Outcome]) -> str:
    shown = next((o for o in outcomes if o.problems), outcomes[-1] if outcomes else None)
    return shown.first_line() if shown else ""


def _set_up(run: CaseRun) -> None:
    case = run.case
    if run.case_dir.exists():
        shutil.rmtree(run.case_dir)
    run.work.mkdir(parents=True)
    (run.harness / "plugins").mkdir(parents=True)
    if case.config is not None:
        text = to_yaml(case.config) if isinstance(case.config, dict) else case.config
        (run.work / "config.yaml").write_bytes(text.encode() if isinstance(text, str) else text)
    for rel, content in case.files.items():
        path = run.work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    for module, source in case.plugins.items():
        (run.harness / "plugins" / f"{module}.py").write_text(textwrap.dedent(source))
    if case.prior:
        shutil.copytree(prior_experiment(run.settings), run.work / RUNS, symlinks=True)


_PRIOR_LOCK = threading.Lock()


def prior_experiment(settings: Settings) -> Path:
    """A finished run of the tiny experiment (its ``runs`` directory), made once per sweep with the
    real CLI; cases copy it (its paths are relative, so a copy is the same experiment). Making it
    also reports on it once, so the kernel and matplotlib's caches exist before a case limits the
    size of the files a command may write."""
    with _PRIOR_LOCK:
        work = settings.base / "_prior" / "work"
        if (work / "report" / "report.md").exists():
            return work / RUNS
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        (work / "config.yaml").write_text(to_yaml(TINY))
        for argv in (["run", "config.yaml", "--logdir", RUNS], ["report", RUNS, "--out", "report"]):
            result = subprocess.run(_launch(settings, argv, None), cwd=work, env=_environment(None, {}, {}),
                                    capture_output=True, text=True, timeout=settings.timeout)
            if result.returncode != 0:
                raise HarnessError(f"the prior experiment's `testbed {argv[0]}` exited {result.returncode}: "
                                   f"{result.stderr.strip()[-300:]}")
        return work / RUNS


def _launch(settings: Settings, argv: Sequence[str], fsize: int | None) -> list[str]:
    memory = -1 if settings.memory is None else settings.memory
    return [sys.executable, "-c", LAUNCHER, str(-1 if fsize is None else fsize), str(memory),
            *settings.command, *argv]


def _environment(run: CaseRun | None, plugins: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TESTBED_PLUGINS"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ next to the plugin modules
    if run is not None and plugins:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(run.harness / "plugins"), env.get("PYTHONPATH")]))
        env["TESTBED_PLUGINS"] = ",".join(plugins)
    env.update(extra)
    return env


def run_step(step: Step, run: CaseRun, beside: Step | None = None) -> Outcome:
    """Run one command (and its actions), check it, and record its outcome in ``run``. A command
    started ``beside`` another may also write where that one does (the fence cannot tell who wrote)."""
    before = snapshot(run.case_dir, run.harness)
    finished = finished_artifacts(run.work)
    index = len(run.outcomes)
    run.outcomes.append(None)  # type: ignore[arg-type]  # keeps the order: concurrent ones come after
    started_ns, started = time.time_ns(), time.monotonic()
    # Pipes, not files: a file would count against the command's RLIMIT_FSIZE and cut its stderr.
    process = subprocess.Popen(_launch(run.settings, step.argv, step.fsize), cwd=run.work,
                               env=_environment(run, run.case.plugins, run.case.env), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    stdout, stderr = Drain(process.stdout), Drain(process.stderr)
    actions = ActionRunner(step, process, run)
    actions.start()
    try:
        code: int | None = process.wait(timeout=run.settings.timeout)
    except subprocess.TimeoutExpired:
        code = None
        _kill_group(process.pid)
        process.wait()
    actions.join()
    if code is not None and code < 0:
        code = 128 - code  # killed by signal -code
    outcome = Outcome(step.argv, code, time.monotonic() - started, stdout.text(), stderr.text())
    (run.harness / f"{index}.out").write_text(outcome.stdout)
    (run.harness / f"{index}.err").write_text(outcome.stderr)
    if code is None:  # the timeout, not the actions it cut short, is what happened
        outcome.problems.append(f"timed out after {run.settings.timeout:.0f} s")
    else:
        outcome.problems += actions.problems
        outcome.problems += command_problems(step, outcome)
        outcome.problems += fresh_results_problems(step, code, run.work, started_ns)
    if step.reap:
        outcome.problems += _reap(process.pid)
    else:
        run.groups.append(process.pid)
    outcome.problems += fence_problems(step, before, snapshot(run.case_dir, run.harness), run, beside)
    if "--force" not in step.argv:
        outcome.problems += lost_problems(finished, run.work)
    run.outcomes[index] = outcome
    return outcome


class Drain(threading.Thread):
    """Reads a command's pipe to its end. Orphaned workers may hold the pipe open after the command
    ended: ``text`` then waits a little and takes what came so far."""

    def __init__(self, pipe) -> None:
        super().__init__(daemon=True)
        self.pipe, self.data = pipe, bytearray()
        self.start()

    def run(self) -> None:
        for chunk in iter(lambda: self.pipe.read1(65536), b""):
            self.data += chunk
        self.pipe.close()

    def text(self, wait: float = 10.0) -> str:
        self.join(wait)
        return bytes(self.data).decode("utf-8", "replace")


def command_problems(step: Step, outcome: Outcome) -> list[str]:
    """Exit code, crash markers, the one Error line of an exit 1, the text it must mention."""
    problems = []
    if outcome.code not in step.exits:
        problems.append(f"exit {outcome.code}, expected {'/'.join(map(str, sorted(step.exits)))}")
    both = outcome.stdout + outcome.stderr
    for marker in CRASH_MARKERS:
        if marker in both:
            problems.append(f"{marker.split(' (')[0]} in its output")
    if outcome.code == 1:
        errors = [line for line in outcome.stderr.splitlines() if line.startswith("Error:")]
        if len(errors) != 1:
            problems.append(f"{len(errors)} 'Error:' lines on stderr, expected 1")
    for text in step.mentions:
        if text.lower() not in outcome.stderr.lower():
            problems.append(f"stderr does not mention {text!r}")
    return problems


def fresh_results_problems(step: Step, code: int, work: Path, started_ns: int) -> list[str]:
    """After `run`: exit 0 leaves a fresh complete results.json (or sweep.json), exit 130 an
    interrupted one; any results.json written is a well-formed results object."""
    if not step.argv or step.argv[0] != "run" or "--dry-run" in step.argv:
        return []
    logdir = work / _option(step.argv, "--logdir", RUNS)
    written = [p for p in _files(logdir) if p.stat().st_mtime_ns >= started_ns] if logdir.is_dir() else []
    fresh = [p for p in written if p.name in ("results.json", "sweep.json")]
    problems, status = [], set()
    for path in fresh:
        data = _read_json(path)
        if not isinstance(data, dict) or data.get("status") not in EXPERIMENT_STATUSES:
            problems.append(f"{path.relative_to(work)} is not a well-formed results file")
            continue
        status.add(data["status"])
        runs = data.get("runs", [])
        if path.name == "results.json" and not all(isinstance(r, dict) and r.get("status") in STATUSES for r in runs):
            problems.append(f"{path.relative_to(work)} has a run with an unknown status")
        if code == 0 and any(r.get("status") not in FINISHED for r in runs if isinstance(r, dict)):
            problems.append(f"exit 0 but {path.relative_to(work)} has failed or interrupted runs")
    if code == 0 and "complete" not in status:
        problems.append("exit 0 without a fresh results.json of status complete")
    started_training = any(p.name.startswith("events.out.tfevents.") for p in written)
    if code == 130 and started_training and "interrupted" not in status:  # stopped before it began: nothing to say
        problems.append("exit 130 without a fresh results.json of status interrupted")
    return problems


def _option(argv: Sequence[str], name: str, default: str) -> str:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


# ---------------------------------------------------------------- the fence: where a command may write

def snapshot(root: Path, skip: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (symlinks not followed): directories by existence, files and
    symlinks by size, mtime and inode."""
    entries: dict[str, tuple] = {}
    for directory, dirnames, filenames in os.walk(root):
        if Path(directory) == skip:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            rel = os.path.relpath(path, root)
            entries[rel] = ("dir",) if os.path.isdir(path) and not os.path.islink(path) else (
                "file", info.st_size, info.st_mtime_ns, info.st_ino)
    return entries


def allowed_roots(step: Step) -> list[str]:
    """Where a command may write, relative to the working directory."""
    command = step.argv[0] if step.argv else ""
    roots = list(step.writes)
    if command == "run":
        roots.append(_option(step.argv, "--logdir", RUNS))
    elif command == "report":
        roots.append(_option(step.argv, "--out", "report"))
    elif command == "reproduce":
        roots.append(_option(step.argv, "--out", "reproduction"))
    for action in step.during:
        if isinstance(action, Concurrently):
            roots += allowed_roots(action.step)
    return roots


def fence_problems(step: Step, before: dict[str, tuple], after: dict[str, tuple], run: CaseRun,
                   beside: Step | None = None) -> list[str]:
    work = os.path.relpath(run.work, run.case_dir)
    allowed = allowed_roots(step) + (allowed_roots(beside) if beside is not None else [])
    roots = [os.path.normpath(os.path.join(work, root)) for root in allowed]
    changed = {p for p in after if after[p] != before.get(p)} | {p for p in before if p not in after}
    outside = sorted(p for p in changed - run.deleted
                     if not any(p == root or p.startswith(root + os.sep) for root in roots))
    if not outside:
        return []
    shown = ", ".join(os.path.relpath(os.path.join(run.case_dir, p), run.work) for p in outside[:3])
    return [f"wrote outside where it may ({len(outside)} paths): {shown}"]


# ---------------------------------------------------------------- nothing finished is lost

def finished_artifacts(work: Path) -> dict[Path, bytes]:
    """Finished runs' summary.json and experiments' results.json, with their bytes."""
    kept: dict[Path, bytes] = {}
    for path in _files(work):
        if path.name not in ("summary.json", "results.json"):
            continue
        data = _read_json(path)
        if path.name == "summary.json" and isinstance(data, dict) and data.get("status") in FINISHED:
            kept[path] = path.read_bytes()
        elif path.name == "results.json" and isinstance(data, dict) and isinstance(data.get("runs"), list):
            kept[path] = path.read_bytes()
    return kept


def lost_problems(before: dict[Path, bytes], work: Path) -> list[str]:
    """Each finished artifact is still a finished artifact at its path, or its bytes still exist
    under another name (kept aside)."""
    if not before:
        return []
    now = finished_artifacts(work)
    lost = []
    everything: set[bytes] | None = None
    for path, data in before.items():
        if path in now:
            continue
        if everything is None:
            everything = {p.read_bytes() for p in _files(work)}
        if data not in everything:
            lost.append(str(path.relative_to(work)))
    return [f"lost finished results: {', '.join(sorted(lost)[:3])}"] if lost else []


# ---------------------------------------------------------------- processes

def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live children of ``pid``."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            children.append((int(entry), cmdline))
    return children


def _workers(driver: int) -> list[int]:
    """The driver's multiprocessing worker processes: its children, or those of its worker server
    (a forkserver, whose forked workers show the server's command line); not its resource tracker."""
    workers = []
    for pid, cmdline in _children(driver):
        if "multiprocessing.forkserver" in cmdline:
            workers += [worker for worker, _ in _children(pid)]
        elif "multiprocessing" in cmdline and "resource_tracker" not in cmdline:
            workers.append(pid)
    return sorted(workers)


def _writes_under(pid: int, root: Path) -> bool:
    """Whether process ``pid`` has a file under ``root`` open."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(root) + os.sep):
            return True
    return False


def _remove_while_written(path: Path, attempts: int = 50) -> None:
    """Delete ``path`` although a running command keeps creating files in it."""
    for _ in range(attempts):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        if not os.path.lexists(path):
            return
        time.sleep(0.02)
    raise HarnessError(f"could not delete {path.name} while the command wrote into it")


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _reap(pgid: int, grace: float = 5.0) -> list[str]:
    """Processes of a finished command's group still alive after ``grace`` seconds: a problem; they
    are killed."""
    deadline = time.monotonic() + grace
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _group_members(pgid)
    if not left:
        return []
    _kill_group(pgid)
    return [f"left {len(left)} process(es) running after it ended (pids {left[:4]})"]


def _wait_for_orphans(run: CaseRun, grace: float = 20.0) -> list[str]:
    """Groups whose orphans were left to stop on their own: they must be gone within ``grace``."""
    problems = []
    for pgid in run.groups:
        problems += _reap(pgid, grace)
    run.groups.clear()
    return problems


def _stop_groups(groups: list[int]) -> None:
    for pgid in groups:
        _kill_group(pgid)


# ---------------------------------------------------------------- actions while a command runs

class ActionRunner(threading.Thread):
    """Performs a step's actions in order while its command runs; an action whose moment never came
    (the command ended first) is a problem: the case did not test what it meant to."""

    def __init__(self, step: Step, process: subprocess.Popen, run: CaseRun) -> None:
        super().__init__(daemon=True)
        self.step, self.actions, self.process, self.case_run = step, step.during, process, run
        self.started = time.monotonic()
        self.problems: list[str] = []

    def run(self) -> None:
        for action in self.actions:
            if not self._wait(action.when):
                self.problems.append(f"harness: {action.describe()} never happened (the command ended first)")
                return
            try:
                self._perform(action)
            except HarnessError as exc:
                self.problems.append(f"harness: {exc}")
                return
            except Exception as exc:  # a harness bug: say so in the table, never hang the case
                self.problems.append(f"harness: {action.describe()} failed: {type(exc).__name__}: {exc}")
                return

    def _alive(self) -> bool:
        return self.process.poll() is None

    def _wait(self, when: When) -> bool:
        while self._alive():
            if isinstance(when, str):
                if glob.glob(str(self.case_run.work / when), recursive=True):
                    return True
            elif time.monotonic() - self.started >= when:
                return True
            time.sleep(0.05)
        return False

    def _perform(self, action: Action) -> None:
        if isinstance(action, Signal):
            self._signal(action)
            if action.again_after is not None:
                time.sleep(action.again_after)
                self._signal(action)
        elif isinstance(action, Concurrently):
            run_step(action.step, self.case_run, beside=self.step)
        else:
            for path in glob.glob(str(self.case_run.work / action.pattern), recursive=True):
                _remove_while_written(Path(path))
                self.case_run.deleted.add(os.path.relpath(path, self.case_run.case_dir))

    def _signal(self, action: Signal) -> None:
        pid = self.process.pid
        try:
            if action.target == "group":
                os.killpg(pid, action.signum)
            elif action.target == "worker":
                worker = self._busy_worker(pid)
                try:
                    os.kill(worker, action.signum)
                except ProcessLookupError:
                    raise HarnessError(f"worker {worker} ended before the signal") from None
            else:
                os.kill(pid, action.signum)
        except ProcessLookupError:
            pass  # the command ended a moment ago; its exit code tells

    def _busy_worker(self, driver: int) -> int:
        """A worker process in the middle of a run: one with a file under the working directory
        open (its run's event file)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self._alive():
            busy = [pid for pid in _workers(driver) if _writes_under(pid, self.case_run.work)]
            if busy:
                return busy[0]
            time.sleep(0.1)
        raise HarnessError("no worker process in the middle of a run to signal")


# ====================================================================== the cases

def config_case(name: str, config: dict | str | bytes, *mentions: str, command: str = "validate",
                exits: frozenset[int] = ERROR, extra: Sequence[str] = (), checks: Sequence[Check] = ()) -> Case:
    """One config through `testbed validate` (or `run`): by default it must exit 1 with one line."""
    argv = (command, "config.yaml", *extra) + (("--logdir", RUNS) if command == "run" else ())
    return Case(name, "configs", (testbed(*argv, exits=exits, mentions=mentions),), config=config,
                checks=tuple(checks))


def alias_bomb(depth: int = 9, width: int = 9) -> str:
    """YAML "billion laughs" as one flow value: a list whose last item expands to ``width ** depth``
    leaves, from a few hundred bytes of anchors and aliases."""
    levels = ["&b0 [" + ", ".join(["lol"] * width) + "]"]
    levels += [f"&b{i} [" + ", ".join([f"*b{i - 1}"] * width) + "]" for i in range(1, depth)]
    return "[" + ", ".join(levels) + "]"


def with_yaml(config: dict, old: str, new: str) -> str:
    """``config`` as YAML text with one piece of it replaced (for what a dict cannot say)."""
    text = to_yaml(config)
    if old not in text:
        raise ValueError(f"{old!r} is not in the YAML")
    return text.replace(old, new, 1)


TORCH_SGD = tiny({"optimizers.1": {"name": "torch", "lr": 0.01, "options": {"class": "SGD", "kwargs": {"momentum": 0.9}}}})


def config_cases() -> list[Case]:
    t = tiny
    bomb = alias_bomb()
    no_workers = to_yaml(tiny({"workers": DROP}))
    return [
        config_case("yaml-unclosed-bracket", "name: x\ntask: {name: gamma, d: 3\n", "malformed"),
        config_case("yaml-empty-file", ""),
        config_case("yaml-top-level-list", "- name: x\n- task: y\n"),
        config_case("yaml-not-utf8", b"\xff\xfe\x00n\x00a\x00m\x00e\x00"),
        config_case("yaml-python-object-apply", "!!python/object/apply:builtins.open ['../../../../marker-yaml', 'w']\n",
                    checks=[marker_absent("marker-yaml")]),
        config_case("yaml-python-name-tag", no_workers + "workers: !!python/name:os.system\n"),
        config_case("yaml-duplicate-key", to_yaml(TINY) + "workers: 2\n", "twice"),
        config_case("yaml-alias-bomb-unknown-key", to_yaml(TINY) + f"bomb: {bomb}\n"),
        config_case("yaml-alias-bomb-torch-kwargs", with_yaml(TORCH_SGD, '"momentum": 0.9', f'"foreach": {bomb}')),
        config_case("yaml-alias-bomb-torch-kwargs-run", with_yaml(TORCH_SGD, '"momentum": 0.9', f'"foreach": {bomb}'),
                    command="run"),
        config_case("yaml-alias-bomb-sweep-grid", to_yaml(TINY) + f"sweep: {{grid: {{train.seeds: {bomb}}}}}\n"),
        Case("config-file-missing", "configs", (testbed("validate", "nothere.yaml", exits=ERROR),)),
        config_case("unknown-top-level-key", t({"optimisers": []}), "optimisers"),
        config_case("unknown-task-key", t({"task.dim": 3}), "task.dim"),
        config_case("unknown-model-key", t({"model.depth": 3}), "model.depth"),
        config_case("unknown-train-key", t({"train.epochs": 3}), "train.epochs"),
        config_case("unknown-eval-key", t({"eval.often": 3}), "eval.often"),
        config_case("unknown-optimizer-key", t({"optimizers.0.momentum": 0.9}), "momentum"),
        config_case("unknown-optimizer-option", t({"optimizers.0.options.nesterov_typo": True}), "nesterov_typo"),
        config_case("unknown-task-option", t({"task.options.shap": 2.0}), "shap"),
        config_case("unknown-tune-key", t({"optimizers.0.tune": {"lr": [0.1, 0.01], "budget": 3}}), "budget"),
        config_case("unknown-diagnostic-key", t({"diagnostics": [{"name": "block_norms", "when": 3}]}), "when"),
        config_case("unknown-sweep-key", t({"sweep": {"grids": {"task.n": [4, 6]}}}), "grids"),
        config_case("unknown-feature-map-key", t({"model.feature_map": {"hidden": [4], "act": "relu"}}), "act"),
        config_case("unknown-optimizer-name", t({"optimizers.0.name": "sgdd"}), "sgdd"),
        config_case("unknown-task-name", t({"task.name": "gausian"}), "gausian"),
        config_case("unknown-diagnostic-name", t({"diagnostics": ["hessian_magic"]}), "hessian_magic"),
        config_case("type-task-d-word", t({"task.d": "three"}), "task.d"),
        config_case("type-steps-list", t({"train.steps": [20]}), "train.steps"),
        config_case("type-optimizers-mapping", t({"optimizers": {"name": "sgd", "lr": 0.1}}), "optimizers"),
        config_case("type-task-missing", t({"task": DROP}), "task"),
        config_case("value-lr-1e-3-unquoted", with_yaml(TINY, '"lr": 0.01', '"lr": 1e-3'), exits=OK_EXITS),
        config_case("value-torch-kwargs-1e-4-unquoted", with_yaml(TORCH_SGD, '"momentum": 0.9', '"dampening": 1e-4'),
                    exits=OK_EXITS),
        config_case("value-lr-nan", t({"optimizers.0.lr": float("nan")}), "lr"),
        config_case("value-lr-inf", t({"optimizers.0.lr": float("inf")}), "lr"),
        config_case("value-lr-negative", t({"optimizers.0.lr": -0.1}), "lr"),
        config_case("value-lr-above-float32", t({"optimizers.0.lr": 1e39}), "lr"),
        config_case("value-clip-nan", t({"train.clip_grad_norm": float("nan")}), "clip_grad_norm"),
        config_case("value-momentum-nan", t({"optimizers.0.options.momentum": float("nan")}), "momentum"),
        config_case("value-dtype-float16", t({"train.dtype": "float16"}), "dtype"),
        config_case("value-tune-grid-nan", t({"optimizers.0.tune": {"lr": [0.1, float("nan")]}}), "tune"),
        config_case("size-d-1e9", t({"task.d": 10**9}), "task.d"),
        config_case("size-n-1e9", t({"task.n": 10**9}), "task.n"),
        config_case("size-batch-1e12", t({"train.batch_size": 10**12}), "batch_size"),
        config_case("size-layers-1e6", t({"model.layers": 10**6}), "layers"),
        config_case("size-hidden-1e9", t({"model.feature_map": {"hidden": [10**9]}}), "hidden"),
        config_case("size-steps-1e18", t({"train.steps": 10**18}), "steps"),
        config_case("size-d-negative", t({"task.d": -3}), "task.d"),
        config_case("size-n-zero", t({"task.n": 0}), "task.n"),
        config_case("size-d-float", t({"task.d": 3.5}), "task.d"),
        config_case("size-steps-bool", t({"train.steps": True}), "steps"),
        config_case("size-d-null", t({"task.d": None}), "task.d"),
        config_case("seeds-count-1e9", t({"train.seeds": 10**9}), "seeds"),
        config_case("seeds-count-1e9-run", t({"train.seeds": 10**9}), "seeds", command="run"),
        config_case("seeds-repeated", t({"train.seeds": [0, 0]}), "seeds"),
        config_case("seeds-2-pow-63", t({"train.seeds": [2**63]}), "seeds"),
        config_case("eval-seed-2-pow-63", t({"eval.seed": 2**63}), "eval.seed"),
        config_case("eval-seed-2-pow-63-run", t({"eval.seed": 2**63}), "eval.seed", command="run"),
        config_case("diagnostic-seed-not-trained", t({"diagnostics": [{"name": "block_norms", "seeds": [7]}]}), "7"),
        config_case("sweep-1e6-points", t({"sweep": {"grid": {
            "optimizers.sgd.lr": [round(0.001 * (i + 1), 6) for i in range(1000)],
            "optimizers.adam.lr": [round(0.0001 * (i + 1), 7) for i in range(1000)]}}}), "sweep"),
        config_case("name-300-chars", t({"name": "x" * 300}), "name"),
        config_case("label-300-chars", t({"optimizers.0.label": "y" * 300}), "label"),
        config_case("name-path-traversal-run", t({"name": "../../../escape"}), "name", command="run"),
        config_case("name-absolute-path-run", t({"name": "/tmp/hostile-sweep-escape"}), "name", command="run",
                    checks=[path_absent("/tmp/hostile-sweep-escape")]),
        config_case("label-path-traversal-run", t({"optimizers.0.label": "../../x"}), "label", command="run"),
        config_case("sweep-point-path-traversal-run", t({"sweep": {"points": [{"task.options.shape": 0.5},
                                                                                {"task.name": "../../x"}]}}),
                    command="run"),
        config_case("set-without-equals", TINY, "train.steps", extra=("--set", "train.steps")),
        config_case("set-index-out-of-range", TINY, "range", extra=("--set", "optimizers.9.lr=0.1")),
        config_case("set-unparsable-value", TINY, "YAML", extra=("--set", "train.steps=[1,")),
        config_case("set-negative-steps-run", TINY, "steps", command="run", extra=("--set", "train.steps=-5")),
        config_case("set-seeds-1e9-run", TINY, "seeds", command="run", extra=("--set", "train.seeds=1000000000")),
        config_case("cli-workers-zero", TINY, "--workers", command="run", extra=("--workers", "0")),
        config_case("cli-unknown-executor", TINY, "--executor", command="run", extra=("--executor", "slurm")),
        config_case("cli-unknown-option", TINY, "--bogus", command="run", extra=("--bogus",)),
        Case("cli-run-without-config", "configs", (testbed("run", exits=ERROR),)),
        Case("cli-list-unknown-kind", "configs", (testbed("list", "widgets", exits=ERROR),)),
        Case("cli-reproduce-missing-suite", "configs",
             (testbed("reproduce", "--suite", "nosuchsuite", "--dry-run", "--out", "repro"),)),
        config_case("valid-run", TINY, command="run", exits=DONE),
        config_case("valid-sweep-run", t({"sweep": {"grid": {"optimizers.sgd.lr": [0.01, 0.02]}}}),
                    command="run", exits=DONE),
    ]


def path_absent(path: str) -> Check:
    def check(run: CaseRun) -> list[str]:
        return [f"{path} was written"] if os.path.lexists(path) else []
    return check


SUMMARY = "runs/tiny/sgd/seed-0/summary.json"
RESULTS = "runs/tiny/results.json"
GARBAGE = bytes(range(256)) * 4
RUN_TINY = ("run", "config.yaml", "--logdir", RUNS)


def changed(**values: Any) -> Callable[[Any], Any]:
    """A JSON edit: the object with ``values`` set."""
    def edit(data: dict) -> dict:
        return {**data, **values}
    return edit


def every_run(**values: Any) -> Callable[[Any], Any]:
    """A results.json edit: every run entry with ``values`` set."""
    def edit(data: dict) -> dict:
        return {**data, "runs": [{**run, **values} for run in data["runs"]]}
    return edit


def without(key: str) -> Callable[[Any], Any]:
    def edit(data: dict) -> dict:
        return {k: v for k, v in data.items() if k != key}
    return edit


def crafted_sweep(name: str | Callable[[Path], str]) -> Tamper:
    """Make the finished tiny experiment and a copy of it (sgd at another lr) two points of a sweep
    called ``name`` (or ``name(work)``), so that `testbed report` draws the sweep's lr-sensitivity
    figure, whose file name it builds from the sweep's name."""
    def apply(work: Path) -> None:
        shutil.copytree(work / RUNS / "tiny", work / RUNS / "tiny-b")
        sweep = name(work) if callable(name) else name
        for directory, lr in (("tiny", 0.01), ("tiny-b", 0.02)):
            path = work / RUNS / directory / "results.json"
            data = json.loads(path.read_text())
            runs = [{**run, "lr": lr} if run["label"] == "sgd" else run for run in data["runs"]]
            path.write_text(json.dumps({**data, "sweep": sweep, "point": {"optimizers.sgd.lr": lr}, "runs": runs}))
    return Tamper(f"a crafted sweep {name}", apply)


def outside(work: Path) -> str:
    """An absolute path outside the working directory (in the case directory, where the fence sees it)."""
    return str(case_dir_of(work) / "abs")


def move_run_out(work: Path) -> None:
    """A finished run directory moved outside the log directory, a symlink in its place."""
    shutil.move(str(work / "runs/tiny/sgd/seed-0"), str(work.parent / "moved"))
    os.symlink(work.parent / "moved", work / "runs/tiny/sgd/seed-0")


def garbage_event_files(work: Path) -> None:
    for path in glob.glob(str(work / "runs/tiny/*/seed-*/events.out.tfevents.*")):
        Path(path).write_bytes(GARBAGE)


SLOW_START = """
    import time
    from testbed import hookimpl

    @hookimpl
    def on_run_start(run):
        if run.label == "adamw":
            time.sleep(600)  # the harness kills the command meanwhile
"""
WITH_ADAMW = tiny({"optimizers": TINY["optimizers"] + [{"name": "adamw", "lr": 0.01}]})  # the tiny runs + one more


def file_cases() -> list[Case]:
    run_again = testbed(*RUN_TINY, exits=DONE)
    dry_run = testbed(*RUN_TINY, "--dry-run", exits=DONE)
    report = testbed("report", RUNS, "--out", "report")

    def bad_summary(name: str, content: str | bytes, step: Step = run_again) -> Case:
        return Case(name, "files", (put(SUMMARY, content), step), config=TINY, prior=True,
                    checks=(kept_aside(SUMMARY, content),))

    def edited(name: str, rel: str, edit: Callable[[Any], Any], *steps: Step) -> Case:
        return Case(name, "files", (edit_json(rel, edit), *steps), config=TINY, prior=True)

    def payload(name: str, marker: str, zipped: bool, *argv: str) -> Case:
        where = "runs/tiny/adam/seed-1/checkpoint.pt" if zipped else "runs/tiny/sgd/seed-0/checkpoint.pt"
        return Case(name, "files", (put_made(where, pickle_payload(marker, zipped), "a pickle payload"),
                                    testbed(*RUN_TINY, *argv, exits=DONE)), config=TINY, checks=(marker_absent(marker),))

    return [
        bad_summary("summary-garbage-bytes", GARBAGE),
        bad_summary("summary-empty", ""),
        bad_summary("summary-json-string", '"completed"'),
        bad_summary("summary-json-list", "[1, 2, 3]"),
        bad_summary("summary-json-string-dry-run", '"completed"', dry_run),
        bad_summary("summary-garbage-dry-run", GARBAGE, dry_run),
        edited("summary-eval-losses-null-then-report", SUMMARY, changed(eval_losses=None), run_again,
               testbed("report", RUNS, "--out", "report", exits=DONE)),
        edited("summary-final-loss-a-string-then-report", SUMMARY, changed(final_eval_loss="low"), run_again,
               testbed("report", RUNS, "--out", "report", exits=DONE)),
        edited("summary-unknown-status", SUMMARY, changed(status="splendid"), run_again),
        edited("summary-length-mismatch", SUMMARY, changed(eval_steps=[1]), run_again),
        Case("summary-symlink-outside", "files", (put("../outside.json", "{}"), link(SUMMARY, "../outside.json"),
                                                  run_again), config=TINY, prior=True),
        Case("results-symlink-outside", "files", (put("../outside.json", "{}"), link(RESULTS, "../outside.json"),
                                                  run_again), config=TINY, prior=True),
        Case("results-kept-when-rerun-killed", "files",
             (testbed(*RUN_TINY, exits=KILLED, during=[Signal(signal.SIGKILL, "group",
                                                              when="runs/tiny/adamw/seed-0/config.yaml")]),),
             config=WITH_ADAMW, prior=True, plugins={"slow_start": SLOW_START}),
        Case("results-garbage-then-run", "files", (put(RESULTS, GARBAGE), run_again), config=TINY, prior=True),
        Case("results-garbage-report", "files", (put(RESULTS, GARBAGE), report), prior=True),
        Case("results-truncated-report", "files", (truncate(RESULTS), report), prior=True),
        Case("results-json-list-report", "files", (put(RESULTS, "[1, 2]"), report), prior=True),
        edited("results-without-config-report", RESULTS, without("config"), report),
        edited("results-run-missing-fields-report", RESULTS, changed(runs=[{"label": "sgd"}, {}]), report),
        Case("results-sweep-traversal-report", "files", (crafted_sweep("../../x"), report), prior=True),
        Case("results-sweep-absolute-report", "files", (crafted_sweep(outside), report), prior=True),
        edited("results-experiment-slash-report", RESULTS, changed(experiment="a/../../b"), report),
        edited("results-experiment-dotdot-report", RESULTS, changed(experiment=".."), report),
        edited("results-label-traversal-report", RESULTS, every_run(label="../../lbl"), report),
        Case("report-dir-without-results", "files", (report,), files={"runs/notes.txt": "nothing here"}),
        Case("report-missing-dir", "files", (testbed("report", "nowhere", "--out", "report"),)),
        Case("report-out-under-regular-file", "files", (testbed("report", RUNS, "--out", "afile/report", exits=ERROR),),
             files={"afile": "a file"}, prior=True),
        Case("report-event-files-garbage", "files", (Tamper("garbage event files", garbage_event_files), report),
             prior=True),
        payload("checkpoint-pickle-raw-run", "marker-raw", False),
        payload("checkpoint-pickle-raw-dry-run", "marker-dry", False, "--dry-run"),
        payload("checkpoint-pickle-zip-run", "marker-zip", True),
        Case("checkpoint-garbage", "files", (put("runs/tiny/sgd/seed-0/checkpoint.pt", GARBAGE), run_again),
             config=TINY),
        Case("checkpoint-is-directory", "files", (make_dir("runs/tiny/sgd/seed-0/checkpoint.pt"), testbed(*RUN_TINY)),
             config=TINY),
        Case("checkpoint-truncated-then-rerun", "files",
             (testbed(*RUN_TINY, exits=STOPPED, during=[Signal(signal.SIGINT)]), truncate("runs/long/**/checkpoint.pt"),
              testbed(*RUN_TINY, exits=DONE)), config=LONG1),
        Case("symlinked-run-dir", "files", (put("../elsewhere/untouched.txt", "x"), link("runs/tiny/sgd/seed-0",
                                                                                         "../elsewhere"),
                                            testbed(*RUN_TINY, exits=ERROR)), config=TINY),
        Case("symlinked-experiment-dir", "files", (put("../elsewhere/untouched.txt", "x"), link("runs/tiny", "../elsewhere"),
                                                   testbed(*RUN_TINY, exits=ERROR)), config=TINY),
        Case("symlinked-finished-run-dir-force", "files",
             (Tamper("move a finished run out, a symlink in its place", move_run_out),
              testbed(*RUN_TINY, "--force", exits=ERROR)), config=TINY, prior=True),
        Case("dangling-symlink-run-dir", "files", (link("runs/tiny/sgd/seed-0", "../nowhere"),
                                                   testbed(*RUN_TINY, exits=ERROR)), config=TINY),
        Case("run-dir-is-a-file", "files", (put("runs/tiny/sgd/seed-0", "a file"), testbed(*RUN_TINY)), config=TINY),
        Case("experiment-dir-is-a-file", "files", (put("runs/tiny", "a file"), testbed(*RUN_TINY, exits=ERROR)),
             config=TINY),
        Case("sweep-json-garbage-rerun", "files",
             (testbed(*RUN_TINY, exits=DONE), put("runs/tiny/sweep.json", GARBAGE), testbed(*RUN_TINY, exits=DONE)),
             config=tiny({"sweep": {"grid": {"optimizers.sgd.lr": [0.01, 0.02]}}})),
        Case("experiment-config-garbage-rerun", "files", (put("runs/tiny/config.yaml", GARBAGE), run_again),
             config=TINY, prior=True),
    ]


def signal_cases() -> list[Case]:
    def stop(name: str, config: dict, action: Signal, exits: frozenset[int] = STOPPED, *then: Stage,
             checks: Sequence[Check] = ()) -> Case:
        return Case(name, "signals", (testbed(*RUN_TINY, exits=exits, during=[action]), *then), config=config,
                    checks=tuple(checks))

    rerun = testbed(*RUN_TINY, exits=DONE)
    kept = [checkpoint_kept("long")]
    return [
        stop("sigint-driver-workers-1", LONG, Signal(signal.SIGINT), checks=kept),
        stop("sigint-group-workers-1", LONG, Signal(signal.SIGINT, "group"), checks=kept),
        stop("sigint-driver-workers-2", LONG2, Signal(signal.SIGINT), checks=kept),
        stop("sigint-group-workers-2", LONG2, Signal(signal.SIGINT, "group"), checks=kept),
        stop("sigint-twice-workers-1", LONG, Signal(signal.SIGINT, "group", again_after=0.3)),
        stop("sigterm-driver-workers-1", LONG, Signal(signal.SIGTERM), checks=kept),
        stop("sigterm-driver-workers-2", LONG2, Signal(signal.SIGTERM), checks=kept),
        stop("sigterm-then-rerun-resumes", LONG, Signal(signal.SIGTERM), STOPPED, rerun, checks=[resumed("long")]),
        stop("sigint-then-rerun-resumes-workers-2", LONG2, Signal(signal.SIGINT), STOPPED, rerun,
             checks=[resumed("long")]),
        stop("sigkill-driver-then-rerun-workers-1", LONG, Signal(signal.SIGKILL), KILLED, rerun,
             checks=[resumed("long")]),
        stop("sigkill-group-then-rerun-workers-2", LONG2, Signal(signal.SIGKILL, "group"), KILLED, rerun,
             checks=[resumed("long")]),
        Case("sigkill-driver-only-then-rerun-workers-2", "signals",
             (testbed(*RUN_TINY, exits=KILLED, during=[Signal(signal.SIGKILL)], reap=False), rerun),
             config=LONG2, checks=(resumed("long"),)),
        stop("sigkill-one-worker", LONG2, Signal(signal.SIGKILL, "worker"), ERROR,
             checks=[statuses("long", {}, others=None), one_failed("long")]),
        stop("sigint-during-tuning", tiny({"optimizers.0.tune": {"lr": [0.01, 0.02], "steps": 3000}}, LONG),
             Signal(signal.SIGINT, when="runs/long/tuning/**/checkpoint.pt")),
        stop("sigint-during-startup", LONG, Signal(signal.SIGINT, "group", when=1.0), OK_EXITS),
    ]


def one_failed(experiment: str) -> Check:
    """Exactly one run failed (the killed worker's) and every other one completed."""
    def check(run: CaseRun) -> list[str]:
        results = _read_json(run.work / RUNS / experiment / "results.json")
        if not isinstance(results, dict):
            return [f"{experiment}/results.json missing"]
        counts = {s: sum(r.get("status") == s for r in results.get("runs", [])) for s in STATUSES}
        if counts["failed"] != 1 or counts["completed"] != len(results.get("runs", [])) - 1:
            return [f"expected one failed run and the rest completed, got {counts}"]
        return []
    return check


TASK_PLUGIN = """
    import torch
    from testbed import Batch, Task, hookimpl

    class Bad(Task):
        calls = 0

        def __init__(self, d, n):
            self.d, self.n = d, n

        def sample(self, batch_size, generator):
            Bad.calls += 1
            B, n, d = batch_size, self.n, self.d
            x = torch.randn(B, n + 1, d, generator=generator)
            y = torch.randn(B, n + 1, generator=generator)
            return RESULT

    @hookimpl
    def register_tasks(register):
        register("badtask", Bad, doc="returns what it should not")
"""
HOOK_PLUGIN = """
    import os, sys
    from testbed import hookimpl

    def chosen(run):
        return run.label == "adam" and run.seed == 1

    @hookimpl
    def HOOK:
        BODY
"""
OPTIMIZER_PLUGIN = """
    import torch
    from testbed import hookimpl

    class NanOpt(torch.optim.SGD):
        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    p.fill_(float("nan"))

    class Boom(torch.optim.SGD):
        def step(self, closure=None):
            raise RuntimeError("the optimizer broke")

    @hookimpl
    def register_optimizers(register):
        REGISTER
"""
BAD_TASK = tiny({"task": {"name": "badtask", "d": 3, "n": 6}})


def optimizer_source(register: str) -> str:
    """An optimizer plugin whose register hook runs ``register`` (one line)."""
    return OPTIMIZER_PLUGIN.replace("REGISTER", register)


def with_optimizer(name: str) -> dict:
    """TINY with its first optimizer entry replaced by the plugin's ``name``."""
    return tiny({"optimizers.0": {"name": name, "lr": 0.1}})


def plugin_case(name: str, source: str, step: Step, config: dict = TINY, checks: Sequence[Check] = (),
                env: Mapping[str, str] | None = None, modules: Sequence[str] = ("hostile",)) -> Case:
    return Case(name, "plugins", (step,), config=config, plugins={m: source for m in modules},
                checks=tuple(checks), env=env or {})


def task_case(name: str, result: str, config: dict = BAD_TASK, exits: frozenset[int] = ERROR,
              mentions: Sequence[str] = ("badtask",), env: Mapping[str, str] | None = None) -> Case:
    """A task plugin whose ``sample`` returns ``result`` (an expression over x, y, B, n, d)."""
    step = testbed(*RUN_TINY, exits=exits, mentions=mentions)
    return plugin_case(name, TASK_PLUGIN.replace("RESULT", result), step, config=config, env=env)


def hook_case(name: str, hook: str, body: str, exits: frozenset[int] = ERROR, config: dict = TINY,
              checks: Sequence[Check] = ()) -> Case:
    """A lifecycle-hook plugin: ``def <hook>: <body>``; ``chosen(run)`` is the run adam/seed-1."""
    source = HOOK_PLUGIN.replace("HOOK", hook).replace("BODY", body)
    return plugin_case(name, source, testbed(*RUN_TINY, exits=exits), config=config, checks=checks)


def plugin_cases() -> list[Case]:
    w2 = tiny({"workers": 2})
    adam1_failed = [statuses("tiny", {"adam/seed-1": "failed"})]
    validate = ("validate", "config.yaml")
    wide = "Batch(torch.randn(B, n + 1, 2 * d, generator=generator), y)"
    return [
        plugin_case("import-raises", "raise ImportError('this plugin needs a missing library')\n",
                    testbed(*RUN_TINY, exits=ERROR, mentions=("hostile",))),
        plugin_case("import-raises-plugins-command", "raise ImportError('missing library')\n",
                    testbed("plugins", exits=ERROR, mentions=("hostile",))),  # listed, then exit 1
        plugin_case("import-raises-list-command", "raise ImportError('missing library')\n",
                    testbed("list", "optimizers", exits=DONE)),
        plugin_case("syntax-error", "def broken(:\n", testbed(*validate, exits=ERROR, mentions=("hostile",))),
        Case("module-not-found", "plugins", (testbed(*RUN_TINY, exits=ERROR, mentions=("no_such_plugin",)),),
             config=TINY, env={"TESTBED_PLUGINS": "no_such_plugin"}),
        plugin_case("register-raises", optimizer_source("raise RuntimeError('registration broke')"),
                    testbed(*validate, exits=ERROR, mentions=("hostile",))),
        plugin_case("register-raises-plugins-command", optimizer_source("raise RuntimeError('broke')"),
                    testbed("plugins")),
        plugin_case("register-duplicate-standard-name", optimizer_source("register('adam', Boom)"),
                    testbed(*validate, exits=ERROR, mentions=("adam",))),
        plugin_case("register-same-name-two-modules", optimizer_source("register('mine', Boom)"),
                    testbed(*validate, exits=ERROR, mentions=("mine",)), modules=("one", "two")),
        plugin_case("register-bad-name", optimizer_source("register('Bad Name!', Boom)"),
                    testbed(*validate, exits=ERROR)),
        plugin_case("optimizer-factory-wrong-signature",
                    optimizer_source("register('badsig', lambda params: torch.optim.SGD(params, lr=0.1))"),
                    testbed(*validate, exits=ERROR, mentions=("badsig",)), config=with_optimizer("badsig")),
        plugin_case("optimizer-factory-returns-string", optimizer_source("register('strs', lambda params, lr: 'hi')"),
                    testbed(*validate, exits=ERROR, mentions=("optimizers[0]",)), config=with_optimizer("strs")),
        plugin_case("optimizer-step-raises", optimizer_source("register('boom', Boom)"),
                    testbed(*RUN_TINY, exits=ERROR), config=with_optimizer("boom")),
        plugin_case("optimizer-producing-nan", optimizer_source("register('nanopt', NanOpt)"),
                    testbed(*RUN_TINY, exits=DONE), config=with_optimizer("nanopt"),
                    checks=[has_status("tiny", "diverged")]),
        plugin_case("task-factory-wrong-signature", TASK_PLUGIN.replace("register(\"badtask\", Bad",
                                                                        "register(\"badtask\", lambda: Bad"),
                    testbed(*validate, exits=ERROR, mentions=("badtask",)), config=BAD_TASK),
        task_case("task-2d-features", wide),
        task_case("task-2d-features-workers-2", wide, config=tiny({"workers": 2}, BAD_TASK)),
        task_case("task-2d-features-torch-kernel", wide, env={"TESTBED_KERNEL": "torch"}),
        task_case("task-d-minus-1-features", "Batch(x[..., :-1].contiguous(), y)"),
        task_case("task-n-plus-6-tokens", "Batch(torch.randn(B, n + 7, d, generator=generator), "
                                          "torch.randn(B, n + 7, generator=generator))"),
        task_case("task-wrong-batch-size", "Batch(x[:-1], y[:-1])"),
        task_case("task-y-wrong-shape", "Batch(x, y[:, :-1])"),
        task_case("task-shapes-change-at-step-3", "Batch(x, y) if Bad.calls < 4 else Batch(x[..., :-1].contiguous(), y)"),
        task_case("task-returns-tuple", "(x, y)", mentions=()),
        task_case("task-returns-nan", "Batch(x * float('nan'), y)", exits=OK_EXITS, mentions=()),
        task_case("task-sample-raises", "1 / 0", mentions=()),
        hook_case("on-run-end-raises-workers-1", "on_run_end(run, status)",
                  "if chosen(run): raise RuntimeError('on_run_end broke')", checks=adam1_failed),
        hook_case("on-run-end-raises-workers-2", "on_run_end(run, status)",
                  "if chosen(run): raise RuntimeError('on_run_end broke')", config=w2, checks=adam1_failed),
        hook_case("on-step-end-raises", "on_step_end(run, step, metrics)",
                  "if chosen(run) and step == 5: raise RuntimeError('on_step_end broke')", checks=adam1_failed),
        hook_case("on-run-start-raises", "on_run_start(run)",
                  "if chosen(run): raise RuntimeError('on_run_start broke')", checks=adam1_failed),
        hook_case("os-exit-in-one-run-workers-2", "on_step_end(run, step, metrics)",
                  "if chosen(run) and step == 5: os._exit(3)", config=w2, checks=adam1_failed),
        hook_case("os-exit-in-one-run-workers-1", "on_step_end(run, step, metrics)",
                  "if chosen(run) and step == 5: os._exit(3)", checks=adam1_failed),
        hook_case("sys-exit-in-one-run-workers-1", "on_step_end(run, step, metrics)",
                  "if chosen(run) and step == 5: sys.exit(3)", exits=OK_EXITS),
        hook_case("misspelled-hook-name", "on_run_ended(run, status)", "pass", exits=OK_EXITS),
        hook_case("hook-wrong-argument-name", "on_step_end(run, step, metric)", "pass"),
    ]


def disk_cases() -> list[Case]:
    # Limits stay above a memory page: multiprocessing's shared memory is a file too (a harness
    # artefact, not a full disk). A tiny run writes ~5 KB of events, a checkpoint is ~22 KB.
    other = tiny({"name": "other", "train.steps": 300, "eval.every": 50})  # beside the finished tiny experiment
    w2 = tiny({"workers": 2}, other)
    clean = (no_tmp_files,)
    return [
        Case("fsize-20k-run-workers-1", "disk", (testbed(*RUN_TINY, exits=ERROR, fsize=20_000),), config=other,
             prior=True, checks=clean),
        Case("fsize-20k-run-workers-2", "disk", (testbed(*RUN_TINY, exits=ERROR, fsize=20_000),), config=w2,
             prior=True, checks=clean),
        Case("fsize-6k-run", "disk", (testbed(*RUN_TINY, exits=ERROR, fsize=6_000),), config=other, prior=True,
             checks=clean),
        Case("fsize-12k-checkpoint-every-10", "disk", (testbed(*RUN_TINY, exits=ERROR, fsize=12_000),),
             config=tiny({"train.checkpoint_every": 10}, other), checks=clean),
        Case("fsize-then-rerun-completes", "disk",
             (testbed(*RUN_TINY, exits=ERROR, fsize=20_000), testbed(*RUN_TINY, exits=DONE)), config=other,
             checks=clean),
        Case("fsize-rerun-keeps-results", "disk", (testbed(*RUN_TINY, exits=ERROR, fsize=4_500),),
             config=WITH_ADAMW, prior=True, checks=clean),
        Case("fsize-report", "disk", (testbed("report", RUNS, "--out", "report", exits=ERROR, fsize=3_000),),
             prior=True),
        Case("report-md-on-dev-full", "disk",
             (link("report/report.md", "/dev/full"), testbed("report", RUNS, "--out", "report", exits=ERROR)),
             prior=True),
        Case("report-out-in-proc", "disk", (testbed("report", RUNS, "--out", "/proc/testbed-report", exits=ERROR),),
             prior=True),
        Case("logdir-under-regular-file", "disk",
             (testbed("run", "config.yaml", "--logdir", "afile/runs", exits=ERROR),), config=TINY,
             files={"afile": "a file"}),
        Case("logdir-in-proc", "disk", (testbed("run", "config.yaml", "--logdir", "/proc/testbed-runs", exits=ERROR),),
             config=TINY),
        Case("experiment-config-on-dev-full", "disk",
             (link("runs/tiny/config.yaml", "/dev/full"), testbed(*RUN_TINY, exits=ERROR)), config=TINY),
    ]


def concurrency_cases() -> list[Case]:
    # The first command of a "twice at once" case runs far longer than the case: it is always
    # stopped with Ctrl-C once the second one is done, so a slow start of the second cannot find it
    # finished (and without a lock both would run until the timeout fails the case).
    endless = tiny({"name": "long", "train.steps": 1_000_000}, LONG)
    endless2 = tiny({"workers": 2, "train.seeds": 2}, endless)
    second = Concurrently(testbed(*RUN_TINY, exits=ERROR, mentions=("in use",)))
    stop_first = Signal(signal.SIGINT, when=0.0)
    short = tiny({"train.steps": 1000}, LONG1)
    beside = tiny({"name": "other"}, LONG1)
    return [
        Case("same-experiment-twice-workers-1", "concurrency",
             (testbed(*RUN_TINY, exits=STOPPED, during=[second, stop_first]),), config=endless,
             checks=(checkpoint_kept("long"),)),
        Case("same-experiment-twice-workers-2", "concurrency",
             (testbed(*RUN_TINY, exits=STOPPED, during=[second, stop_first]),), config=endless2,
             checks=(checkpoint_kept("long"),)),
        Case("same-experiment-twice-with-force", "concurrency",
             (testbed(*RUN_TINY, exits=STOPPED, during=[Concurrently(testbed(*RUN_TINY, "--force", exits=ERROR)),
                                                        stop_first]),), config=endless),
        Case("two-experiments-one-logdir", "concurrency",
             (testbed(*RUN_TINY, exits=DONE, during=[Concurrently(testbed("run", "other.yaml", "--logdir", RUNS,
                                                                          exits=DONE))]),),
             config=LONG1, files={"other.yaml": to_yaml(beside)}),
        Case("stale-lock-after-sigkill", "concurrency",
             (testbed(*RUN_TINY, exits=KILLED, during=[Signal(signal.SIGKILL, "group")]),
              testbed(*RUN_TINY, exits=DONE)), config=LONG1, checks=(resumed("long"),)),
        Case("stale-lock-two-takeovers-at-once", "concurrency",
             (testbed(*RUN_TINY, exits=KILLED, during=[Signal(signal.SIGKILL, "group")]),
              testbed(*RUN_TINY, during=[Concurrently(testbed(*RUN_TINY), when=0.0)])), config=LONG1,
             checks=(one_of_them_finished("long"),)),
        Case("dry-run-while-running", "concurrency",
             (testbed(*RUN_TINY, exits=STOPPED, during=[Concurrently(testbed(*RUN_TINY, "--dry-run", exits=DONE)),
                                                        stop_first]),), config=endless),
        Case("report-while-running", "concurrency",
             (testbed(*RUN_TINY, exits=STOPPED, during=[Concurrently(testbed("report", RUNS, "--out", "report")),
                                                        stop_first]),), config=endless),
        Case("delete-experiment-dir-while-running", "concurrency", (testbed(*RUN_TINY, during=[Delete("runs/long")]),),
             config=LONG),
        Case("delete-event-file-while-running", "concurrency",
             (testbed(*RUN_TINY, exits=DONE, during=[Delete("runs/long/sgd/seed-0/events.out.tfevents.*")]),),
             config=short),
        Case("delete-checkpoint-while-running", "concurrency",
             (testbed(*RUN_TINY, exits=DONE, during=[Delete(CHECKPOINT)]),), config=short),
        Case("delete-config-file-while-running", "concurrency",
             (testbed(*RUN_TINY, exits=DONE, during=[Delete("config.yaml")]),), config=short),
    ]


def one_of_them_finished(experiment: str) -> Check:
    """Of two commands racing for one experiment, one finished it: results.json is complete."""
    def check(run: CaseRun) -> list[str]:
        results = _read_json(run.work / RUNS / experiment / "results.json")
        if isinstance(results, dict) and results.get("status") == "complete":
            return []
        return [f"{experiment}/results.json is not complete after both commands ended"]
    return check


def all_cases() -> list[Case]:
    """Every case of the sweep, by category."""
    return config_cases() + file_cases() + signal_cases() + plugin_cases() + disk_cases() + concurrency_cases()


# ====================================================================== running the sweep

def run_sweep(cases: Sequence[Case], settings: Settings, jobs: int = 2,
              on_row: Callable[[Row], None] = lambda row: None) -> list[Row]:
    """Run ``cases``, ``jobs`` at a time; rows in the order of ``cases``."""
    settings.base.mkdir(parents=True, exist_ok=True)
    if any(case.prior or _limits_files(case) for case in cases):
        try:
            prior_experiment(settings)  # first, alone: it also fills the caches a file-size limit would break
        except (HarnessError, subprocess.TimeoutExpired) as exc:
            print(f"warning: {exc} (cases that start from it will fail)", file=sys.stderr)
    with cf.ThreadPoolExecutor(max(1, jobs)) as pool:
        futures = [pool.submit(run_case, case, settings) for case in cases]
        for future in cf.as_completed(futures):
            on_row(future.result())
        return [future.result() for future in futures]


def _limits_files(case: Case) -> bool:
    return any(isinstance(stage, Step) and stage.fsize is not None for stage in case.stages)


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| case | category | exit | verdict | s | stderr (first line) |", "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        cells = (row.name, row.category, row.exits, row.verdict, f"{row.seconds:.1f}", row.stderr)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    passed = sum(row.passed for row in rows)
    lines += ["", f"{passed} passed, {len(rows) - passed} failed"]
    return "\n".join(lines)


def _cell(text: str, width: int = 140) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def select(cases: Sequence[Case], only: str | None) -> list[Case]:
    return [c for c in cases if only is None or only in c.name or only == c.category]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    parser.add_argument("--only", help="only the cases whose name contains this text (or of this category)")
    parser.add_argument("--list", action="store_true", help="list the cases and stop")
    parser.add_argument("--json", dest="json_path", help="also write the rows to this JSON file")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds any one command may take (default 120)")
    parser.add_argument("--memory-gib", type=float, default=4.0,
                        help="address-space limit of every command, GiB (default 4; 0: none)")
    parser.add_argument("--workdir", help="where the case directories go (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the directories of passing cases too")
    args = parser.parse_args(argv)
    cases = select(all_cases(), args.only)
    if args.list:
        for case in cases:
            print(f"{case.category:12} {case.name}")
        print(f"{len(cases)} cases")
        return 0
    command = testbed_command()
    check = subprocess.run([*command, "--version"], capture_output=True, text=True)
    if check.returncode != 0:  # e.g. run with a Python that has no testbed installed
        last = (check.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"error: `{' '.join(command)} --version` failed: {last}\n"
              "Run the sweep with the project's virtualenv active.", file=sys.stderr)
        return 2
    base = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="hostile-sweep-"))
    memory = int(args.memory_gib * 2**30) if args.memory_gib > 0 else None
    settings = Settings(base.resolve(), args.timeout, memory, command, args.keep)
    print(f"{len(cases)} cases in {settings.base}, {args.jobs} at a time", file=sys.stderr)
    done = [0]

    def progress(row: Row) -> None:
        done[0] += 1
        print(f"[{done[0]}/{len(cases)}] {row.verdict[:4]} {row.name} ({row.seconds:.0f} s)", file=sys.stderr)

    rows = run_sweep(cases, settings, args.jobs, progress)
    print(markdown_table(rows))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps([row.__dict__ for row in rows], indent=2))
    failed = [row for row in rows if not row.passed]
    if failed:
        print(f"failed cases keep their directories under {settings.base}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
