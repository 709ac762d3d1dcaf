"""Robust learning rate: per-coordinate sign voting (Ozdayi, Kantarcioglu, Gel, AAAI 2021).

Examples
--------
>>> import torch
>>> RLR(f=1, theta=2)(torch.tensor([[1.0, 1.0], [1.0, -1.0], [1.0, 1.0], [1.0, -3.0]]))
tensor([1.0000, 0.5000])
"""

from __future__ import annotations

import torch

from defenses.robust.base import RobustAggregator, all_kept, check_count, require
from defenses.robust.registry import register
from fl_core.aggregation import AggregationResult, RoundContext
from fl_core.numerics import WIDE, combine

__all__ = ["RLR", "sign_votes"]


def sign_votes(updates: torch.Tensor) -> torch.Tensor:
    """``(d,)`` int64 sums of the coordinate signs, ``sum_k sgn(x_kj)`` (``sgn(0) = 0``), exact for ``n < 2^24``.

    Examples
    --------
    >>> import torch
    >>> sign_votes(torch.tensor([[2.0, 0.0, -1.0], [3e38, -5.0, -1.0]])).tolist()
    [2, -1, -2]
    """
    # the signs summed in float32 (float64 for float64 input): exact for n < 2^24, without an (n, d) int64 copy
    acc = torch.float64 if updates.dtype == torch.float64 else torch.float32
    return torch.sign(updates).sum(dim=0, dtype=acc).to(torch.int64)


@register(
    "rlr",
    kind="rule",
    description="robust learning rate: negate coordinates whose sign agreement |sum sgn| "
    "is below theta (Ozdayi et al. 2021); theta <= n",
)
class RLR(RobustAggregator):
    """Robust learning rate (sign voting) against backdoors.

    Ozdayi, Kantarcioglu, Gel, "Defending Against Backdoors in Federated
    Learning with Robust Learning Rate", AAAI 2021. The server's learning rate
    is set per coordinate ``j`` from the agreement of the updates' signs::

        eta_j = +eta  if |sum_k sgn(x_kj)| >= theta,  else -eta
        w_{t+1} = w_t + eta ⊙ (sum_k n_k x_k / sum_k n_k)

    This rule returns ``s ⊙ mean`` with ``s_j = ±1``; the server optimiser
    applies ``eta``. The mean is weighted by the weights given (the paper's
    example counts ``n_k``; equal by default); the votes are one per client,
    as in the paper. A coordinate on which fewer than ``theta`` clients agree
    (a direction pushed mainly by a backdoor) is moved *against* the mean.
    The paper advises ``theta`` above the number of corrupt agents; the
    default is ``theta = f + 1``.

    Guarantee used in the tests: a coordinate on which every honest client
    has the same non-zero sign keeps the honest direction whenever
    ``n - 2f >= theta`` (``f`` Byzantine votes lower the agreement by at most ``2f``),
    whatever the Byzantine values. The votes bound no magnitude: a Byzantine
    row of ``3e38`` moves the mean (computed without overflow,
    :func:`~fl_core.numerics.combine`); the paper pairs the rule with norm
    clipping, e.g. ``Compose(ARC(f=f), RLR(f=f))``.

    Parameters
    ----------
    f : int
        Byzantine clients assumed (sets the default ``theta``); ``n > f``.
    theta : int, optional
        Agreement threshold, ``1 <= theta <= n`` (``theta > n`` would negate
        every coordinate); default ``f + 1``.

    Notes
    -----
    ``s ⊙ mean`` has the norm of the mean, at most the largest row norm ``C``,
    so the sensitivity is ``2C`` (:meth:`sensitivity`), though the output is
    not in the rows' hull. ``metrics["flipped"]`` is the fraction of
    coordinates negated.

    Examples
    --------
    >>> import numpy as np
    >>> RLR(theta=3)(np.array([[1.0, 2.0], [1.0, -2.0], [1.0, 3.0]]))
    array([ 1., -1.])
    """

    OUTPUT_REGION = "ball"

    def __init__(self, *, f: int = 0, theta: int | None = None) -> None:
        super().__init__(f=f)
        self.theta = self.f + 1 if theta is None else check_count("theta", theta, minimum=1)


    def check_tolerance(self, n: int) -> None:
        super().check_tolerance(n)
        require(
            self.theta <= n,
            f"RLR needs theta <= n (otherwise every coordinate is negated), got n={n}, theta={self.theta}, f={self.f}",
        )

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        n = updates.shape[0]
        w = weights.to(WIDE)
        mean = combine(w / w.sum(), updates)
        flip = sign_votes(updates).abs() < self.theta
        agg = torch.where(flip, -mean, mean)
        return AggregationResult(
            aggregate=agg, kept=all_kept(n, updates.device), metrics={"flipped": float(flip.to(WIDE).mean())}
        )

    def __repr__(self) -> str:
        return f"RLR(f={self.f}, theta={self.theta})"
