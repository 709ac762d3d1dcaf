"""Krum and Multi-Krum (Blanchard et al., NeurIPS 2017).

Both compute the ``(n, n)`` squared-distance matrix once
(:func:`defenses.robust.distances.scaled_sq_distances`, float64, exact in range
for any finite input) and score every client by the sum of its ``n - f - 2``
smallest distances to the others. A Byzantine row of any finite magnitude is
far from everyone, so it scores high and is never selected while ``n > 2f + 2``.

Examples
--------
>>> import torch
>>> U = torch.tensor([[0.0], [0.1], [0.2], [0.3], [50.0]])
>>> Krum(f=1)(U)
tensor([0.1000])
>>> MultiKrum(f=1)(U)
tensor([0.1500])
"""

from __future__ import annotations

import torch

from defenses.robust.base import RobustAggregator, check_count, require
from defenses.robust.distances import scaled_sq_distances
from defenses.robust.registry import register
from fl_core.aggregation import AggregationResult, RoundContext
from fl_core.geometry import Decision, GeometricRule, Geometry, Needs
from fl_core.numerics import WIDE, combine, unscale

__all__ = ["Krum", "MultiKrum", "krum_order", "krum_scores", "krum_winner"]


def krum_scores(sq_dist: torch.Tensor, k: int, active: torch.Tensor | None = None) -> torch.Tensor:
    """Krum scores: for each row, the sum of its ``k`` smallest distances to other active rows.

    Parameters
    ----------
    sq_dist : torch.Tensor
        ``(n, n)`` squared distances.
    k : int
        Neighbours counted (``n - f - 2`` in Krum); ``1 <= k <= active - 1``.
    active : torch.Tensor, optional
        ``(n,)`` bool mask of the rows still in play; inactive rows score ``+inf``.

    Examples
    --------
    >>> import torch
    >>> D = torch.tensor([[0.0, 1.0, 4.0], [1.0, 0.0, 1.0], [4.0, 1.0, 0.0]])
    >>> krum_scores(D, 1).tolist()
    [1.0, 1.0, 1.0]
    """
    masked = sq_dist.clone()
    masked.fill_diagonal_(float("inf"))
    if active is not None:
        masked[:, ~active] = float("inf")
    scores = masked.topk(k, dim=1, largest=False).values.sum(dim=1)
    if active is not None:
        scores = scores.masked_fill(~active, float("inf"))
    return scores


def _total_distance(sq_dist: torch.Tensor, active: torch.Tensor | None) -> torch.Tensor:
    if active is None:
        return sq_dist.sum(dim=1)
    return (sq_dist * active.to(sq_dist.dtype)[None, :]).sum(dim=1)


