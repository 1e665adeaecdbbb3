"""The versions a result records: testbed's, torch's and those of the plugins it used."""

from __future__ import annotations

import torch

from testbed import __version__
from testbed.plugins import Plugins


def core_versions() -> dict[str, str]:
    """The versions of testbed and torch, which every run depends on."""
    return {"testbed": __version__, "torch": torch.__version__}


def versions(plugins: Plugins) -> dict[str, str]:
    """Versions of testbed, torch and every loaded plugin: the provenance saved with results."""
    return {**core_versions(), **plugins.versions()}
