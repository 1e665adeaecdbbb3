"""Which code a plugin runs: whether it comes from a working tree, and a hash of its source.

A version names a release, but a plugin from a working tree changes under the same version as its
author edits it. A plugin counts as from a working tree when

- its distribution was installed from a local directory (PEP 610: ``dir_info`` in the distribution's
  ``direct_url.json``), editable or not: a non-editable install is a copy, but of whatever the
  directory held at the time, and an author who edits and reinstalls keeps the version; or
- it is a module named in $TESTBED_PLUGINS, which has no distribution at all.

Installs from an index, from a wheel or sdist file (``archive_info``: CI installs the wheel) or from a
VCS URL are releases: their version names their code. Objects handed to ``load_plugins(extra=...)``
live in one process and are not hashed either.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata as md
import json
import sys
from pathlib import Path

from testbed.errors import PluginError

TESTS = {"tests", "test"}  # folders of a plugin package whose files no run executes


def installed_from_directory(dist: md.Distribution | None) -> bool:
    """Whether ``dist`` was pip-installed from a local directory (editable or not), per the
    ``direct_url.json`` of any installed distribution of its name; False for a release or a
    distribution that does not say. Any of its name: run from a source tree, Python may find that
    tree's own build metadata (``testbed.egg-info``, no direct_url.json) before the installed one,
    and the same install must give the same run ids whichever copy of the metadata is found first."""
    if dist is None:
        return False
    return any(_direct_url_is_a_directory(found) for found in (dist, *md.distributions(name=dist.name)))


def _direct_url_is_a_directory(dist: md.Distribution) -> bool:
    text = dist.read_text("direct_url.json")
    if not text:
        return False
    try:
        data = json.loads(text)
    except ValueError:
        return False
    return isinstance(data, dict) and "dir_info" in data


def source_hash(module: str) -> str | None:
    """16 hex digits of the SHA-256 of the top-level package that holds ``module`` ("pkg.mod" or an
    entry point's "pkg.mod:attr"): every .py file in it, by relative path, sorted. The whole package,
    not one module: a helper in another file changes an update rule too. A top-level module that is
    no package hashes its own file; None if it has no file (built in, or gone). Test folders inside
    it are left out: editing a test changes no run."""
    top = module.split(":")[0].split(".")[0]
    imported = sys.modules.get(top) or importlib.import_module(top)  # loading the plugin imported it
    roots = [Path(root) for root in getattr(imported, "__path__", [])]  # a namespace package has several
    if roots:
        files = sorted((path.relative_to(root).as_posix(), path) for root in roots for path in root.rglob("*.py")
                       if not TESTS.intersection(path.relative_to(root).parts[:-1]))
    elif getattr(imported, "__file__", None):
        files = [(Path(imported.__file__).name, Path(imported.__file__))]
    else:
        return None
    digest = hashlib.sha256()
    for name, path in files:
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise PluginError(f"cannot read the source of plugin module {module!r}: {exc}") from None
        digest.update(f"{name}\0{len(content)}\0".encode())  # lengths: no two file sets hash alike
        digest.update(content)
    return digest.hexdigest()[:16]
