"""What a process pays before its first step: loading the plugins (every `testbed` command, every
worker server) must not import scipy or matplotlib, which only some diagnostics' statistics and
figures need (a second or more at each start)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("scipy", "matplotlib")


def _heavy_modules_after(code: str) -> list[str]:
    """The scipy/matplotlib modules a fresh interpreter holds after running ``code``."""
    listing = f"import json, sys\nprint(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))"
    probe = f"{code}\n{listing}"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def test_loading_the_plugins_imports_neither_scipy_nor_matplotlib():
    assert _heavy_modules_after("from testbed.plugins import load_plugins\nload_plugins().require_healthy()") == []


def test_what_the_worker_server_preloads_imports_neither_scipy_nor_matplotlib():
    code = ("from testbed.plugins import load_plugins\n"
            "from testbed.experiment.executors.local import PRELOAD\n"
            "import importlib\n"
            "for name in [*PRELOAD, *load_plugins().entry_point_modules()]: importlib.import_module(name)")
    assert _heavy_modules_after(code) == []


def test_the_noise_statistics_still_load_scipy_when_computed():
    code = ("import torch\nfrom testbed_std import noise_stats\n"
            "noise_stats.summarize(torch.rand(100, generator=torch.Generator().manual_seed(0)), 0.1)")
    assert "scipy.stats" in _heavy_modules_after(code)
