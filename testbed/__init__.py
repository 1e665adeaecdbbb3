"""testbed: a plugin-based optimizer testbed on linear Transformers (Ahn et al., ICLR 2024).

The public plugin API is what this module exports; built-in plugins use nothing else.
"""

import pluggy

from .diagnostics import Diagnostic, Figure, Histogram, Probe, Scalar, Schedule, Text, schedule_from, schedule_options
from .errors import ConfigError, PluginError, TestbedError
from .options import REQUIRED, Option
from .tasks import Batch, Task

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("testbed")

__all__ = [
    "Batch",
    "ConfigError",
    "Diagnostic",
    "Figure",
    "Histogram",
    "Option",
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
