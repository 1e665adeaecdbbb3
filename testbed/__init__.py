"""testbed: a plugin-based optimizer testbed on linear Transformers (Ahn et al., ICLR 2024).

The public plugin API is what this module exports; built-in plugins use nothing else.
"""

import pluggy

from .errors import ConfigError, PluginError, TestbedError
from .options import REQUIRED, Option
from .tasks import Batch, Task

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("testbed")

__all__ = [
    "Batch",
    "ConfigError",
    "Option",
    "PluginError",
    "REQUIRED",
    "Task",
    "TestbedError",
    "__version__",
    "hookimpl",
]
