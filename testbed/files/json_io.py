"""Strict JSON written atomically (no reader ever sees half a file, and a failed write leaves the old
one), and the conversion of values to what YAML and JSON write."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from testbed.errors import StorageError


def write_json(path: Path, data: Any) -> None:
    """Write strict JSON (inf and NaN become null) atomically, so no reader sees half a file. A
    write that fails (disk full) raises StorageError and leaves the file as it was."""
    text = json.dumps(json_safe(data), indent=2, allow_nan=False)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError.writing(path, exc) from None


def plain_data(value: Any, finite: bool = False) -> Any:
    """Mappings as dicts and tuples as lists, recursively: what YAML and JSON write. With ``finite``,
    inf and NaN become None too (strict JSON has no such numbers)."""
    if isinstance(value, Mapping):
        return {k: plain_data(v, finite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v, finite) for v in value]
    if finite and isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_safe(value: Any) -> Any:
    """``value`` as strict JSON can hold it: plain data, with inf and NaN as None."""
    return plain_data(value, finite=True)
