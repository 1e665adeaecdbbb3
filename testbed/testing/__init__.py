"""testbed.testing: what a plugin author tests a plugin with, public like the plugin API itself.

Load the plugin under test into a fresh registry, check what it registered, validate options and
build its optimizer, task or diagnostic exactly as the host does, run a tiny experiment in this
process and read its results, and measure a diagnostic on a real ``testbed.Probe``::

    from testbed.testing import load_plugins, run_tiny, tiny_config, tiny_probe
    import my_plugin

    def test_it_trains(tmp_path):
        plugins = load_plugins(my_plugin)                 # my_plugin + the built-in plugins
        assert plugins.optimizer("mine").options["beta"].default == 0.9
        run = run_tiny(tiny_config(optimizers=["mine"]), tmp_path, plugins)
        record = run.run("mine")
        assert record.status == "completed" and record.eval_losses[-1] < record.eval_losses[0]

Installed with testbed, it is also a pytest plugin (entry point ``pytest11``: ``testbed``) whose
fixtures wrap the same functions: ``testbed_plugins``, ``tiny_config``, ``run_tiny`` and
``testbed_probe`` (see ``testbed.testing.pytest_plugin``).

The names load on first use (torch with them), so that pytest loading this package as a plugin in
every project stays instant.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    **{name: "testbed.testing.plugins" for name in ("PluginSet", "Registration", "load_plugins")},
    **{name: "testbed.testing.experiments" for name in ("TINY", "RunRecord", "TinyRun", "run_tiny", "tiny_config")},
    **{name: "testbed.testing.probes" for name in ("tiny_probe", "with_update")},
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'testbed.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "PluginSet",
    "Registration",
    "RunRecord",
    "TINY",
    "TinyRun",
    "load_plugins",
    "run_tiny",
    "tiny_config",
    "tiny_probe",
    "with_update",
]
