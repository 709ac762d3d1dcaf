"""Bulyan (El Mhamdi, Guerraoui, Rouault, ICML 2018).

Examples
--------
>>> import torch
>>> U = torch.tensor([[0.0], [0.1], [0.2], [0.3], [0.4], [0.5], [90.0]])
>>> Bulyan(f=1)(U)
tensor([0.3000])
"""

from __future__ import annotations

import numpy as np
import torch

from defenses.robust.base import RobustAggregator, require
from defenses.robust.distances import scaled_sq_distances
from defenses.robust.registry import register
from defenses.robust.sorting import sort_columns
from fl_core.aggregation import AggregationResult, RoundContext
from fl_core.numerics import WIDE, abs_max, all_finite, safe_mean, unscale

__all__ = ["Bulyan", "bulyan_selection", "closest_to_median_mean"]


def bulyan_selection(sq_dist: torch.Tensor, f: int, theta: int) -> tuple[np.ndarray, np.ndarray]:
    """Bulyan's phase 1: ``theta`` recursive Krum selections on one distance matrix.

    At step ``t`` the remaining set ``R`` has ``n - t`` rows; each scores the
    sum of its ``k = |R| - f - 2`` (kept in ``[1, |R| - 1]``) smallest squared
    distances to other rows of ``R``; the lowest score wins (ties: lowest total
    squared distance to ``R``, then lowest index) and leaves ``R``.

    The ``(n, n)`` matrix is tiny next to the ``(n, d)`` cohort, so this
    sequential loop runs in NumPy float64 on the host: each row is sorted
    once, and a step only re-counts the still-active neighbours (a cumulative
    sum), a few microseconds instead of a dozen device kernels per step.

    Returns
    -------
    selected : numpy.ndarray
        ``(theta,)`` row indices in selection order.
    first_scores : numpy.ndarray
        ``(n,)`` Krum scores of the first step.

    Examples
    --------
    >>> import torch
    >>> D = torch.tensor([[0.0, 1.0, 9.0], [1.0, 0.0, 4.0], [9.0, 4.0, 0.0]])
    >>> bulyan_selection(D, 0, 3)[0].tolist()
    [1, 0, 2]
    """
    dist = sq_dist.detach().to("cpu", torch.float64).numpy()
    n = dist.shape[0]
    off = dist.copy()
    np.fill_diagonal(off, np.inf)
    order = np.argsort(off, axis=1, kind="stable")  # self sorts last: never among the k
    sorted_dist = np.take_along_axis(dist, order, axis=1)  # finite: diagonal is 0
    rank = np.empty_like(order)  # rank[i, j]: position of j in row i's order
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(n), (n, n)), axis=1)
    neighbour = np.ones((n, n), dtype=bool)  # [i, r]: row i's r-th nearest is still in R
    rows = np.arange(n)
    penalty = np.zeros(n)  # +inf for rows already selected
    active = np.ones(n)
    selected: list[int] = []
    first_scores = np.zeros(n)
    for step in range(theta):
        size = n - step
        if size == 1:
            selected.append(int(np.flatnonzero(active)[0]))
            break
        k = min(max(size - f - 2, 1), size - 1)
        take = neighbour & (np.cumsum(neighbour, axis=1) <= k)
        scores = (sorted_dist * take).sum(axis=1) + penalty
        if step == 0:
            first_scores = scores.copy()
        winner = int(np.argmin(scores))
        if np.count_nonzero(scores == scores[winner]) > 1:  # tie-break: total distance to R
            total = np.where(scores == scores[winner], dist @ active, np.inf)
            winner = int(np.argmin(total))
        selected.append(winner)
        penalty[winner] = np.inf
        active[winner] = 0.0
        neighbour[rows, rank[:, winner]] = False
    return np.asarray(selected), first_scores


