"""Which plugins to check (names as a user gives them) and running their checks: one outcome per
check, PASS or FAIL with a message naming the fault, or SKIP for a plugin that cannot be built
without a value no one gave. A check that raises is a FAIL naming the exception, never a traceback."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

from testbed.conformance import diagnostics, optimizers, tasks
from testbed.conformance.harness import Fault, checked_options, global_rng_watch, missing_required
from testbed.conformance.subject import Check, Subject
from testbed.errors import ConfigError
from testbed.options import REQUIRED, validate_options
from testbed.plugins import Plugins
from testbed.plugins.registry import Entry, Registry

CHECKS: dict[str, tuple[Check, ...]] = {"optimizer": optimizers.CHECKS, "task": tasks.CHECKS,
                                        "diagnostic": diagnostics.CHECKS}
CHECKED_KINDS = tuple(CHECKS)


@dataclass(frozen=True)
class Outcome:
    """The outcome of one check of one plugin: status PASS, FAIL or SKIP, and what it found."""

    kind: str
    name: str
    check: str
    status: str
    message: str

    @property
    def failed(self) -> bool:
        """Whether the check failed."""
        return self.status == "FAIL"

    def line(self) -> str:
        """``PASS optimizer NAME  resume: ...``: the console line."""
        return f"{self.status} {self.kind} {self.name}  {self.check}: {self.message}"


# ------------------------------------------------------------------ names
def resolve_names(names: Iterable[str], registry: Registry) -> list[Entry]:
    """The entries ``names`` mean (``NAME`` or ``KIND:NAME``); an unknown or ambiguous name is a
    ConfigError that says what is registered, or how to say which is meant."""
    return [_resolve(name, registry) for name in names]


def all_entries(registry: Registry) -> list[Entry]:
    """Every registered optimizer, task and diagnostic, by kind and name."""
    return [entry for kind in CHECKED_KINDS for entry in registry.list(kind)]


def _resolve(name: str, registry: Registry) -> Entry:
    kind, _, bare = name.rpartition(":")
    if kind:
        if kind not in CHECKED_KINDS:
            raise ConfigError(f"{name!r}: {kind!r} is not one of {', '.join(CHECKED_KINDS)}")
        entry = registry.entries[kind].get(bare)
        if entry is None:
            raise ConfigError(f"unknown {kind} {bare!r}; registered: {registry.available(kind)}")
        return entry
    found = [registry.entries[k][bare] for k in CHECKED_KINDS if bare in registry.entries[k]]
    if not found:
        known = "; ".join(f"{k}s: {', '.join(e.name for e in registry.list(k)) or 'none'}" for k in CHECKED_KINDS)
        raise ConfigError(f"no optimizer, task or diagnostic is registered as {bare!r} ({known})")
    if len(found) > 1:
        which = " or ".join(f"{entry.kind}:{bare}" for entry in found)
        raise ConfigError(f"{bare!r} is registered as {' and as '.join(f'a {e.kind}' for e in found)}: say which, "
                          f"{which}")
    return found[0]


def validate_given(entries: list[Entry], given: Mapping[str, Any]) -> None:
    """A ConfigError if options given on the command line are not valid options of each entry."""
    for entry in entries:
        schema, where = entry.config_options, f"{entry.kind} {entry.name!r} options"
        unknown = sorted(set(given) - set(schema))
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown option (known options: {', '.join(sorted(schema)) or 'none'})")
        validate_options({name: schema[name] for name in given}, given, where)


def load_failures(plugins: Plugins) -> list[Outcome]:
    """A FAIL outcome for every plugin that failed to load (what it might register goes unchecked)."""
    return [Outcome("plugin", info.name, "loads", "FAIL", f"{info.error} (distribution {info.distribution} "
                    f"{info.version})") for info in plugins.failed]


# ------------------------------------------------------------------ running the checks
def check_entries(entries: Iterable[Entry], registry: Registry, given: Mapping[str, Any] | None = None
                  ) -> Iterator[Outcome]:
    """The outcome of every check of every entry, in order, as each finishes. ``given``: option
    values over the plugins' defaults and check_options (validated by ``validate_given``)."""
    for entry in entries:
        yield from check_entry(entry, registry, given or {})


def check_entry(entry: Entry, registry: Registry, given: Mapping[str, Any]) -> Iterator[Outcome]:
    """The outcomes of the checks of one registered plugin."""
    missing = missing_required(entry, given)
    if missing:
        yield Outcome(entry.kind, entry.name, "all checks", "SKIP",
                      f"its required option {missing[0]!r} has no default and no check_options value; give one: "
                      f"testbed check {entry.kind}:{entry.name} -o {missing[0]}=VALUE")
        return
    try:
        options = checked_options(entry, given)
        required = {name: options[name] for name, option in entry.options.items() if option.default is REQUIRED}
        defaults = validate_options(entry.config_options, required, f"{entry.kind} {entry.name!r} options")
    except ConfigError as exc:
        yield Outcome(entry.kind, entry.name, "options", "FAIL", f"its check_options are not valid options: {exc}")
        return
    subject = Subject(entry, registry, options, defaults)
    for check in CHECKS[entry.kind]:
        yield run_check(check, subject)


def run_check(check: Check, subject: Subject) -> Outcome:
    """One check's outcome. The global random states are put back afterwards, so a plugin that draws
    from them disturbs no other check."""
    entry = subject.entry
    try:
        with global_rng_watch():
            note = check.run(subject)
    except Fault as fault:
        return Outcome(entry.kind, entry.name, check.name, "FAIL", str(fault))
    except Exception as exc:  # the plugin's code raised: a fault too, reported on one line
        return Outcome(entry.kind, entry.name, check.name, "FAIL", f"raised {type(exc).__name__}: {exc}")
    return Outcome(entry.kind, entry.name, check.name, "PASS", f"{check.summary} ({note})")


def summary(outcomes: list[Outcome]) -> str:
    """``12 checks of 2 plugins: 11 passed, 1 failed (optimizer x: resume)``."""
    plugins = len({(o.kind, o.name) for o in outcomes})
    counts = {status: sum(o.status == status for o in outcomes) for status in ("PASS", "FAIL", "SKIP")}
    text = (f"{len(outcomes)} checks of {plugins} plugin{'s' * (plugins != 1)}: {counts['PASS']} passed, "
            f"{counts['FAIL']} failed")
    if counts["SKIP"]:
        text += f", {counts['SKIP']} skipped"
    failed = [f"{o.kind} {o.name}: {o.check}" for o in outcomes if o.failed]
    return text + (f" ({'; '.join(failed)})" if failed else "")
