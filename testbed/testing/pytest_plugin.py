"""testbed's pytest plugin (entry point ``pytest11``: ``testbed``): fixtures for testing testbed
plugins, thin wrappers of ``testbed.testing``.

- ``testbed_plugins(*plugins, builtins=True)``: a fresh ``PluginSet`` with those plugins loaded;
- ``tiny_config``: a fresh tiny raw config (a dict: mutate freely, or call ``testbed.testing.tiny_config``);
- ``run_tiny(config, plugins=None)``: the config run in this process under the test's ``tmp_path``;
- ``testbed_probe``: a real ``testbed.Probe`` at the initial point of a tiny model and task.

pytest loads this module in every test run of every project installed beside testbed, so it imports
nothing heavy: torch and testbed's engine load inside the fixtures, when a test asks for one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import pytest

if TYPE_CHECKING:
    from testbed.engine.probe import Probe
    from testbed.testing.experiments import TinyRun
    from testbed.testing.plugins import PluginSet


@pytest.fixture
def testbed_plugins() -> Callable[..., "PluginSet"]:
    """``testbed_plugins(*plugins, builtins=True, named=None)``: a fresh registry with ``plugins``
    (modules or objects) and the built-in plugins loaded (see ``testbed.testing.load_plugins``)."""
    from testbed.testing.plugins import load_plugins

    return load_plugins


@pytest.fixture
def tiny_config() -> dict[str, Any]:
    """A fresh copy of ``testbed.testing.TINY``: a raw config of one tiny run (2 layers, d = 3, n = 6,
    20 steps of 64 prompts, one seed)."""
    from testbed.testing.experiments import tiny_config

    return tiny_config()


@pytest.fixture
def run_tiny(tmp_path: Path) -> Callable[..., "TinyRun"]:
    """``run_tiny(config, plugins=None)``: run a raw config in this process under ``tmp_path/runs``
    with ``plugins`` (a PluginSet; default the built-in plugins) and return its ``TinyRun``."""
    from testbed.testing.experiments import run_tiny as run

    def run_config(config: Mapping[str, Any], plugins: "PluginSet | None" = None) -> "TinyRun":
        return run(config, tmp_path / "runs", plugins)

    return run_config


@pytest.fixture
def testbed_probe() -> "Probe":
    """A real ``testbed.Probe`` at the initial parameters of a tiny model on standard normal prompts
    (``testbed.testing.tiny_probe()``; call that for another task, size or dtype)."""
    from testbed.testing.probes import tiny_probe

    return tiny_probe()
