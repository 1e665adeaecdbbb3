"""Strict JSON written atomically: no reader ever sees half a file, and a failed write leaves the old one."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

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


def json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
