"""The fixtures every test directory shares (tests/ for the core, plugins/testbed_std/tests/ for the
standard plugins): a clean plugin environment, the standard registry, tiny configs, YAML files and
throwaway plugin modules loaded through $TESTBED_PLUGINS.

A pytest plugin, not a conftest.py: pyproject's `pythonpath` and `-p shared_fixtures` load it for every
test wherever it lives, and a conftest.py at the repository root would put the checkout on sys.path
(so the tests would no longer run against the installed wheel)."""

from __future__ import annotations

import copy
import importlib
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from testbed.plugins import ENV_VAR, load_plugins
from testbed.plugins.registry import Registry

# A valid experiment small enough to run in a fraction of a second per run.
TINY: dict[str, Any] = {
    "name": "tiny",
    "task": {"name": "gamma", "d": 3, "n": 6, "options": {"shape": 0.5}},
    "model": {"layers": 2},
    "train": {"steps": 20, "batch_size": 64, "seeds": 2},
    "eval": {"every": 10, "batch_size": 64},
    "workers": 1,
    "optimizers": [
        {"name": "sgd", "lr": 0.01, "options": {"momentum": 0.9}},
        {"name": "adam", "lr": 0.01, "options": {"betas": [0.9, 0.9]}},
    ],
}


@pytest.fixture(autouse=True)
def _no_env_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only the installed plugins unless they set $TESTBED_PLUGINS themselves."""
    monkeypatch.delenv(ENV_VAR, raising=False)


@pytest.fixture(scope="session")
def registry() -> Registry:
    """The registry of the installed (standard) plugins."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(ENV_VAR, raising=False)
        return load_plugins().registry


@pytest.fixture
def tiny_raw() -> dict[str, Any]:
    """A fresh copy of the tiny raw config (mutate freely)."""
    return copy.deepcopy(TINY)


@pytest.fixture
def write_yaml(tmp_path: Path) -> Callable[..., Path]:
    """``write_yaml(data_or_text, name="config.yaml")``: write a YAML file under tmp_path."""

    def write(data: Any, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], str]]:
    """``plugin_module(name, source)``: write a module into tmp_path, put it on sys.path and name it
    in $TESTBED_PLUGINS (so spawned workers see it too); it is unloaded afterwards."""
    directory = tmp_path / "plugin_src"
    directory.mkdir()
    monkeypatch.syspath_prepend(str(directory))
    names: list[str] = []

    def make(name: str, source: str) -> str:
        (directory / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        names.append(name)
        monkeypatch.delitem(sys.modules, name, raising=False)
        monkeypatch.setenv(ENV_VAR, ",".join(names))
        return name

    yield make
    for name in names:
        sys.modules.pop(name, None)