def krum_order(scores: torch.Tensor, sq_dist: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
    """Row indices sorted by Krum score, ties broken by total squared distance, then index.

    The tie-break keeps the choice independent of the row order whenever the
    scores tie but the points differ (e.g. two mutual nearest neighbours when
    only one neighbour is counted).

    Examples
    --------
    >>> import torch
    >>> D = torch.tensor([[0.0, 1.0, 9.0], [1.0, 0.0, 4.0], [9.0, 4.0, 0.0]])
    >>> krum_order(krum_scores(D, 1), D).tolist()
    [1, 0, 2]
    """
    total = _total_distance(sq_dist, active)
    if active is not None:
        total = total.masked_fill(~active, float("inf"))
    by_total = torch.argsort(total, stable=True)
    return by_total[torch.argsort(scores[by_total], stable=True)]


def krum_winner(scores: torch.Tensor, sq_dist: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
    """Index (0-d tensor) of the lowest Krum score, with the tie-break of :func:`krum_order`."""
    total = _total_distance(sq_dist, active)
    key = torch.where(scores == scores.min(), total, torch.full_like(total, float("inf")))
    return torch.argmin(key)


@register(
    "krum",
    kind="rule",
    description="update closest to its n-f-2 neighbours (Blanchard et al. 2017); n > 2f+2",
)
class Krum(GeometricRule, RobustAggregator):
    """Krum: the update with the smallest sum of squared distances to its neighbours.

    Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with
    Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017. The score
    of client ``i`` is ``sum_{i -> j} ||x_i - x_j||^2`` over the ``n - f - 2``
    closest other updates; Krum returns the update with the lowest score. Ties
    are broken by the total squared distance to all others, then by index, so
    the choice does not depend on the row order. Unweighted, as in the paper.

    Parameters
    ----------
    f : int
        Byzantine clients to tolerate; needs ``n > 2f + 2``.

    Notes
    -----
    ``scores`` are float64 (the squared distances of a float32 row of
    ``3e38`` exceed float32), finite for any finite float32 input.

    Examples
    --------
    >>> import numpy as np
    >>> Krum(f=1)(np.array([[0.0], [1.0], [3.0], [7.0], [100.0]]))
    array([1.])
    """

    OUTPUT_REGION = "hull"

    def check_tolerance(self, n: int) -> None:
        require(n > 2 * self.f + 2, f"{self.label} needs n > 2f + 2, got n={n}, f={self.f}")

    def _scores(self, updates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Krum scores and distances, both divided by ``2**log2`` (``log2 = 0`` unless float64 input is huge)."""
        n = updates.shape[0]
        dist, log2 = scaled_sq_distances(updates)
        return krum_scores(dist, n - self.f - 2), dist, log2

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        scores, dist, log2 = self._scores(updates)
        kept = self._select(scores, dist)
        return AggregationResult(aggregate=updates[kept][0].clone(), kept=kept, scores=unscale(scores, log2))

    def geometry_needs(self) -> Needs:
        """Pairwise distances: the full Gram matrix."""
        return Needs.GRAM

    def _select(self, scores: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
        kept = torch.zeros(dist.shape[0], dtype=torch.bool, device=dist.device)
        kept[krum_winner(scores, dist)] = True
        return kept

    def decide(self, geometry: Geometry, weights: torch.Tensor, ctx: RoundContext | None) -> Decision:
        """The same choice from the distances ``||x_i||^2 + ||x_j||^2 - 2<x_i, x_j>`` of the geometry."""
        n = geometry.n
        self.check_tolerance(n)
        dist = geometry.sq_distances()
        scores = krum_scores(dist, n - self.f - 2)
        kept = self._select(scores, dist)
        coef = torch.zeros(n + geometry.r, dtype=WIDE, device=dist.device)
        coef[:n] = kept.to(WIDE) / int(kept.sum())
        return Decision(coef=coef, kept=kept, scores=scores)


@register(
    "multi_krum",
    kind="rule",
    description="mean of the m updates with the best Krum "
    "scores (Blanchard et al. 2017); n > 2f+2, m = n - f by default",
)
class MultiKrum(Krum):
    """Multi-Krum: the mean of the ``m`` updates with the lowest Krum scores.

    Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with
    Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017 (Section 5).
    ``m = 1`` is Krum; the default ``m = n - f`` is the common choice (El
    Mhamdi et al., ICML 2018). With ``f = 0`` and ``m = n`` it is the mean.

    Parameters
    ----------
    f : int
        Byzantine clients to tolerate; needs ``n > 2f + 2``.
    m : int, optional
        Number of updates averaged, ``1 <= m <= n``; default ``n - f``.

    Examples
    --------
    >>> import torch
    >>> MultiKrum(f=1, m=2)(torch.tensor([[0.0], [1.0], [2.0], [3.0], [100.0]]))
    tensor([1.5000])
    """

    def __init__(self, *, f: int = 0, m: int | None = None) -> None:
        super().__init__(f=f)
        self.m = None if m is None else check_count("m", m, minimum=1)

    def check_tolerance(self, n: int) -> None:
        super().check_tolerance(n)
        if self.m is not None:
            require(self.m <= n, f"MultiKrum needs m <= n, got n={n}, m={self.m}")

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        n = updates.shape[0]
        m = n - self.f if self.m is None else self.m
        scores, dist, log2 = self._scores(updates)
        kept = self._select(scores, dist)
        agg = combine(kept.to(WIDE) / m, updates)
        return AggregationResult(aggregate=agg, kept=kept, scores=unscale(scores, log2))

    def _select(self, scores: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
        n = dist.shape[0]
        kept = torch.zeros(n, dtype=torch.bool, device=dist.device)
        kept[krum_order(scores, dist)[: n - self.f if self.m is None else self.m]] = True
        return kept

    def __repr__(self) -> str:
        return f"MultiKrum(f={self.f}, m={self.m})"