def closest_to_median_mean(selected: torch.Tensor, beta: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Coordinate-wise mean of the ``beta`` values closest to the coordinate's median.

    In each sorted column ``s`` the ``beta`` values closest to the median ``m``
    form a contiguous window ``[a, a + beta)``. Sliding the window up by one
    drops ``s_a`` and adds ``s_{a+beta}``, which helps exactly when
    ``m - s_a > s_{a+beta} - m``; that test is monotone in ``a``, so the best
    start is the number of ``a`` in ``[0, theta - beta)`` that pass it (ties
    keep the lower window). The window's values are then gathered and averaged.
    With ``rows`` given, only those rows of ``selected`` are used.

    Overflow: when a value exceeds half the dtype's maximum the test compares
    halves, ``s_a / 2 + s_{a+beta} / 2 < m`` (halving is exact, so the
    comparisons are those of exact arithmetic), and
    the window's mean falls back to float64 if its running sum overflows: the
    result lies within the window's values, so it is representable.

    Examples
    --------
    >>> import torch
    >>> closest_to_median_mean(torch.tensor([[0.0], [1.0], [2.0], [10.0]]), 2).tolist()
    [1.5]
    """
    srt = sort_columns(selected, rows)
    theta = srt.shape[0]
    span = theta - beta
    if span == 0:
        return safe_mean(srt)
    lo, hi = (theta - 1) // 2, theta // 2
    # m - s_a > s_{a+beta} - m  <=>  s_a + s_{a+beta} < 2m, i.e. "a < start"; row by row.
    # Sums of two values cannot overflow while every value is at most max/2 (checked on the
    # first and last sorted rows); otherwise compare halves, s_a/2 + s_{a+beta}/2 < m.
    bound = torch.finfo(srt.dtype).max / 2
    if bool(abs_max(srt[0]) <= bound) and bool(abs_max(srt[-1]) <= bound):
        twice_median = srt[lo] + srt[hi]
        slide = [torch.lt(srt[a] + srt[a + beta], twice_median) for a in range(span)]
    else:
        median = 0.5 * srt[lo] + 0.5 * srt[hi]
        slide = [torch.lt(0.5 * srt[a] + 0.5 * srt[a + beta], median) for a in range(span)]
    if beta >= span:
        # rows [span, beta) are in every window; for a < span exactly one of s_a (a >= start)
        # and s_{a+beta} (a < start) is in the window: sum without gather or cancellation
        total = srt[span:beta].sum(dim=0)
        for a, moved in enumerate(slide):
            total += torch.where(moved, srt[a + beta], srt[a])
        out = total / beta
        if all_finite(out):
            return out
    start = torch.zeros(srt.shape[1], dtype=torch.int32, device=srt.device)
    for moved in slide:
        start += moved
    offsets = torch.arange(beta, device=selected.device)[:, None]
    return safe_mean(torch.gather(srt, 0, start.long()[None, :] + offsets))


@register(
    "bulyan",
    kind="rule",
    description="Krum-selected n-2f updates, then coordinate-wise mean around the median "
    "(El Mhamdi et al. 2018); n >= 4f+3",
)
class Bulyan(RobustAggregator):
    """Bulyan over Krum.

    El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed
    Learning in Byzantium", ICML 2018. Phase 1 applies Krum recursively:
    ``theta = n - 2f`` times, pick the Krum winner of the remaining set and move
    it to the selection set (:func:`bulyan_selection`). Phase 2 returns, for
    each coordinate, the mean of the ``beta = theta - 2f`` selected values
    closest to their median (:func:`closest_to_median_mean`).

    The distances are computed once; each selection step re-scores the
    remaining updates with ``|R| - f - 2`` neighbours, kept in ``[1, |R| - 1]``
    for the last steps where the remaining set is smaller than ``2f + 3`` (the
    paper leaves this case implicit); ties go to the lowest total squared
    distance to the remaining updates. With ``f = 0`` every update is selected
    and the result is the mean. The selection may include Byzantine updates;
    the guarantee comes from phase 2, which keeps each coordinate within the
    range of the honest values.

    Parameters
    ----------
    f : int
        Byzantine clients to tolerate; needs ``n >= 4f + 3``.

    Notes
    -----
    ``scores`` are the Krum scores of the first selection step (float64, so
    that a Byzantine row of any finite magnitude gets a finite score); ``kept``
    marks the ``theta`` selected updates. Unweighted, as in the paper. The
    distances are those of :func:`~defenses.robust.distances.scaled_sq_distances`,
    exact in range for any finite input.

    Examples
    --------
    >>> import numpy as np
    >>> Bulyan(f=0)(np.array([[1.0], [2.0], [6.0]]))
    array([3.])
    """

    OUTPUT_REGION = "coordinates"

    def check_tolerance(self, n: int) -> None:
        require(n >= 4 * self.f + 3, f"Bulyan needs n >= 4f + 3, got n={n}, f={self.f}")

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        n, f = updates.shape[0], self.f
        theta, beta = n - 2 * f, n - 4 * f
        dist, log2 = scaled_sq_distances(updates)
        chosen, first_scores = bulyan_selection(dist, f, theta)
        index = torch.as_tensor(np.sort(chosen), device=updates.device)
        kept = torch.zeros(n, dtype=torch.bool, device=updates.device)
        kept[index] = True
        agg = closest_to_median_mean(updates, beta, rows=index)
        return AggregationResult(
            aggregate=agg,
            kept=kept,
            scores=unscale(torch.as_tensor(first_scores, dtype=WIDE, device=updates.device), log2),
            metrics={"theta": float(theta), "beta": float(beta)},
        )
