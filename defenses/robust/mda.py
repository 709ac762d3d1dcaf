"""Minimum-diameter averaging (El Mhamdi, Guerraoui, Guirguis, Hoang, Rouault, PODC 2020), byzfl's ``MDA``.

Examples
--------
>>> import torch
>>> MDA(f=1)(torch.tensor([[0.0], [1.0], [2.0], [50.0]]))
tensor([1.])
"""

from __future__ import annotations

import math

import torch

from defenses.robust.base import RobustAggregator, all_kept, check_count, require
from defenses.robust.distances import scaled_sq_distances
from defenses.robust.registry import register
from fl_core.aggregation import AggregationResult, RoundContext
from fl_core.errors import ToleranceError
from fl_core.numerics import WIDE, combine, safe_mean

__all__ = ["MDA", "SubsetLimitError", "combinations", "min_diameter_subset"]

#: Default cap on the number ``C(n, f)`` of subsets MDA searches exhaustively.
DEFAULT_MAX_SUBSETS = 1 << 20

#: (subset, pair) entries scored at once (16 MiB of bool).
_BLOCK = 1 << 24


class SubsetLimitError(ToleranceError):
    """MDA would search more than its ``max_subsets`` subsets (``C(n, f)`` is too large)."""


def combinations(n: int, r: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """All ``C(n, r)`` increasing index tuples as a ``(C(n, r), r)`` long tensor, in lexicographic order.

    Built column by column (each tuple extended by every larger index), so the
    memory is that of the result (``torch.combinations`` allocates ``n ** r``).

    Examples
    --------
    >>> combinations(4, 2).tolist()
    [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    """
    out = torch.zeros(1, 0, dtype=torch.long, device=device)
    for col in range(r):
        first = out[:, -1] + 1 if col > 0 else torch.zeros(1, dtype=torch.long, device=device)
        # the next index runs from first to n - (r - col) so that the tuple can still be completed
        count = (n - (r - col) - first + 1).clamp(min=0)
        parent = torch.repeat_interleave(torch.arange(out.shape[0], device=device), count)
        offset = torch.arange(int(count.sum()), device=device) - torch.repeat_interleave(
            torch.cumsum(count, 0) - count, count
        )
        out = torch.cat([out[parent], (first[parent] + offset)[:, None]], dim=1)
    return out


def min_diameter_subset(sq_dist: torch.Tensor, f: int) -> torch.Tensor:
    """The ``(n,)`` mask of the ``n - f`` rows of smallest diameter, by exhaustive search.

    Every way of leaving ``f`` rows out is scored by the largest squared
    distance between two rows left in (the squared diameter: same order as the
    diameter): with the ``n (n - 1) / 2`` pairs sorted by decreasing distance,
    it is the distance of the first pair whose two rows are both kept. Ties are
    broken by the sum of the squared distances within the subset, then by
    enumeration order (lexicographic in the rows left out). Vectorised over
    subsets, in blocks of ``_BLOCK`` (subset, pair) entries.

    Examples
    --------
    >>> import torch
    >>> D = torch.tensor([[0.0, 1.0, 4.0], [1.0, 0.0, 1.0], [4.0, 1.0, 0.0]], dtype=torch.float64)
    >>> min_diameter_subset(D, 1).tolist()  # {1, 2} and {0, 1} tie on diameter and on the sum: the first
    [False, True, True]
    """
    n = sq_dist.shape[0]
    device = sq_dist.device
    if f == 0:
        return all_kept(n, device)
    i, j = torch.triu_indices(n, n, offset=1, device=device)
    pair_dist = sq_dist[i, j]
    order = torch.argsort(pair_dist, descending=True, stable=True)
    i, j, pair_dist = i[order], j[order], pair_dist[order]
    left_out = combinations(n, f, device)
    step = max(1, _BLOCK // max(1, i.numel()))
    best_key: tuple[float, float] | None = None
    best_mask = None
    for start in range(0, left_out.shape[0], step):
        keep = torch.ones(min(step, left_out.shape[0] - start), n, dtype=torch.bool, device=device)
        keep.scatter_(1, left_out[start : start + step], False)
        both = keep[:, i] & keep[:, j]
        diameter = pair_dist[torch.argmax(both.to(torch.uint8), dim=1)]
        low = diameter.min()
        candidates = (diameter == low).nonzero().squeeze(1)
        w = keep.index_select(0, candidates).to(sq_dist.dtype)
        spread = ((w @ sq_dist) * w).sum(dim=1)
        pick = int(torch.argmin(spread))
        key = (float(low), float(spread[pick]))
        if best_key is None or key < best_key:
            best_key, best_mask = key, keep[candidates[pick]]
    assert best_mask is not None
    return best_mask


@register(
    "mda",
    kind="rule",
    description="mean of the n-f updates of smallest diameter, exhaustive search "
    "(El Mhamdi et al. 2020); n > 2f, C(n, f) <= max_subsets",
)
class MDA(RobustAggregator):
    """Minimum-diameter averaging: the mean of the ``n - f`` rows whose largest pairwise distance is smallest.

    El Mhamdi, Guerraoui, Guirguis, Hoang, Rouault, "Genuinely Distributed
    Byzantine Machine Learning", PODC 2020 (byzfl's ``MDA`` cites it)::

        S* = argmin_{S subset [n], |S| = n - f} max_{i, j in S} ||x_i - x_j||
        MDA(x_1, ..., x_n) = (1 / (n - f)) sum_{i in S*} x_i

    The search is exact: all ``C(n, f)`` subsets are scored from one
    ``(n, n)`` float64 distance matrix
    (:func:`~defenses.robust.distances.scaled_sq_distances`, exact in range for
    any finite input), vectorised over subsets (:func:`min_diameter_subset`).
    Ties on the diameter go to the subset with the smallest sum of squared
    pairwise distances. ``f = 0`` is the mean. Unweighted, as in the paper.

    Guarantee used in the tests: with at most ``f`` Byzantine rows, the honest
    rows are a candidate, so the chosen subset has a diameter at most the
    honest diameter ``D_h``; it holds at least ``n - 2f >= 1`` honest rows, so
    every row averaged is within ``D_h`` of an honest row and the aggregate is
    within ``2 D_h`` of the honest mean. A row farther than ``D_h`` from every
    honest row (a Byzantine ``3e38``) is never selected.

    Parameters
    ----------
    f : int
        Byzantine clients to tolerate; needs ``n > 2f``.
    max_subsets : int
        Largest number of subsets ``C(n, f)`` searched (default ``2**20``);
        beyond it the call raises :class:`SubsetLimitError` rather than run
        for minutes (``C(30, 7) = 2,035,800``).

    Raises
    ------
    SubsetLimitError
        If ``C(n, f) > max_subsets`` (a :class:`~fl_core.errors.ToleranceError`).

    Examples
    --------
    >>> import numpy as np
    >>> MDA(f=1)(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [9.0, 9.0]])).round(4).tolist()
    [0.3333, 0.3333]
    """

    OUTPUT_REGION = "hull"

    def __init__(self, *, f: int = 0, max_subsets: int = DEFAULT_MAX_SUBSETS) -> None:
        super().__init__(f=f)
        self.max_subsets = check_count("max_subsets", max_subsets, minimum=1)

    def check_tolerance(self, n: int) -> None:
        require(n > 2 * self.f, f"MDA needs n > 2f, got n={n}, f={self.f}")
        subsets = math.comb(n, self.f)
        if subsets > self.max_subsets:
            raise SubsetLimitError(
                f"MDA searches all C(n, f) = C({n}, {self.f}) = {subsets:,} subsets, more than "
                f"max_subsets={self.max_subsets:,}; lower f, sample fewer clients, or raise max_subsets"
            )

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        n = updates.shape[0]
        if self.f == 0:
            return AggregationResult(aggregate=safe_mean(updates), kept=all_kept(n, updates.device))
        sq_dist, _ = scaled_sq_distances(updates)
        kept = min_diameter_subset(sq_dist, self.f)
        agg = combine(kept.to(WIDE) / (n - self.f), updates)
        return AggregationResult(aggregate=agg, kept=kept)

    def __repr__(self) -> str:
        return f"MDA(f={self.f}, max_subsets={self.max_subsets})"
