"""Explicit random generators derived from one seed.

No flsec code seeds a global generator. Every random choice takes a generator
derived here from the run's seed and a tuple of integer keys that name the use,
so that adding a new random choice does not shift the streams of the others.

Examples
--------
>>> g1 = torch_generator(0, 3, 7)
>>> g2 = torch_generator(0, 3, 7)
>>> bool(torch.equal(torch.rand(2, generator=g1), torch.rand(2, generator=g2)))
True
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["Stream", "derive_seed", "numpy_generator", "torch_generator"]


class Stream:
    """Integer tags naming the random streams of a federation (first key)."""

    PARTITION = 1
    INIT = 2
    SAMPLE = 3
    CLIENT = 4
    PLUGIN = 5
    SERVER = 6
    USER = 100


def derive_seed(seed: int, *keys: int) -> int:
    """Derive a 63-bit seed from ``seed`` and integer ``keys`` (via NumPy's SeedSequence)."""
    if seed < 0 or any(k < 0 for k in keys):
        raise ValueError(f"seed and keys must be non-negative, got seed={seed}, keys={keys}")
    ss = np.random.SeedSequence([seed, *keys])
    return int(ss.generate_state(2, dtype=np.uint32).astype(np.uint64) @ np.array([1, 2**31], dtype=np.uint64))


def numpy_generator(seed: int, *keys: int) -> np.random.Generator:
    """A NumPy ``Generator`` (PCG64) for ``(seed, *keys)``."""
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def torch_generator(seed: int, *keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from ``(seed, *keys)``."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *keys))
    return g
