"""The flat-update type and the checks every entry point runs on it.

An *update* is a flat ``torch.Tensor`` of shape ``(d,)`` and dtype float32: the
difference between a client's locally trained parameters and the global
parameters it received. A *cohort* stacks ``n`` updates into an ``(n, d)``
tensor. Only :mod:`fl_core.params` converts between models and flat tensors.

Examples
--------
>>> import torch
>>> from fl_core.updates import check_cohort
>>> U = check_cohort(torch.zeros(3, 5))
>>> tuple(U.shape)
(3, 5)
"""

from __future__ import annotations

from typing import TypeAlias

import torch

from fl_core.errors import InvalidUpdateError
from fl_core.numerics import all_finite

__all__ = ["Cohort", "FlatUpdate", "check_cohort", "check_update", "check_weights"]

FlatUpdate: TypeAlias = torch.Tensor
"""A flat float32 tensor of shape ``(d,)``."""

Cohort: TypeAlias = torch.Tensor
"""A float32 tensor of shape ``(n, d)``: one row per client."""


def _check_finite(t: torch.Tensor, what: str) -> None:
    # one or two reductions (fl_core.numerics.all_finite); entry by entry only to name the first bad one
    if all_finite(t):
        return
    bad = (~torch.isfinite(t)).nonzero()
    first = tuple(int(i) for i in bad[0])
    raise InvalidUpdateError(f"{what} contains {bad.shape[0]} non-finite value(s) (NaN or Inf); first at index {first}")


def check_update(update: torch.Tensor, *, d: int | None = None, name: str = "update") -> FlatUpdate:
    """Validate one flat update and return it unchanged.

    Parameters
    ----------
    update : torch.Tensor
        Tensor of shape ``(d,)``, floating point, finite.
    d : int, optional
        Expected length.
    name : str
        Name used in error messages.

    Raises
    ------
    InvalidUpdateError
        On a wrong type, shape, dtype, length or a NaN/Inf entry.

    Examples
    --------
    >>> import torch
    >>> check_update(torch.ones(4), d=4).shape
    torch.Size([4])
    """
    if not isinstance(update, torch.Tensor):
        raise InvalidUpdateError(f"{name} must be a torch.Tensor, got {type(update).__name__}")
    if update.ndim != 1:
        raise InvalidUpdateError(f"{name} must have shape (d,), got {tuple(update.shape)}")
    if not update.is_floating_point():
        raise InvalidUpdateError(f"{name} must be floating point, got dtype {update.dtype}")
    if d is not None and update.shape[0] != d:
        raise InvalidUpdateError(f"{name} has length {update.shape[0]}, expected d={d}")
    _check_finite(update, name)
    return update


def check_cohort(updates: torch.Tensor, *, min_n: int = 1, name: str = "updates") -> Cohort:
    """Validate a cohort of updates of shape ``(n, d)`` and return it unchanged.

    Raises
    ------
    InvalidUpdateError
        On a wrong type, shape or dtype, fewer than ``min_n`` rows, ``d == 0``
        or a NaN/Inf entry.

    Examples
    --------
    >>> import torch
    >>> check_cohort(torch.ones(2, 3)).shape
    torch.Size([2, 3])
    """
    if not isinstance(updates, torch.Tensor):
        raise InvalidUpdateError(f"{name} must be a torch.Tensor, got {type(updates).__name__}")
    if updates.ndim != 2:
        raise InvalidUpdateError(f"{name} must have shape (n, d), got {tuple(updates.shape)}")
    if not updates.is_floating_point():
        raise InvalidUpdateError(f"{name} must be floating point, got dtype {updates.dtype}")
    n, d = updates.shape
    if n < min_n:
        raise InvalidUpdateError(f"{name} has n={n} rows, at least {min_n} required")
    if d == 0:
        raise InvalidUpdateError(f"{name} has d=0 columns")
    _check_finite(updates, name)
    return updates


def check_weights(weights: torch.Tensor | None, n: int, *, like: torch.Tensor) -> torch.Tensor:
    """Validate per-client weights and return them as a float tensor on ``like``'s device.

    ``None`` means equal weights. Weights must be finite, non-negative and not
    all zero (they are typically example counts).

    Examples
    --------
    >>> import torch
    >>> check_weights(None, 2, like=torch.zeros(2, 3)).tolist()
    [1.0, 1.0]
    """
    if weights is None:
        return torch.ones(n, dtype=like.dtype, device=like.device)
    # checked in float64 (as given), then cast: a weight of 1e39 is refused, not turned into inf
    w64 = torch.as_tensor(weights, dtype=torch.float64, device=like.device)
    if w64.shape != (n,):
        raise InvalidUpdateError(f"weights must have shape ({n},), got {tuple(w64.shape)}")
    if not torch.isfinite(w64).all():
        raise InvalidUpdateError(f"weights contain NaN/Inf: {w64.tolist()}")
    if (w64 < 0).any():
        raise InvalidUpdateError(f"weights must be non-negative, got {w64.tolist()}")
    w = w64.to(like.dtype)
    if not torch.isfinite(w.sum()):
        raise InvalidUpdateError(f"weights (or their sum) overflow {like.dtype}: {w64.tolist()}")
    if float(w.sum()) <= 0.0:
        raise InvalidUpdateError("weights sum to zero")
    return w

