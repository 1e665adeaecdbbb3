"""Typed, validated options for plugins (optimizers, tasks, diagnostics).

A plugin declares its options as ``{name: Option(default, doc, ...)}``; the host validates the
user's YAML mapping against that schema before anything runs, so a plugin receives typed values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from testbed.errors import ConfigError

REQUIRED = object()  # sentinel default: the user must give the option


@dataclass(frozen=True)
class Option:
    """One option of a plugin.

    ``type`` is one of float, int, bool, str, list (of floats or ints, see ``item``), dict (free
    mapping, validated by the plugin's own ``check``) and is inferred from the default when omitted.
    """

    default: Any = REQUIRED
    doc: str = ""
    type: type | None = None
    item: type | None = None  # element type for list options
    length: int | None = None  # exact length for list options
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    choices: Sequence[Any] | None = None
    nullable: bool = False
    check: Callable[[Any], None] | None = field(default=None, compare=False)

    def value_type(self) -> type:
        """The type a value must have: ``type`` if given, else the default's type."""
        if self.type is not None:
            return self.type
        if self.default is REQUIRED or self.default is None:
            raise TypeError("an Option without a default needs an explicit type")
        return type(self.default)

    def describe(self) -> str:
        """A short human description, for `testbed list`: type, default and every declared bound
        (``"float, default 0.5, in (0.0, 1.0]. doc"``)."""
        kind = self.value_type().__name__
        if self.item is not None:
            kind = f"list[{self.item.__name__}]"
        if self.length is not None:
            kind += f" of {self.length}"
        default = "required" if self.default is REQUIRED else f"default {self.default!r}"
        parts = [kind, default]
        bounds = self.bounds()
        if bounds:
            parts.append(f"each {bounds}" if self.item is not None or self.length is not None else bounds)
        if self.choices:
            parts.append(f"one of {', '.join(map(str, self.choices))}")
        if self.nullable and self.default is not None:  # a None default says so already
            parts.append("or null")
        return f"{', '.join(parts)}. {self.doc}".strip()

    def bounds(self) -> str:
        """The declared range as text: ``">= 0.0"``, ``"> 0.0"``, ``"<= 1"``, ``"in (0.0, 1.0]"``, or ``""``."""
        low = ">" if self.min_exclusive else ">="
        if self.min is not None and self.max is not None:
            return f"in {'(' if self.min_exclusive else '['}{self.min}, {self.max}]"
        if self.min is not None:
            return f"{low} {self.min}"
        if self.max is not None:
            return f"<= {self.max}"
        return ""


def _coerce_number(value: Any, kind: type, where: str) -> Any:
    # PyYAML reads "1e-3" (no dot) as a string; accept numeric strings for numeric options.
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected {kind.__name__}, got a boolean ({value!r})")
    if isinstance(value, str):
        try:
            value = float(value)  # "1e3" is a float string even for an int option
        except ValueError:
            raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}") from None
    if kind is float and isinstance(value, int):
        try:
            return float(value)
        except OverflowError:  # an integer beyond float's range, e.g. 10^400
            raise ConfigError(f"{where}: expected a finite number, got an integer too large for a float") from None
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, kind):
        raise ConfigError(f"{where}: expected {kind.__name__}, got {type(value).__name__} ({value!r})")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return value


def _check_bounds(option: Option, value: Any, where: str) -> None:
    if option.min is not None:
        too_small = value <= option.min if option.min_exclusive else value < option.min
        if too_small:
            relation = ">" if option.min_exclusive else ">="
            raise ConfigError(f"{where}: must be {relation} {option.min}, got {value!r}")
    if option.max is not None and value > option.max:
        raise ConfigError(f"{where}: must be <= {option.max}, got {value!r}")


def coerce_option(option: Option, value: Any, where: str) -> Any:
    """Return ``value`` converted to the option's type, or raise ConfigError naming ``where``."""
    if value is None:
        if option.nullable:
            return None
        raise ConfigError(f"{where}: a value is required (got null)")
    kind = option.value_type()
    if kind in (float, int):
        value = _coerce_number(value, kind, where)
        _check_bounds(option, value, where)
    elif kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
    elif kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
    elif kind in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if option.length is not None and len(value) != option.length:
            raise ConfigError(f"{where}: expected a list of {option.length} values, got {len(value)}")
        item = option.item or float
        value = [_coerce_number(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        for i, v in enumerate(value):
            _check_bounds(option, v, f"{where}[{i}]")
    elif kind is object:  # any value; the owner validates it
        pass
    elif kind is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        value = dict(value)
    else:  # pragma: no cover - a plugin author's mistake, caught at registration
        raise TypeError(f"unsupported option type {kind!r}")
    if option.choices is not None and value not in option.choices:
        choices = ", ".join(map(str, option.choices))
        raise ConfigError(f"{where}: must be one of {choices}, got {value!r}")
    if option.check is not None:
        try:
            option.check(value)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return value


def validate_options(schema: Mapping[str, Option], given: Any, where: str) -> dict[str, Any]:
    """Validate a user's options mapping against ``schema``; fill defaults; reject unknown keys."""
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise ConfigError(f"{where}: expected a mapping of options, got {given!r}")
    unknown = sorted(set(given) - set(schema))
    if unknown:
        known = ", ".join(sorted(schema)) or "none"
        raise ConfigError(f"{where}.{unknown[0]}: unknown option (known options: {known})")
    resolved = {}
    for name, option in schema.items():
        if name in given:
            resolved[name] = coerce_option(option, given[name], f"{where}.{name}")
        elif option.default is REQUIRED:
            raise ConfigError(f"{where}.{name}: required option is missing")
        else:
            resolved[name] = option.default
    return resolved
