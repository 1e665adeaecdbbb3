"""Named random streams of a run seed: the same seed gives every optimizer the same initial weights and
the same prompts (common random numbers), and nothing touches torch's global RNG."""

from __future__ import annotations

import hashlib

import torch


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for one named stream of a run seed, stable across platforms and versions."""
    digest = hashlib.sha256(f"testbed:{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(seed: int) -> torch.Generator:
    """A CPU generator of its own seeded with ``seed``, so drawing from it leaves torch's global RNG alone."""
    return torch.Generator().manual_seed(seed)
