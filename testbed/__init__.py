"""testbed: a plugin-based optimizer testbed on linear Transformers (Ahn et al., ICLR 2024).

The public plugin API is what this module exports; built-in plugins use nothing else.

The names that need torch (tasks, diagnostics, the probe) load on first use, so that importing the
package, as the ``testbed`` command does first, is instant: a Ctrl-C while torch loads can then be
told from a crash (see ``testbed.cli.console``).
"""

import importlib
from typing import Any

import pluggy

from testbed.errors import ConfigError, PluginError, TestbedError
from testbed.options import REQUIRED, Option

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("testbed")

# Public names defined in modules that import torch: name -> module.
_LAZY = {
    "Batch": ".tasks",
    "Task": ".tasks",
    "LinearRegressionTask": ".tasks",
    **{name: ".diagnostics" for name in ("Diagnostic", "Figure", "Histogram", "Plot", "Scalar", "Schedule",
                                         "Text", "schedule_from", "schedule_options")},
    "Probe": ".engine.probe",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'testbed' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "Batch",
    "ConfigError",
    "Diagnostic",
    "Figure",
    "Histogram",
    "LinearRegressionTask",
    "Option",
    "Plot",
    "PluginError",
    "Probe",
    "REQUIRED",
    "Scalar",
    "Schedule",
    "Task",
    "TestbedError",
    "Text",
    "__version__",
    "hookimpl",
    "schedule_from",
    "schedule_options",
]
