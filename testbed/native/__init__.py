"""Native code: C++ sources compiled on first use with the system C++ compiler, one shared library per
source, cached by the source's hash, the flags and the CPU. The lowest layer: it imports nothing of
testbed, so that the task API (prompt sampling) and the model (attention kernels) can both build on
it. Without a compiler, or with TESTBED_KERNEL=torch, ``compiled_library`` returns None and every
caller takes its torch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-std=c++17", "-shared", "-fPIC"]
# The element types the kernel is compiled for, and the suffix of their entry points.
DTYPES = {torch.float32: "f32", torch.float64: "f64"}


def cache_dir() -> Path:
    """Where compiled kernels are kept: $TESTBED_CACHE/kernels, else ~/.cache/testbed/kernels."""
    root = os.environ.get("TESTBED_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "testbed")
    return Path(root) / "kernels"


def _cpu_fingerprint() -> str:
    # -march=native code is only valid on the CPU model it was built for.
    try:
        with open("/proc/cpuinfo") as f:
            lines = [l for l in f if l.startswith(("model name", "flags"))][:2]
        return "".join(lines)
    except OSError:
        return platform.processor()


def _library_path(source: Path, compiler: str, flags: list[str]) -> Path:
    key = hashlib.sha256()
    for part in (source.read_bytes(), " ".join(flags).encode(), compiler.encode(),
                 platform.machine().encode(), _cpu_fingerprint().encode()):
        key.update(part)
    return cache_dir() / f"{source.stem}-{key.hexdigest()[:16]}.so"


def _compile(source: Path, compiler: str, flags: list[str], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: parallel workers may compile at the same time.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *flags, "-o", tmp, str(source)], check=True, capture_output=True, timeout=120)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def compiled_library(source: Path, signatures: dict[str, list], extra_flags: tuple[str, ...] = (),
                     typed: bool = True) -> ctypes.CDLL | None:
    """The library built from the C++ file ``source`` (compiled once per source, flags and CPU, then
    kept in ``cache_dir()``), or None when kernels are disabled (TESTBED_KERNEL=torch) or cannot be
    built here. ``signatures`` maps each entry point's name, without its dtype suffix when ``typed``
    (one entry point per type in DTYPES), to its ctypes argument types; every one returns an int
    status (0: done, else out of memory). ``extra_flags`` go to the compiler after FLAGS."""
    if os.environ.get("TESTBED_KERNEL", "c") == "torch":
        return None
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        return None
    flags = [*FLAGS, *extra_flags]
    try:  # a source missing from an install (tests/test_install.py checks they ship) falls back too
        target = _library_path(source, compiler, flags)
        if not target.exists():
            _compile(source, compiler, flags, target)
        library = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError):
        return None
    suffixes = [f"_{suffix}" for suffix in DTYPES.values()] if typed else [""]
    for suffix in suffixes:
        for name, argtypes in signatures.items():
            function = getattr(library, f"{name}{suffix}")
            function.argtypes, function.restype = argtypes, ctypes.c_int
    return library
