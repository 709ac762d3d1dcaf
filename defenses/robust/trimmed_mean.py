"""Coordinate-wise trimmed mean (Yin et al., ICML 2018).

Examples
--------
>>> import torch
>>> TrimmedMean(f=1)(torch.tensor([[0.0], [1.0], [2.0], [100.0]]))
tensor([1.5000])
"""

from __future__ import annotations

import torch

from defenses.robust.base import RobustAggregator, all_kept, require
from defenses.robust.registry import register
from defenses.robust.sorting import sort_columns
from fl_core.aggregation import AggregationResult, RoundContext
from fl_core.numerics import safe_mean

__all__ = ["TrimmedMean"]


@register(
    "trimmed_mean",
    kind="rule",
    description="coordinate-wise mean without the f largest and f smallest values (Yin et al. 2018); n > 2f",
)
class TrimmedMean(RobustAggregator):
    """Coordinate-wise trimmed mean.

    Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning:
    Towards Optimal Statistical Rates", ICML 2018. For each coordinate, drop the
    ``f`` largest and ``f`` smallest values (the paper's beta-fraction with
    ``beta = f / n``) and average the ``n - 2f`` others. ``f = 0`` is the mean;
    with at most ``f`` Byzantine rows each coordinate lies within the honest
    range. Unweighted, as in the paper. The mean is computed without overflow
    (:func:`~fl_core.numerics.safe_mean`) for any finite input.

    Parameters
    ----------
    f : int
        Values trimmed at each end per coordinate; needs ``n > 2f``.

    Examples
    --------
    >>> import numpy as np
    >>> TrimmedMean(f=0)(np.array([[1.0], [2.0]]))
    array([1.5])
    """

    OUTPUT_REGION = "coordinates"

    def check_tolerance(self, n: int) -> None:
        require(n > 2 * self.f, f"TrimmedMean needs n > 2f, got n={n}, f={self.f}")

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        n = updates.shape[0]
        if self.f == 0:
            agg = safe_mean(updates)
        else:
            agg = safe_mean(sort_columns(updates)[self.f : n - self.f])
        return AggregationResult(aggregate=agg, kept=all_kept(n, updates.device))
