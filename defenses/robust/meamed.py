"""Mean around the median, coordinate-wise (Xie, Koyejo, Gupta 2018), byzfl's ``Meamed``.

Examples
--------
>>> import torch
>>> Meamed(f=1)(torch.tensor([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0], [100.0, -50.0]]))
tensor([1., 2.])
"""

from __future__ import annotations

import torch

from defenses.robust.base import RobustAggregator, all_kept, require
from defenses.robust.registry import register
from defenses.robust.sorting import column_median, sort_columns
from fl_core.aggregation import AggregationResult, RoundContext
from fl_core.numerics import safe_mean

__all__ = ["Meamed", "mean_around_median"]


def mean_around_median(sorted_updates: torch.Tensor, k: int) -> torch.Tensor:
    """Per column of a column-sorted ``(n, d)`` tensor, the mean of the ``k`` values closest to its median.

    In a sorted column the ``k`` values closest to a point form a window of ``k``
    consecutive values; the window starting at ``s`` (``0 <= s <= n - k``) has
    radius ``max(med - a_s, a_{s+k-1} - med)`` and the window of the smallest
    radius is taken, the lowest ``s`` on a tie (the paper leaves ties open; the
    choice depends only on the values, never on the client order). Distances are
    computed on halved values, in the updates' dtype (a difference of two halves
    of finite values is finite, ``3e38`` included); each window mean is
    :func:`~fl_core.numerics.safe_mean`.

    Examples
    --------
    >>> import torch
    >>> mean_around_median(torch.tensor([[0.0], [1.0], [2.0], [9.0]]), 3).tolist()
    [1.0]
    """
    n = sorted_updates.shape[0]
    med = column_median(sorted_updates) * 0.5
    starts = n - k + 1  # only the first and last n - k + 1 rows bound a window

    def radius(start: int) -> torch.Tensor:
        return torch.maximum(med - sorted_updates[start] * 0.5, sorted_updates[start + k - 1] * 0.5 - med)

    # the first minimum over the starts (the lowest start on a tie), by a running comparison: a strided
    # argmin over dim 0 costs more on CPU
    best_radius = radius(0)
    best = torch.zeros(med.shape[0], dtype=torch.long, device=med.device)
    for start in range(1, starts):
        r = radius(start)
        better = r < best_radius
        best_radius = torch.where(better, r, best_radius)
        best.masked_fill_(better, start)
    # one mean per window start over the columns that chose it (a loop over the n - k + 1 starts, never
    # over clients; an (k, d) index for torch.gather would cost 8 k d bytes)
    out = torch.empty_like(sorted_updates[0])
    for start in range(starts):
        cols = (best == start).nonzero().squeeze(1)
        if cols.numel() == 0:
            continue
        window = sorted_updates[start : start + k]
        out[cols] = safe_mean(window if cols.numel() == window.shape[1] else window.index_select(1, cols))
    return out


@register(
    "meamed",
    kind="rule",
    description="coordinate-wise mean of the n-f values closest to the median (Xie et al. 2018); n > 2f",
)
class Meamed(RobustAggregator):
    """Mean around median: per coordinate, the mean of the ``n - f`` values closest to the median.

    Xie, Koyejo, Gupta, "Generalized Byzantine-tolerant SGD", arXiv:1802.10116,
    2018 (the "mean around median" rule; byzfl's ``Meamed``, whose documentation
    cites this paper). For coordinate ``j`` with median ``med_j`` over the
    ``n`` clients, the aggregate is the mean of the ``n - f`` values
    ``x_ij`` with the smallest ``|x_ij - med_j|``; ties at the boundary are
    broken by value (:func:`mean_around_median`). ``f = 0`` is the mean.
    Unweighted, as in the paper.

    Guarantee used in the tests: with at most ``f`` Byzantine rows and
    ``n > 2f``, ``med_j`` lies in the honest range of coordinate ``j`` and the
    ``n - f`` honest values are all within ``R_j = max_honest |x_ij - med_j|``
    of it, so every value averaged, and the aggregate, is within ``R_j`` of
    ``med_j``: inside the honest range widened by its width on each side,
    whatever the Byzantine values (``3e38`` included).

    Parameters
    ----------
    f : int
        Byzantine clients to tolerate; needs ``n > 2f``.

    Examples
    --------
    >>> import numpy as np
    >>> Meamed(f=1)(np.array([[1.0], [2.0], [4.0], [1e9]]))
    array([2.33333333])
    """

    OUTPUT_REGION = "coordinates"

    def check_tolerance(self, n: int) -> None:
        require(n > 2 * self.f, f"Meamed needs n > 2f, got n={n}, f={self.f}")

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        n = updates.shape[0]
        agg = safe_mean(updates) if self.f == 0 else mean_around_median(sort_columns(updates), n - self.f)
        return AggregationResult(aggregate=agg, kept=all_kept(n, updates.device))
