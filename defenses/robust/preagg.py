"""Pre-aggregators: NNM, bucketing and ARC map the cohort ``(n, d) -> (m, d)``.

Chain them in front of any rule with :class:`defenses.robust.compose.Compose`,
e.g. ``Compose(NNM(f=2), Krum(f=2))``.

Examples
--------
>>> import torch
>>> NNM(f=1)(torch.tensor([[0.0], [1.0], [10.0]]))
tensor([[0.5000],
        [0.5000],
        [5.5000]])
"""

from __future__ import annotations

import math

import torch

from defenses.robust.base import (
    PreAggregation,
    PreAggregator,
    check_count,
    require,
    resolve_generator,
)
from defenses.robust.distances import scaled_sq_distances
from defenses.robust.registry import register
from fl_core.aggregation import RoundContext
from fl_core.geometry import GeometricMixer, Geometry, Needs
from fl_core.numerics import WIDE, clip_rows, mix_rows, row_norms

__all__ = ["ARC", "NNM", "Bucketing"]


def _identity_owner(n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, device=device)


@register(
    "nnm",
    kind="pre",
    description="replace each update by the mean of its n-f nearest neighbours (Allouah et al. 2023); n > 2f",
)
class NNM(GeometricMixer, PreAggregator):
    """Nearest Neighbour Mixing.

    Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by Mixing:
    A Recipe for Optimal Byzantine ML under Heterogeneity", AISTATS 2023.
    Each ``x_i`` is replaced by the mean of its ``n - f`` nearest neighbours
    in Euclidean distance (itself included). One ``(n, n)`` distance matrix
    and one ``(n, n) x (n, d)`` product. ``f = 0`` maps every row to the mean.
    Distances and means are computed without overflow
    (:mod:`defenses.robust.distances`, :mod:`fl_core.numerics`): an
    honest row's ``n - f`` nearest neighbours include no Byzantine row of large
    magnitude, so its mixed row stays in the honest hull.

    Parameters
    ----------
    f : int
        Byzantine clients to tolerate; needs ``n > 2f``.

    Examples
    --------
    >>> import numpy as np
    >>> NNM(f=0)(np.array([[0.0], [2.0]]))
    array([[1.],
           [1.]])
    """

    KEEPS_BALL = True

    def check_tolerance(self, n: int) -> None:
        require(n > 2 * self.f, f"NNM needs n > 2f, got n={n}, f={self.f}")

    def _transform(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> PreAggregation:
        n = updates.shape[0]
        mix = _nnm_mix(scaled_sq_distances(updates)[0], n - self.f)
        return PreAggregation(updates=mix_rows(mix, updates), weights=weights, owner=_identity_owner(n, updates.device))

    def geometry_needs(self) -> Needs:
        """Pairwise distances: every inner product."""
        return Needs.GRAM

    def mixing(self, geometry: Geometry, weights: torch.Tensor, ctx: RoundContext | None) -> torch.Tensor:
        """The same ``(n, n)`` mixing matrix, from the distances of the geometry."""
        self.check_tolerance(geometry.n)
        return _nnm_mix(geometry.sq_distances().clone(), geometry.n - self.f)


def _nnm_mix(key: torch.Tensor, k: int) -> torch.Tensor:
    """Row ``i``: ``1/k`` on the ``k`` nearest rows of ``i`` (itself first on ties), from squared distances ``key``."""
    n = key.shape[0]
    key.fill_diagonal_(-1.0)
    neighbours = key.topk(k, dim=1, largest=False).indices
    mix = torch.zeros(n, n, dtype=WIDE, device=key.device)
    return mix.scatter_(1, neighbours, 1.0 / k)


@register("bucketing", kind="pre", description="average random buckets of s updates (Karimireddy et al. 2022)")
class Bucketing(PreAggregator):
    """Bucketing: average the updates in random buckets of size ``s``.

    Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous
    Datasets via Bucketing", ICLR 2022 (Algorithm 1). A random permutation
    splits the ``n`` updates into ``ceil(n / s)`` buckets of ``s`` consecutive
    updates (the last may be smaller); each bucket's mean is one output row.
    A bucket's weight is the sum of its members' weights; its row is their
    plain mean, as in the paper. The rule after it must tolerate the ``f``
    buckets that Byzantine clients can spoil (at most ``min(f, ceil(n/s))``).

    Parameters
    ----------
    s : int
        Bucket size (the paper uses 2).
    generator : torch.Generator, optional
        For the permutation when no ``ctx`` is given; ``ctx.generator`` takes
        precedence.

    Examples
    --------
    >>> import torch
    >>> b = Bucketing(s=2, generator=torch.Generator().manual_seed(0))
    >>> tuple(b(torch.zeros(5, 3)).shape)
    (3, 3)
    """

    KEEPS_BALL = True

    def __init__(self, *, s: int = 2, f: int = 0, generator: torch.Generator | None = None) -> None:
        super().__init__(f=f)
        self.s = check_count("s", s, minimum=1)
        self.generator = generator

    def _transform(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> PreAggregation:
        n = updates.shape[0]
        gen = resolve_generator(self.generator, ctx, "Bucketing")
        perm = torch.randperm(n, generator=gen, device=gen.device).to(updates.device)
        m = math.ceil(n / self.s)
        owner = torch.empty(n, dtype=torch.long, device=updates.device)
        owner[perm] = torch.arange(n, device=updates.device) // self.s
        member = torch.zeros(m, n, dtype=WIDE, device=updates.device)
        member[owner, torch.arange(n, device=updates.device)] = 1.0
        sizes = member.sum(dim=1, keepdim=True)
        bucket_weights = (member @ weights.to(WIDE)).to(weights.dtype)
        return PreAggregation(updates=mix_rows(member / sizes, updates), weights=bucket_weights, owner=owner)

    def __repr__(self) -> str:
        return f"Bucketing(s={self.s})"


@register(
    "arc",
    kind="pre",
    description="adaptive robust clipping of the 2f(n-f)/n largest updates (Allouah et al. 2024); n > 2f",
)
class ARC(PreAggregator):
    """Adaptive Robust Clipping.

    Allouah, Guerraoui, Gupta, Jellouli, Rizk, Stephan, "The Vital Role of
    Gradient Clipping in Byzantine-Resilient Distributed Learning",
    arXiv:2405.14432, 2024 (ICLR 2025 as "Adaptive Gradient Clipping for
    Robust Federated Learning"). With ``k = floor(2 (f / n) (n - f))``, every
    update is clipped to ``C``, the norm of the ``(k + 1)``-th largest update:
    ``x_i * min(1, C / ||x_i||)``, so the ``k`` largest are scaled down to
    ``C``. ``f = 0`` leaves the cohort unchanged. Norms are float64; a row
    whose factor ``C / ||x_i||`` is below the dtype's normal range is clipped
    through its direction (:func:`~fl_core.numerics.clip_rows`), so a
    clipped row has norm ``C`` whatever its magnitude.

    Parameters
    ----------
    f : int
        Byzantine clients to tolerate; needs ``n > 2f``.

    Examples
    --------
    >>> import torch
    >>> ARC(f=1)(torch.tensor([[1.0, 0.0], [0.0, 2.0], [30.0, 40.0]]))
    tensor([[1.0000, 0.0000],
            [0.0000, 2.0000],
            [1.2000, 1.6000]])
    """

    KEEPS_BALL = True

    def check_tolerance(self, n: int) -> None:
        require(n > 2 * self.f, f"ARC needs n > 2f, got n={n}, f={self.f}")

    def _transform(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> PreAggregation:
        n = updates.shape[0]
        k = (2 * self.f * (n - self.f)) // n
        owner = _identity_owner(n, updates.device)
        if k == 0:
            return PreAggregation(updates=updates.clone(), weights=weights, owner=owner)
        norms = row_norms(updates)
        threshold = torch.sort(norms, descending=True).values[k]
        scale = torch.where(norms > threshold, threshold / norms, torch.ones_like(norms))
        # a factor below the dtype's normal range (a huge row) keeps too few bits (and subnormal
        # arithmetic is slow on CPUs): those rows are clipped through their direction instead
        fi = torch.finfo(updates.dtype)
        coarse_mask = scale < fi.tiny / fi.eps
        coarse = coarse_mask.nonzero().squeeze(1)
        clipped = updates * scale.masked_fill(coarse_mask, 1.0).to(updates.dtype)[:, None]
        if coarse.numel() > 0:
            clipped[coarse] = clip_rows(updates, coarse, threshold)
        return PreAggregation(updates=clipped, weights=weights, owner=owner)
