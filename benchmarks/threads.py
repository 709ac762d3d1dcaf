"""The ``--threads`` option of the cost benchmarks."""

from __future__ import annotations

import torch

from fl_core import ConfigError

__all__ = ["apply_threads"]


def apply_threads(threads: int | None) -> None:
    """Set torch's CPU threads (None: leave torch's choice); ``threads >= 1``.

    Examples
    --------
    >>> apply_threads(None)
    """
    if threads is None:
        return
    if threads < 1:
        raise ConfigError(f"threads must be >= 1, got threads={threads}")
    torch.set_num_threads(threads)
