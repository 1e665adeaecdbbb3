"""Bounds on what a config may ask for, checked before anything is expanded or allocated.

An absurd size (a billion seeds, a million-point sweep, a model of a terabyte) must fail at once
with the bound in the message, not after exhausting the machine. Every bound is far above what a
real experiment uses; README's "Configuration" section lists them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from testbed.model.attention import attention_variant
from testbed.model.config import ModelConfig

MAX_CONFIG_BYTES = 10 * 2**20  # a config file; the paper's are about 2 KB
MAX_YAML_NODES = 100_000  # values in one YAML document, counted with every alias expanded
MAX_YAML_DEPTH = 100  # nesting levels of one YAML document
MAX_SEEDS = 10_000  # seeds of one list or count (train, tune, diagnostic)
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes 64 bits; a signed 64-bit int everywhere else
MAX_SWEEP_POINTS = 10_000
MAX_RUNS = 100_000  # main runs and tuning pilots of one experiment, or of every point of a sweep
MAX_STEPS = 10**9
MAX_DIM = 10_000  # task.d: tasks and models allocate d x d matrices
MAX_NAME_LENGTH = 100  # an experiment name or optimizer label names a directory (255 bytes at most)
MAX_LR = float(torch.finfo(torch.float32).max)  # any larger lr overflows float32 at the first step
MEMORY_FRACTION = 0.5  # one run may need at most this share of the machine's memory
ASSUMED_MEMORY = 16 * 2**30  # where the machine's memory cannot be read


CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")  # v2, v1


def machine_memory_bytes() -> int:
    """The memory this process may use: the machine's physical memory, or a container's smaller
    limit (ASSUMED_MEMORY where the OS does not say)."""
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        physical = ASSUMED_MEMORY
    return min([physical, *filter(None, map(_cgroup_limit, CGROUP_LIMITS))])


def _cgroup_limit(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def memory_budget_bytes() -> int:
    """The memory one run may be estimated to need."""
    return int(MEMORY_FRACTION * machine_memory_bytes())


def run_memory_bytes(model: ModelConfig, d: int, n: int, batch_size: int, eval_batch_size: int,
                     dtype_bytes: int) -> int:
    """A rough estimate of the memory of one run: the parameters with their gradient and two
    optimizer buffers, the fixed eval batch, and what autograd keeps for the larger of the two
    batches (measured within 20% for linear attention, d = 200, and softmax attention, n = 500).
    Plain integer arithmetic: any size is estimated without allocating anything."""
    width = d
    hidden: list[int] = []
    if model.feature_map is not None:
        width = model.feature_map.out_dim or d
        hidden = list(model.feature_map.hidden)
    sizes = [d, *hidden, width] if model.feature_map is not None else []
    rows, columns, layers = width + 1, n + 1, model.layers  # a prompt Z is rows x columns
    side = width if model.parameterization == "block_sparse" else rows
    parameters = 2 * layers * side * side + sum(a * b + b for a, b in zip(sizes, sizes[1:]))
    per_prompt = (columns * (d + 1)  # x and y as sampled
                  + 2 * columns * sum(hidden)  # feature-map activations
                  + layers * (3 * rows * columns + 2 * rows * rows))  # per layer: Z, K Z, Z M Z^T, K
    per_prompt += layers * attention_variant(model.attention).score_matrices * columns * columns
    elements = 4 * parameters + eval_batch_size * columns * (d + 1) + max(batch_size, eval_batch_size) * per_prompt
    return elements * dtype_bytes


def format_bytes(count: int) -> str:
    """``count`` bytes in the largest unit that keeps the number >= 1, e.g. '2.4 TB'."""
    if count >= 1000**6:  # beyond any unit, and perhaps beyond a float: a power of ten
        return f"10^{int(count.bit_length() * 0.30103)} bytes"
    value, unit = float(count), "bytes"
    for larger in ("KB", "MB", "GB", "TB", "PB"):
        if value < 1000:
            break
        value, unit = value / 1000, larger
    return f"{count} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
