"""Seeds derived from the run's seed and a fixed tag, never from toy or method parameters.

Deriving every random stream this way is what makes both twins of a toy (which differ
only in a downstream parameter) see bit-identical activations and method initialisations.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, tag: str) -> int:
    """A 31-bit seed that depends only on ``seed`` and ``tag``."""
    digest = hashlib.sha256(f"{seed}:{tag}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def generator(seed: int, tag: str) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, tag))
