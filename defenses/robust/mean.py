"""Weighted mean (FedAvg), registered under the robust rules' call shape.

Examples
--------
>>> import numpy as np
>>> Mean()(np.array([[0.0, 2.0], [2.0, 4.0]]), weights=[1, 3])
array([1.5, 3.5])
"""

from __future__ import annotations

import torch

from defenses.robust.base import RobustAggregator, all_kept
from defenses.robust.registry import register
from fl_core.aggregation import AggregationResult, RoundContext, WeightedMean
from fl_core.contracts import StageContract
from fl_core.errors import ToleranceError
from fl_core.numerics import WIDE, combine

__all__ = ["Mean"]


@register("mean", kind="rule", description="weighted mean (FedAvg, McMahan et al. 2017); f = 0")
class Mean(RobustAggregator, WeightedMean):
    """Weighted mean ``sum_i w_i x_i / sum_i w_i``: FedAvg's aggregation.

    McMahan, Moore, Ramage, Hampson, Agüera y Arcas, "Communication-Efficient
    Learning of Deep Networks from Decentralized Data", AISTATS 2017. It is
    :class:`fl_core.aggregation.WeightedMean` with the three input forms; a
    single Byzantine client can move it arbitrarily, so it tolerates ``f = 0``.
    The weights are normalised and the sum accumulated without overflow
    (:func:`~fl_core.numerics.combine`): the mean of finite values lies
    within their range, so it is finite for any finite input.

    Parameters
    ----------
    f : int
        Must be 0.

    Raises
    ------
    ToleranceError
        If ``f > 0``.

    Examples
    --------
    >>> import torch
    >>> Mean()(torch.tensor([[1.0], [3.0]]))
    tensor([2.])
    """

    OUTPUT_REGION = "hull"

    def contract(self) -> StageContract:
        """The plain weighted mean (what mean-calibrated server noise expects)."""
        return StageContract(output="mean", bounded=True)

    def __init__(self, *, f: int = 0) -> None:
        super().__init__(f=f)
        if self.f != 0:
            raise ToleranceError(f"Mean tolerates no Byzantine client: needs f = 0, got f={self.f}")

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        w = weights.to(WIDE)
        agg = combine(w / w.sum(), updates)
        return AggregationResult(aggregate=agg, kept=all_kept(updates.shape[0], updates.device))
