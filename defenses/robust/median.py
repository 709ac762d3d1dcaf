"""Coordinate-wise median (Yin et al., ICML 2018).

Examples
--------
>>> import torch
>>> Median(f=1)(torch.tensor([[0.0, 5.0], [1.0, -9.0], [100.0, 6.0]]))
tensor([1., 5.])
"""

from __future__ import annotations

import torch

from defenses.robust.base import RobustAggregator, all_kept, require
from defenses.robust.registry import register
from defenses.robust.sorting import column_median, sort_columns
from fl_core.aggregation import AggregationResult, RoundContext

__all__ = ["Median"]


@register("median", kind="rule", description="coordinate-wise median (Yin et al. 2018); n > 2f")
class Median(RobustAggregator):
    """Coordinate-wise median.

    Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning:
    Towards Optimal Statistical Rates", ICML 2018. Each coordinate of the
    aggregate is the median of that coordinate over the ``n`` clients (the mean
    of the two middle values for even ``n``). With ``f < n/2`` Byzantine rows,
    every coordinate stays within the range of the honest values. Unweighted,
    as in the paper.

    Parameters
    ----------
    f : int
        Byzantine clients to tolerate; needs ``n > 2f``.

    Examples
    --------
    >>> import numpy as np
    >>> Median(f=1)(np.array([[1.0], [2.0], [4.0], [1e9]]))
    array([3.])
    """

    OUTPUT_REGION = "coordinates"

    def check_tolerance(self, n: int) -> None:
        require(n > 2 * self.f, f"Median needs n > 2f, got n={n}, f={self.f}")

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        agg = column_median(sort_columns(updates))
        return AggregationResult(aggregate=agg, kept=all_kept(updates.shape[0], updates.device))
