"""What a check is, and what it checks: a registered plugin with the options it is built with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from testbed.plugins.registry import Entry, Registry


@dataclass(frozen=True)
class Subject:
    """A registered optimizer, task or diagnostic under check, the registry that holds it, the
    validated options the behavioural checks build it with, and its declared defaults (the same,
    with the values of required options taken from ``options``)."""

    entry: Entry
    registry: Registry
    options: Mapping[str, Any]
    defaults: Mapping[str, Any]
    shared: dict[str, Any] = field(default_factory=dict, compare=False)  # what checks share, e.g. a run

    def once(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()``, computed once per subject: several checks read the same costly run."""
        if key not in self.shared:
            self.shared[key] = make()
        return self.shared[key]


@dataclass(frozen=True)
class Check:
    """One conformance check: its name, what passing means, and the function that runs it. The
    function returns a short note on what it did, or raises ``harness.Fault`` naming the fault."""

    name: str
    summary: str
    run: Callable[[Subject], str]
