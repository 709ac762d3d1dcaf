"""Norm bounding (Sun et al., 2019).

Examples
--------
>>> import torch
>>> NormBound(M=1.0)(torch.tensor([[0.5, 0.0], [0.0, 10.0]]))
tensor([0.2500, 0.5000])
"""

from __future__ import annotations

import torch

from defenses.robust.base import RobustAggregator, all_kept, check_positive
from defenses.robust.registry import register
from fl_core.aggregation import AggregationResult, RoundContext
from fl_core.errors import ConfigError
from fl_core.geometry import Decision, GeometricRule, Geometry, Needs
from fl_core.numerics import WIDE, combine, row_norms

__all__ = ["NormBound"]


@register(
    "norm_bound",
    kind="rule",
    description="clip every update to L2 norm M, then weighted mean (Sun et al. 2019)",
)
class NormBound(GeometricRule, RobustAggregator):
    """Clip each update to norm ``M``, then take the weighted mean.

    Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor Federated
    Learning?", arXiv:1911.07963, 2019 (NeurIPS 2019 FL workshop). Each update
    becomes ``x_i * min(1, M / ||x_i||)`` and the clipped updates are averaged
    with the FedAvg weights. It bounds, not removes, each client's influence:
    client ``i`` moves the aggregate by at most ``M w_i / sum w``, whatever its
    magnitude (norms in float64, the clipped sum without overflow; see
    :mod:`fl_core.numerics`).

    Parameters
    ----------
    f : int
        Byzantine clients assumed (only ``n > f`` is required).
    M : float
        Norm bound, ``M > 0``; there is no universal default, it depends on the
        model and learning rate.
    reject : bool
        Leave updates of norm above ``M`` out (and average the others) instead of
        clipping them; if every update is over, the aggregate is zero.

    Notes
    -----
    ``scores`` are the norms ``||x_i||``; ``metrics['clipped']`` counts clipped updates.

    Examples
    --------
    >>> import numpy as np
    >>> NormBound(M=5.0)(np.array([[3.0, 4.0], [30.0, 40.0]]))
    array([3., 4.])
    """

    OUTPUT_REGION = "hull"

    def __init__(self, *, f: int = 0, M: float, reject: bool = False) -> None:
        super().__init__(f=f)
        self.M = check_positive("M", M)
        if not isinstance(reject, bool):
            raise ConfigError(f"reject must be a bool, got reject={reject!r}")
        self.reject = reject

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        norms = row_norms(updates)
        coef, over = self._coef(norms, weights)
        return AggregationResult(
            aggregate=combine(coef, updates),
            kept=~over if self.reject else all_kept(updates.shape[0], updates.device),
            scores=norms,
            metrics={"clipped": float(over.sum())},
        )

    def _coef(self, norms: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        over = norms > self.M
        w = weights.to(WIDE).to(norms.device)
        if self.reject:
            kept = w * (~over).to(WIDE)
            total = kept.sum()
            return (kept / total if bool(total > 0) else kept), over
        scale = torch.where(over, self.M / norms, torch.ones_like(norms))
        return scale * w / w.sum(), over

    def geometry_needs(self) -> Needs:
        """Only the norms."""
        return Needs.NORMS

    def decide(self, geometry: Geometry, weights: torch.Tensor, ctx: RoundContext | None) -> Decision:
        """The clip factors ``min(1, M / ||x_i||)`` times the normalised weights."""
        norms = geometry.norms2().clamp_min(0.0).sqrt()
        coef, over = self._coef(norms, weights)
        full = torch.cat([coef, torch.zeros(geometry.r, dtype=WIDE, device=coef.device)])
        kept = ~over if self.reject else all_kept(geometry.n, coef.device)
        return Decision(coef=full, kept=kept, scores=norms,
                        metrics={"clipped": float(over.sum())})

    def __repr__(self) -> str:
        extra = ", reject=True" if self.reject else ""
        return f"NormBound(f={self.f}, M={self.M}{extra})"
