"""The ``--threads`` option of the cost benchmarks."""

from __future__ import annotations

import torch
from threadpoolctl import threadpool_limits

from fl_core import ConfigError

__all__ = ["apply_threads"]

_LIMITS: list = []


def apply_threads(threads: int | None) -> None:
    """Set torch's CPU threads and the BLAS pools' (NumPy's OpenBLAS) (None: leave their choice); ``threads >= 1``.

    The BLAS limit matters for the ring products of the secure protocols (float64 limb
    products through NumPy): an OpenBLAS pool of 2 threads on 2 busy cores runs them
    tens of times slower than one thread, so plaintext and secure figures are only
    comparable with the same limit on both.

    Examples
    --------
    >>> apply_threads(None)
    """
    if threads is None:
        return
    if threads < 1:
        raise ConfigError(f"threads must be >= 1, got threads={threads}")
    torch.set_num_threads(threads)
    _LIMITS.append(threadpool_limits(limits=threads))  # kept: the limit holds for the process
