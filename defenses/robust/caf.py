"""CAF, the covariance-bound agnostic filter (Allouah, Guerraoui, Stephan, ICML 2025), byzfl's ``CAF``.

Examples
--------
>>> import torch
>>> CAF(f=1)(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]))
tensor([4., 5., 6.])
"""

from __future__ import annotations

import torch

from defenses.robust.base import RobustAggregator, all_kept, require
from defenses.robust.distances import scaled_sq_distances
from defenses.robust.registry import register
from fl_core.aggregation import AggregationResult, RoundContext
from fl_core.numerics import WIDE, combine, safe_mean, unscale

__all__ = ["CAF", "caf_weights"]


def caf_weights(sq_dist: torch.Tensor, f: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CAF's filter on an ``(n, n)`` squared-distance matrix: ``(p, lam)``, the weights of the returned mean.

    ``p`` (``(n,)``, float64, summing to 1) are the normalised weights ``c / sum c``
    of the iteration whose weighted covariance had the smallest top eigenvalue
    ``lam`` (in the units of ``sq_dist``). Every quantity the filter needs is
    an inner product of rows centred on the weighted mean ``mu_c``, so it runs on
    the ``n x n`` centred Gram matrix obtained from the distances by double
    centring::

        G_ij = <x_i - mu_c, x_j - mu_c> = -(D_ij - a_i - a_j + b) / 2,
        a_i = sum_k p_k D_ik,  b = sum_i p_i a_i

    The top eigenpair ``(lam, u)`` of ``P^1/2 G P^1/2`` (exact, ``torch.linalg.eigh``)
    is that of the weighted covariance ``Sigma_c = sum_i p_i (x_i - mu_c)(x_i - mu_c)^T``,
    whose top eigenvector is ``v = sum_i sqrt(p_i) u_i (x_i - mu_c) / sqrt(lam)``; the
    projections are ``(x_i - mu_c) . v = (G P^1/2 u)_i / sqrt(lam)``. No ``d``-dimensional
    vector is formed, and a row with weight 0 enters no sum (its huge distances are
    multiplied by an exact 0).

    Examples
    --------
    >>> import torch
    >>> D = torch.tensor([[0.0, 1.0, 100.0], [1.0, 0.0, 81.0], [100.0, 81.0, 0.0]], dtype=torch.float64)
    >>> p, lam = caf_weights(D, 1)
    >>> [round(v, 4) for v in p.tolist()], round(lam.item(), 4)  # round 1 drops row 2, round 2 has lam = p0 p1
    ([0.4469, 0.5531, 0.0], 0.2472)
    """
    n = sq_dist.shape[0]
    c = torch.ones(n, dtype=WIDE, device=sq_dist.device)
    best_p, best_lam = c / n, torch.tensor(float("inf"), dtype=WIDE, device=sq_dist.device)
    while bool(c.sum() > n - 2 * f):
        p = c / c.sum()
        a = sq_dist @ p
        b = p @ a
        gram = -0.5 * (sq_dist - a[:, None] - a[None, :] + b)
        root = torch.sqrt(p)
        values, vectors = torch.linalg.eigh(root[:, None] * gram * root[None, :])
        lam = values[-1].clamp(min=0.0)
        if bool(lam < best_lam):
            best_p, best_lam = p, lam
        if not bool(lam > 0):
            break  # the weighted rows coincide: no direction left to filter along
        proj = gram @ (root * vectors[:, -1])
        tau = proj * proj / lam
        active = c > 0
        tau_max = tau[active].max()
        if not bool(tau_max > 0):
            break
        c = (c * (1.0 - tau / tau_max)).clamp(min=0.0).masked_fill(~active, 0.0)
        c[active & (tau == tau_max)] = 0.0
    return best_p, best_lam


@register(
    "caf",
    kind="rule",
    description="covariance-bound agnostic filter: spectral down-weighting, mean with the "
    "smallest top eigenvalue (Allouah et al. 2025); n > 2f",
)
class CAF(RobustAggregator):
    """Covariance-bound agnostic filter: iterative spectral filtering of the weighted mean.

    Allouah, Guerraoui, Stephan, "Towards Trustworthy Federated Learning with
    Untrusted Participants", ICML 2025 (Algorithm 2; byzfl's ``CAF``). With
    weights ``c_i = 1``, while ``sum_i c_i > n - 2f``:

    1. ``mu_c = sum_i c_i x_i / sum_i c_i`` and the weighted covariance
       ``Sigma_c = sum_i c_i (x_i - mu_c)(x_i - mu_c)^T / sum_i c_i``;
    2. ``(lambda, v)``, the top eigenpair of ``Sigma_c``; remember ``mu_c`` if
       ``lambda`` is the smallest so far;
    3. ``tau_i = ((x_i - mu_c) . v)^2`` and ``c_i <- c_i (1 - tau_i / tau_max)``,
       ``tau_max`` the largest ``tau_i`` over the rows still weighted (the row
       attaining it drops to weight 0, so the loop ends within ``n`` rounds).

    The aggregate is the remembered ``mu_c``. The eigenpair is exact
    (:func:`caf_weights`, an ``n x n`` eigendecomposition, where byzfl runs
    one power-method step from a random vector), so the rule is deterministic.
    ``f = 0`` is the mean (the loop never runs). Unweighted, as in the paper.

    Extreme values: the filter runs on the float64 distance matrix of
    :func:`~defenses.robust.distances.scaled_sq_distances` (exact in range for
    any finite input), and the mean is formed with
    :func:`~fl_core.numerics.combine`. A row of ``3e38`` has the largest
    projection in the first round and drops to weight exactly 0, after which it
    enters no sum; the smaller eigenvalues of the later rounds are chosen.

    Parameters
    ----------
    f : int
        Byzantine clients to tolerate; needs ``n > 2f``.

    Notes
    -----
    ``scores`` are the normalised weights ``c_i / sum c`` of the returned mean;
    ``kept`` is ``c_i > 0``; ``metrics["lambda"]`` is its top eigenvalue (``inf``
    where it exceeds float64, for float64 input beyond ``~1e154``).
    Rounding: the centred Gram matrix inherits the distances' error, about
    ``eps`` times the squared norms of the rows involved, as in Krum.

    Examples
    --------
    >>> import numpy as np
    >>> CAF(f=1)(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [50.0, 50.0]])).round(3).tolist()
    [0.502, 0.502]
    """

    OUTPUT_REGION = "hull"

    def check_tolerance(self, n: int) -> None:
        require(n > 2 * self.f, f"CAF needs n > 2f, got n={n}, f={self.f}")

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        n = updates.shape[0]
        if self.f == 0:
            p = torch.full((n,), 1.0 / n, dtype=WIDE, device=updates.device)
            return AggregationResult(aggregate=safe_mean(updates), kept=all_kept(n, updates.device), scores=p)
        sq_dist, log2 = scaled_sq_distances(updates)
        p, lam = caf_weights(sq_dist, self.f)
        agg = combine(p, updates)
        return AggregationResult(
            aggregate=agg, kept=p > 0, scores=p, metrics={"lambda": float(unscale(lam, log2))}
        )
