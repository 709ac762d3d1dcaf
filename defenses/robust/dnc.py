"""Divide-and-Conquer (DnC, Shejwalkar and Houmansadr, NDSS 2021).

Examples
--------
>>> import torch
>>> honest = torch.tensor([[1.0, 0.0], [1.1, 0.1], [0.9, -0.1], [1.0, 0.1], [1.05, -0.05]])
>>> result = DnC(f=1, b=2).aggregate(torch.cat([honest, torch.tensor([[-20.0, 30.0]])]))
>>> result.kept.tolist()
[True, True, True, True, True, False]
"""

from __future__ import annotations

import logging
import math

import torch

from defenses.robust.base import (
    RobustAggregator,
    check_count,
    check_positive,
    require,
    resolve_generator,
)
from defenses.robust.registry import register
from fl_core.aggregation import AggregationResult, RoundContext
from fl_core.numerics import WIDE, abs_max, combine, pow2_scale

__all__ = ["DnC", "outlier_scores"]

logger = logging.getLogger(__name__)


def _top_direction_scores(sub: torch.Tensor) -> torch.Tensor | None:
    """DnC scores ``<x_i - mu, v>^2`` (float64) in the cohort's dtype, or ``None`` if anything overflowed."""
    centred = sub - sub.mean(dim=0)
    # a finite sum proves every entry finite (one reduction, as in validate_cohort)
    if not bool(torch.isfinite(centred.sum())):
        return None
    v = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    proj = (centred @ v).to(WIDE)
    if not bool(torch.isfinite(proj).all()):
        return None
    return proj**2


def outlier_scores(sub: torch.Tensor) -> torch.Tensor:
    """DnC's outlier scores ``s_i = <x_i - mu, v>^2`` of the rows of ``sub`` ``(n, b)``, in float64.

    ``mu`` is the mean row and ``v`` the top right singular vector of the
    centred matrix. Computed in the rows' dtype when nothing overflows (the
    usual case), else in float64 on the cohort scaled by a power of two (the
    singular vectors do not change with the scale, the scores scale by its
    square), so a Byzantine row of any finite magnitude gets its true, largest score.

    Examples
    --------
    >>> import torch
    >>> sub = torch.tensor([[0.0, 1.0], [0.1, 0.9], [-0.1, 1.1], [3e38, -3e38]])
    >>> int(torch.argmax(outlier_scores(sub)))
    3
    """
    scores = _top_direction_scores(sub)
    if scores is not None:
        return scores
    wide = sub.to(WIDE)
    scale = pow2_scale(abs_max(wide)) if torch.finfo(sub.dtype).max >= torch.finfo(WIDE).max else None
    if scale is not None:
        wide = wide * scale
    centred = wide - wide.mean(dim=0)
    v = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    proj = centred @ v
    return proj**2 if scale is None else (proj / scale) ** 2


@register(
    "dnc",
    kind="rule",
    description="SVD outlier scores on random coordinate subsets, "
    "drop the c*f highest (Shejwalkar & Houmansadr 2021); n > 2f",
)
class DnC(RobustAggregator):
    """Divide-and-Conquer: spectral filtering on random coordinate subsets.

    Shejwalkar, Houmansadr, "Manipulating the Byzantine: Optimizing Model
    Poisoning Attacks and Defenses for Federated Learning", NDSS 2021
    (Algorithm 2). In each of ``niters`` iterations: draw ``b`` coordinates at
    random, centre the sub-sampled updates on their mean, take the top right
    singular vector ``v`` of the centred matrix, score ``s_i = <x_i - mu, v>^2``
    and keep the ``n - ceil(c f)`` lowest scores. The good set is the
    intersection over iterations; the aggregate is the mean of the good updates
    on all coordinates. ``f = 0`` gives the mean. The scores are float64 and
    exact in range for any finite input (:func:`outlier_scores`), so a
    Byzantine row far along the top singular direction is removed whatever its
    magnitude.

    Parameters
    ----------
    f : int
        Byzantine clients to tolerate; needs ``n > 2f`` and ``n - ceil(c f) >= 1``.
    niters : int
        Iterations (random coordinate subsets).
    b : int
        Coordinates per subset; all ``d`` coordinates (no randomness) when ``b >= d``.
    c : float
        Filtering fraction ``c > 0`` (``c f`` updates removed per iteration).
    generator : torch.Generator, optional
        For the coordinate subsets when no ``ctx`` is given; ``ctx.generator``
        takes precedence. Needed only when ``b < d``.

    Notes
    -----
    ``scores`` are the outlier scores ``s_i`` summed over the iterations;
    ``kept`` is the good set. Unweighted, as in the paper. If the good sets of
    the iterations do not intersect, the aggregate is the zero update (warning
    logged).

    Examples
    --------
    >>> import numpy as np
    >>> DnC(f=0)(np.array([[1.0, 2.0], [3.0, 4.0]]))
    array([2., 3.])
    """

    OUTPUT_REGION = "hull"

    def __init__(
        self,
        *,
        f: int = 0,
        niters: int = 5,
        b: int = 10_000,
        c: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(f=f)
        self.niters = check_count("niters", niters, minimum=1)
        self.b = check_count("b", b, minimum=1)
        self.c = check_positive("c", c)
        self.generator = generator

    def _n_removed(self) -> int:
        return math.ceil(self.c * self.f - 1e-12)

    def check_tolerance(self, n: int) -> None:
        require(n > 2 * self.f, f"DnC needs n > 2f, got n={n}, f={self.f}")
        require(
            n - self._n_removed() >= 1,
            f"DnC needs n - ceil(c*f) >= 1, got n={n}, f={self.f}, c={self.c}",
        )

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        n, d = updates.shape
        keep_count = n - self._n_removed()
        good = torch.ones(n, dtype=torch.bool, device=updates.device)
        total_scores = torch.zeros(n, dtype=WIDE, device=updates.device)
        gen = resolve_generator(self.generator, ctx, "DnC") if self.b < d else None
        for _ in range(self.niters):
            if gen is None:
                sub = updates
            else:
                idx = torch.randperm(d, generator=gen, device=gen.device)[: self.b]
                sub = updates[:, torch.sort(idx.to(updates.device)).values]
            scores = outlier_scores(sub)
            total_scores += scores
            kept_now = torch.zeros(n, dtype=torch.bool, device=updates.device)
            kept_now[torch.argsort(scores, stable=True)[:keep_count]] = True
            good &= kept_now
            if gen is None:
                break  # every iteration would see the same coordinates
        count = int(good.sum())
        if count == 0:
            logger.warning("DnC: the good sets of the iterations do not intersect; zero update")
            agg = torch.zeros_like(updates[0])
        else:
            agg = combine(good.to(WIDE) / count, updates)
        return AggregationResult(aggregate=agg, kept=good, scores=total_scores)

    def __repr__(self) -> str:
        return f"DnC(f={self.f}, niters={self.niters}, b={self.b}, c={self.c})"
