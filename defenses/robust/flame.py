"""FLAME (Nguyen et al., USENIX Security 2022).

Examples
--------
>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> honest = 1.0 + 0.5 * torch.randn(7, 50, generator=g)
>>> backdoor = -3.0 * torch.linspace(-1, 1, 50) + 0.1 * torch.randn(3, 50, generator=g)
>>> result = FLAME(f=3, generator=g).aggregate(torch.cat([honest, backdoor]))
>>> result.kept.tolist()  # HDBSCAN may also leave an honest update out as noise
[False, True, True, True, True, True, True, False, False, False]
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from sklearn.cluster import HDBSCAN

from defenses.robust.base import RobustAggregator, is_real, require, resolve_generator
from defenses.robust.distances import cosine_from_gram, pairwise_cosine_similarity
from defenses.robust.registry import register
from defenses.robust.sorting import column_median, sort_columns
from fl_core.aggregation import AggregationResult, RoundContext
from fl_core.errors import ConfigError
from fl_core.geometry import Decision, GeometricRule, Geometry, Needs
from fl_core.numerics import WIDE, combine, row_norms

__all__ = ["FLAME", "flame_admit", "flame_clusters"]

logger = logging.getLogger(__name__)


def flame_clusters(updates: torch.Tensor) -> torch.Tensor:
    """FLAME's admission mask: the majority HDBSCAN cluster on pairwise cosine distances.

    HDBSCAN runs on the precomputed ``(n, n)`` matrix ``1 - cos(x_i, x_j)`` with
    ``min_cluster_size = n // 2 + 1``, ``min_samples = 1`` and
    ``allow_single_cluster=True``, so at most one cluster (a majority) exists;
    noise points are rejected. Returns an ``(n,)`` bool mask on the updates' device.

    Examples
    --------
    >>> import torch
    >>> U = torch.tensor([[1.0, 0.0], [1.0, 0.1], [1.0, -0.1], [-1.0, 0.0]])
    >>> flame_clusters(U).tolist()
    [True, True, True, False]
    """
    return flame_admit(pairwise_cosine_similarity(updates)).to(updates.device)


def flame_admit(cos: torch.Tensor) -> torch.Tensor:
    """The majority-cluster mask of :func:`flame_clusters` from the ``(n, n)`` cosine matrix."""
    n = cos.shape[0]
    dist = (1.0 - cos).double().cpu().numpy()
    dist = np.clip(0.5 * (dist + dist.T), 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    labels = (
        HDBSCAN(
            min_cluster_size=n // 2 + 1,
            min_samples=1,
            metric="precomputed",
            allow_single_cluster=True,
            copy=False,
        )
        .fit(dist)
        .labels_
    )
    clustered = labels[labels >= 0]
    if clustered.size == 0:
        return torch.zeros(n, dtype=torch.bool, device=cos.device)
    majority = np.bincount(clustered).argmax()
    return torch.as_tensor(labels == majority, device=cos.device)


@register(
    "flame",
    kind="rule",
    description="HDBSCAN on cosine distances, median-norm clipping, "
    "adaptive Gaussian noise (Nguyen et al. 2022); n > 2f",
)
class FLAME(GeometricRule, RobustAggregator):
    """FLAME: clustering, adaptive clipping and adaptive noise against backdoors.

    Nguyen, Rieger, Chen, Yalame, Möllering, Fereidooni, Marchal, Miettinen,
    Mirhoseini, Zeitouni, Koushanfar, Sadeghi, Schneider, "FLAME: Taming
    Backdoors in Federated Learning", USENIX Security 2022 (Algorithm 1):

    1. cluster the updates with HDBSCAN on pairwise cosine distances
       (``min_cluster_size = n/2 + 1``) and admit only the majority cluster
       (:func:`flame_clusters`);
    2. clip every admitted update to ``S_t = median_i ||x_i||``, the median of
       the L2 distances between the local and the global models over all ``n``
       clients: ``x_i * min(1, S_t / ||x_i||)``;
    3. average the clipped admitted updates and add Gaussian noise
       ``N(0, sigma^2 I)`` with ``sigma = lambda * S_t``.

    The updates are the differences local - global, so ``||x_i||`` is the
    paper's ``e_i``; the cosine distances are computed on these updates (the
    paper writes them on the local models ``W_i``; on updates the angles are
    not dominated by the shared global model). Unweighted, as in the paper.

    With ``f < n / 2`` Byzantine clients ``S_t`` is at most the largest honest
    norm, so without noise the aggregate's norm is at most that, whatever the
    Byzantine magnitudes: cosines, norms and ``S_t`` are float64 and the sum is
    formed without overflow (:mod:`fl_core.numerics`); HDBSCAN sees
    finite cosine distances for any finite input.

    Parameters
    ----------
    f : int
        Byzantine clients assumed; FLAME needs an honest majority, ``n > 2f``,
        and ``n >= 3`` for clustering.
    lam : float
        Noise level ``lambda >= 0``; 0 disables the noise (the paper: 0.001 for image classification,
        0.01 for word prediction and IoT intrusion detection).
    generator : torch.Generator, optional
        Generator for the noise when no ``ctx`` is given; ``ctx.generator``
        takes precedence.

    Raises
    ------
    MissingGeneratorError
        If neither ``ctx.generator`` nor ``generator`` is available.

    Notes
    -----
    ``kept`` marks the admitted cluster; ``scores`` are the clipping factors
    ``min(1, S_t / ||x_i||)``; ``metrics`` holds ``S_t`` and ``sigma``. If no
    cluster forms, the aggregate is the zero update, without noise (warning
    logged).

    Examples
    --------
    >>> import numpy as np, torch
    >>> rule = FLAME(lam=0.0, generator=torch.Generator().manual_seed(1))
    >>> rule(np.array([[1.0, 0.0], [1.0, 0.1], [1.0, -0.1]]))
    array([1., 0.])
    """

    def __init__(self, *, f: int = 0, lam: float = 0.001, generator: torch.Generator | None = None) -> None:
        super().__init__(f=f)
        if not is_real(lam) or not 0 <= float(lam) < float("inf"):
            raise ConfigError(f"lam must be a finite number >= 0, got lam={lam!r}")
        self.lam = float(lam)
        self.generator = generator

    def check_tolerance(self, n: int) -> None:
        require(n >= 3, f"FLAME needs n >= 3 clients to cluster, got n={n}, f={self.f}")
        require(n > 2 * self.f, f"FLAME needs n > 2f, got n={n}, f={self.f}")

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        gen = resolve_generator(self.generator, ctx, "FLAME")
        coef, admitted, factor, metrics = self._coef(flame_clusters(updates), row_norms(updates))
        agg = combine(coef, updates)
        if metrics["admitted"] > 0:
            noise = torch.randn(updates.shape[1], generator=gen, device=gen.device, dtype=updates.dtype)
            coef_noise = torch.tensor([1.0, metrics["sigma"]], dtype=WIDE, device=updates.device)
            agg = combine(coef_noise, torch.stack([agg, noise.to(updates.device)]))
        return AggregationResult(aggregate=agg, kept=admitted, scores=factor, metrics=metrics)

    def _coef(self, admitted: torch.Tensor, norms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Coefficients, admission mask, clip factors and metrics from the cluster mask and the norms."""
        s_t = column_median(sort_columns(norms[:, None]))[0]
        safe = torch.where(norms > 0, norms, torch.ones_like(norms))
        factor = torch.where(norms > s_t, s_t / safe, torch.ones_like(norms))
        count = int(admitted.sum())
        if count == 0:
            logger.warning("FLAME: HDBSCAN admitted no cluster; returning the zero update")
        coef = factor * admitted.to(WIDE) / max(count, 1)
        sigma = self.lam * float(s_t) if count else 0.0
        return coef, admitted, factor, {"S_t": float(s_t), "sigma": sigma, "admitted": float(count)}

    def geometry_needs(self) -> Needs:
        """Pairwise cosines: every inner product."""
        return Needs.GRAM

    def decide(self, geometry: Geometry, weights: torch.Tensor, ctx: RoundContext | None) -> Decision:
        """Clusters from the cosines of the Gram matrix, ``S_t`` from the norms; the noise is the servers' to add."""
        self.check_tolerance(geometry.n)
        admitted = flame_admit(cosine_from_gram(geometry.client_gram()))
        coef, admitted, factor, metrics = self._coef(admitted, geometry.norms2().clamp_min(0.0).sqrt())
        full = torch.cat([coef, torch.zeros(geometry.r, dtype=WIDE, device=coef.device)])
        return Decision(coef=full, kept=admitted, scores=factor, metrics=metrics, noise_std=metrics["sigma"])

    def __repr__(self) -> str:
        return f"FLAME(f={self.f}, lam={self.lam})"
