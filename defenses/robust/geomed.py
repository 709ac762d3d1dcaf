"""Geometric median by the smoothed Weiszfeld algorithm (RFA, Pillutla et al.).

Examples
--------
>>> import torch
>>> U = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1e9, 1e9]], dtype=torch.float64)
>>> GeometricMedian(f=1)(U)  # pulled towards the outlier, but only within the honest square
tensor([0.7887, 0.7887], dtype=torch.float64)
"""

from __future__ import annotations

import torch

from defenses.robust.base import RobustAggregator, all_kept, check_count, check_positive, require
from defenses.robust.registry import register
from fl_core.aggregation import AggregationResult, RoundContext
from fl_core.numerics import WIDE, combine, row_norms

__all__ = ["GeometricMedian", "canonical_order", "trimmed_start"]


def trimmed_start(updates: torch.Tensor, alpha: torch.Tensor, f: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weiszfeld's start: the ``alpha``-weighted mean of the ``n - f`` rows closest to it, and the distances to it.

    Starts from the weighted mean and re-takes the mean of the ``n - f``
    closest rows until that set is stable (at most ``f + 1`` rounds); returns
    the candidate with the lowest objective ``sum_i alpha_i ||v - x_i||``
    (Weiszfeld is a descent method), with its float64 distances ``(n,)``. On
    ordinary cohorts that is the mean itself, RFA's start; with far
    Byzantine rows a trimmed mean has the lower objective.

    Examples
    --------
    >>> import torch
    >>> U = torch.tensor([[0.0], [1.0], [2.0], [3e38]])
    >>> trimmed_start(U, torch.full((4,), 0.25, dtype=torch.float64), 1)[0].tolist()
    [1.0]
    """
    n = updates.shape[0]
    v = combine(alpha, updates)
    dist = row_norms(updates, center=v)
    best, best_dist, best_objective = v, dist, alpha @ dist
    kept: torch.Tensor | None = None
    for _ in range(f + 1 if f > 0 else 0):
        near = torch.zeros(n, dtype=torch.bool, device=updates.device)
        near[torch.topk(dist, n - f, largest=False).indices] = True
        if kept is not None and bool(torch.equal(near, kept)):
            break
        kept = near
        coef = alpha * near
        coef = coef / coef.sum() if bool(coef.sum() > 0) else near.to(WIDE) / (n - f)
        v = combine(coef, updates)
        dist = row_norms(updates, center=v)
        objective = alpha @ dist
        if bool(objective < best_objective):
            best, best_dist, best_objective = v, dist, objective
    return best, best_dist


def canonical_order(updates: torch.Tensor) -> torch.Tensor:
    """A permutation of the rows that does not depend on their input order: by norm, then by row sum.

    Examples
    --------
    >>> import torch
    >>> canonical_order(torch.tensor([[3.0], [-1.0], [1.0]])).tolist()
    [1, 2, 0]
    """
    by_sum = torch.argsort(updates.to(WIDE).sum(dim=1), stable=True)
    by_norm = torch.argsort(row_norms(updates).index_select(0, by_sum), stable=True)
    return by_sum.index_select(0, by_norm)


@register(
    "geomed",
    kind="rule",
    description="geometric median by smoothed Weiszfeld (RFA, Pillutla et al. 2022); n > 2f",
)
class GeometricMedian(RobustAggregator):
    """Approximate weighted geometric median ``argmin_v sum_i alpha_i ||v - x_i||``.

    Pillutla, Kakade, Harchaoui, "Robust Aggregation for Federated Learning",
    IEEE Transactions on Signal Processing 70, 2022 (RFA). Smoothed Weiszfeld
    iterations, starting from the weighted mean or a trimmed one (see below)::

        beta_i = alpha_i / max(nu, ||v - x_i||)
        v <- sum_i beta_i x_i / sum_i beta_i

    stopping when the step ``||v_{t+1} - v_t||`` is at most ``tol`` times the
    median distance from ``v_{t+1}`` to the clients, or after ``max_iter``
    iterations. (RFA's test on the relative decrease of the objective stops
    too early when far outliers dominate the objective; the median distance is
    a scale the outliers cannot inflate while ``f < n/2``.) ``alpha`` are the client weights
    (normalised), as in RFA. The geometric median has breakdown point 1/2: with
    ``f < n/2`` Byzantine clients (equal weights) it stays within
    ``(2 - 2a) / (1 - 2a) * r`` of the honest clients' centre, ``a = f / n``,
    ``r`` their radius (Minsker 2015; Chen, Su, Xu 2017).

    Starting point: RFA starts from the weighted mean, but ``f`` Byzantine
    rows of magnitude ``A`` drag the mean about ``f A / n`` away, and from
    there each Weiszfeld step only shrinks the distance to the honest clients
    by a factor of about ``f / (n - f)``: hundreds of iterations (more than
    ``max_iter``) for ``A = 1e38`` as ``f`` nears ``n / 2``. So the start is
    the weighted mean of the ``n - f`` clients closest to the current start,
    repeated from the mean until that set no longer changes (at most ``f + 1``
    times), keeping whichever of these means has the lowest objective
    (:func:`trimmed_start`): a far row is the farthest from a mean it
    dominates, so it leaves the set, and the start ends near the honest
    clients whatever the magnitudes. With ``f = 0``, and on ordinary cohorts,
    the start is the mean, as in RFA (the trimming costs two extra ``O(n d)``
    passes). The fixed point, the geometric median, does not depend
    on the start where it is unique (points not all on a line). Norms and
    weights are float64 and the weighted sums are formed without overflow
    (:mod:`fl_core.numerics`), so the rule is finite for any finite input.

    Parameters
    ----------
    f : int
        Byzantine clients to tolerate; needs ``n > 2f``.
    nu : float
        Smoothing ``nu > 0`` (RFA's default 1e-6).
    max_iter : int
        Maximum Weiszfeld iterations (>= 1).
    tol : float
        Relative step tolerance for early stopping.

    Notes
    -----
    ``scores`` are the final Weiszfeld weights ``beta_i / sum beta`` (low for
    far-away clients); ``metrics`` holds the iterations run and the objective.

    Examples
    --------
    >>> import numpy as np
    >>> GeometricMedian()(np.array([[0.0], [1.0], [10.0]])).round(3)
    array([1.])
    """

    OUTPUT_REGION = "hull"

    def __init__(self, *, f: int = 0, nu: float = 1e-6, max_iter: int = 100, tol: float = 1e-7) -> None:
        super().__init__(f=f)
        self.nu = check_positive("nu", nu)
        self.max_iter = check_count("max_iter", max_iter, minimum=1)
        self.tol = check_positive("tol", tol)

    def check_tolerance(self, n: int) -> None:
        require(n > 2 * self.f, f"GeometricMedian needs n > 2f, got n={n}, f={self.f}")

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        # a canonical row order (by norm, then row sum) makes every rounding independent of the
        # order the clients came in: on flat parts of the objective (the median set of an even
        # cohort) the start, hence the answer, would otherwise depend on it
        order = canonical_order(updates)
        updates, w = updates.index_select(0, order), weights.to(WIDE).index_select(0, order)
        alpha = w / w.sum()
        v, dist = trimmed_start(updates, alpha, self.f)
        beta = alpha
        iters = 0
        while iters < self.max_iter:
            iters += 1
            beta = alpha / dist.clamp(min=self.nu)
            v_new = combine(beta / beta.sum(), updates)
            step = row_norms(v_new[None], center=v)[0]
            v = v_new
            dist = row_norms(updates, center=v)
            if bool(step <= self.tol * torch.median(dist)):
                break
        objective = float(alpha @ dist)
        scores = torch.empty_like(beta).index_copy_(0, order, beta / beta.sum())
        return AggregationResult(
            aggregate=v,
            kept=all_kept(updates.shape[0], updates.device),
            scores=scores,
            metrics={"iterations": float(iters), "objective": objective},
        )

    def __repr__(self) -> str:
        return f"GeometricMedian(f={self.f}, nu={self.nu}, max_iter={self.max_iter})"
