"""SignGuard (Xu, Huang, Hu, Lan, ICDCS 2022): norm filtering, sign-statistics clustering, median-norm clipping.

Examples
--------
>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> honest = torch.rand(6, 40, generator=g) + 0.1          # every coordinate positive
>>> flipped = -honest[:2]                                   # the same norms, the signs reversed
>>> res = SignGuard(f=2, generator=g).aggregate(torch.cat([honest, flipped]))
>>> res.kept.tolist()
[True, True, True, True, True, True, False, False]
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch
from sklearn.cluster import MeanShift, estimate_bandwidth

from defenses.robust.base import RobustAggregator, check_positive, require, resolve_generator
from defenses.robust.registry import register
from fl_core.aggregation import AggregationResult, RoundContext
from fl_core.errors import ConfigError
from fl_core.numerics import WIDE, combine, row_norms

__all__ = ["SignGuard", "sign_clusters", "sign_features"]

logger = logging.getLogger(__name__)


def sign_features(updates: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """``(n, 3)`` float64 sign statistics on the coordinates ``coords``: the fractions of positive, zero
    and negative entries of each row, each column divided by its largest value over the rows (as in the
    authors' code; a column that is 0 everywhere stays 0).

    Examples
    --------
    >>> import torch
    >>> sign_features(torch.tensor([[1.0, -1.0, 0.0, 2.0], [1.0, 1.0, 1.0, 1.0]]), torch.arange(4)).tolist()
    [[0.5, 1.0, 1.0], [1.0, 0.0, 0.0]]
    """
    s = torch.sign(updates.index_select(1, coords))
    k = coords.numel()
    feats = torch.stack([(s > 0).sum(dim=1), (s == 0).sum(dim=1), (s < 0).sum(dim=1)], dim=1).to(WIDE) / k
    top = feats.max(dim=0).values
    return feats / torch.where(top > 0, top, torch.ones_like(top))


def sign_clusters(features: torch.Tensor) -> torch.Tensor:
    """``(n,)`` mask of the largest mean-shift cluster of the sign features (lowest label on a tie).

    Mean shift (scikit-learn, ``bin_seeding=True``) with the bandwidth of
    ``estimate_bandwidth`` (quantile 0.3), as in the authors' code; for small
    cohorts the quantile is raised to ``2.5 / n`` so that the bandwidth averages
    distances to at least one other row (with ``n * 0.3 < 2`` it would be each
    row's distance to itself, 0). When the bandwidth is still 0 (every row has
    exact duplicates) the clusters are the groups of identical feature rows. Runs on the ``(n, 3)``
    features on the CPU (``n`` numbers per feature, not ``d``).

    Examples
    --------
    >>> import torch
    >>> f = torch.tensor([[1.0, 0.0, 0.1], [0.98, 0.0, 0.12], [0.99, 0.0, 0.1], [0.1, 0.0, 1.0]], dtype=torch.float64)
    >>> sign_clusters(f).tolist()
    [True, True, True, False]
    """
    raw = features.detach().cpu().numpy()
    # cluster the rows in a canonical (lexicographic) order: the result depends only on the set of rows
    order = np.lexsort(raw.T[::-1])
    x = raw[order]
    n = x.shape[0]
    bandwidth = float(estimate_bandwidth(x, quantile=min(1.0, max(0.3, 2.5 / n)))) if n > 1 else 0.0
    if bandwidth > 0:
        with warnings.catch_warnings():  # too few points per bin: scikit-learn seeds from every point instead
            warnings.filterwarnings("ignore", message="Binning data failed", category=UserWarning)
            labels = MeanShift(bandwidth=bandwidth, bin_seeding=True).fit(x).labels_
    else:
        labels = np.unique(x, axis=0, return_inverse=True)[1].reshape(-1)
    counts = np.bincount(labels)
    chosen = np.empty(n, dtype=bool)
    chosen[order] = labels == int(np.argmax(counts))
    return torch.as_tensor(chosen, device=features.device)


@register(
    "signguard",
    kind="rule",
    description="norm-ratio filter, mean-shift clustering of sign statistics, mean clipped to the "
    "median norm (Xu et al. 2022); n > 2f",
)
class SignGuard(RobustAggregator):
    """SignGuard: keep updates of plausible norm and majority sign pattern, clip them to the median norm.

    Xu, Huang, Hu, Lan, "SignGuard: Byzantine-robust Federated Learning through
    Collaborative Malicious Gradient Filtering", ICDCS 2022 (Algorithm 1):

    1. norm filtering: with ``M`` the median of the norms ``||g_i||``, keep
       ``S1 = {i : L < ||g_i|| / M < R}`` (the paper's ``L = 0.1``, ``R = 3.0``);
    2. sign clustering: draw a random subset of ``ceil(fraction * d)``
       coordinates (the paper uses 10%); each update's feature is the fraction
       of its positive, zero and negative entries there (:func:`sign_features`);
       mean shift clusters the features and ``S2`` is the largest cluster
       (:func:`sign_clusters`);
    3. aggregate: the mean over ``S = S1 ∩ S2`` of ``g_i min(1, M / ||g_i||)``.

    ``M`` is the lower middle norm for even ``n`` (``torch.median``, as in the
    authors' code), so with ``f < n / 2`` it is at most the largest honest norm.
    Norms are float64 (:func:`~fl_core.numerics.row_norms`) and the mean is
    formed without overflow: a row of ``3e38`` fails the norm filter and its
    coefficient is an exact 0. If ``S`` is empty the aggregate is the zero
    update (warning logged). Unweighted, as in the paper.

    Parameters
    ----------
    f : int
        Byzantine clients assumed; needs ``n > 2f`` (the median norm and the
        largest cluster stand for the honest majority).
    L, R : float
        Bounds on ``||g_i|| / M`` (``0 <= L < R``).
    fraction : float
        Share of coordinates sampled for the sign statistics, in ``(0, 1]``.
    generator : torch.Generator, optional
        For the coordinate sample when no ``ctx`` is given; ``ctx.generator``
        takes precedence.

    Notes
    -----
    ``kept`` is ``S``; ``scores`` are the ratios ``||g_i|| / M``;
    ``metrics["norm_kept"]`` and ``metrics["sign_kept"]`` count ``S1`` and ``S2``.
    Sampling uses ``torch.randperm(d)`` (``8 d`` bytes on the generator's device).

    Examples
    --------
    >>> import numpy as np
    >>> rule = SignGuard(f=1, fraction=1.0, generator=torch.Generator().manual_seed(0))
    >>> rule(np.array([[1.0, 1.0], [1.0, 2.0], [2.0, 1.0], [300.0, 300.0]])).round(4).tolist()
    [1.3333, 1.3333]
    """

    OUTPUT_REGION = "ball"

    def __init__(
        self,
        *,
        f: int = 0,
        L: float = 0.1,
        R: float = 3.0,
        fraction: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(f=f)
        if L != 0:
            check_positive("L", L)
        self.L = float(L)
        self.R = check_positive("R", R)
        if not self.L < self.R:
            raise ConfigError(f"SignGuard needs L < R, got L={L!r}, R={R!r}")
        self.fraction = check_positive("fraction", fraction)
        if self.fraction > 1:
            raise ConfigError(f"fraction must be in (0, 1], got fraction={fraction!r}")
        self.generator = generator


    def check_tolerance(self, n: int) -> None:
        require(n > 2 * self.f, f"SignGuard needs n > 2f, got n={n}, f={self.f}")

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        d = updates.shape[1]
        gen = resolve_generator(self.generator, ctx, "SignGuard")
        norms = row_norms(updates)
        med = torch.median(norms)
        ratio = norms / med if bool(med > 0) else torch.full_like(norms, float("inf"))
        by_norm = (ratio > self.L) & (ratio < self.R)
        k = max(1, min(d, int(np.ceil(self.fraction * d))))
        coords = torch.randperm(d, generator=gen, device=gen.device)[:k].to(updates.device)
        by_sign = sign_clusters(sign_features(updates, coords))
        kept = by_norm & by_sign
        metrics = {"norm_kept": float(by_norm.sum()), "sign_kept": float(by_sign.sum())}
        size = int(kept.sum())
        if size == 0:
            logger.warning("SignGuard: no update passed both filters; returning the zero update")
            return AggregationResult(aggregate=torch.zeros_like(updates[0]), kept=kept, scores=ratio, metrics=metrics)
        scale = torch.where(kept, torch.clamp(med / torch.where(kept, norms, med), max=1.0), torch.zeros_like(norms))
        agg = combine(scale / size, updates)
        return AggregationResult(aggregate=agg, kept=kept, scores=ratio, metrics=metrics)

    def __repr__(self) -> str:
        return f"SignGuard(f={self.f}, L={self.L}, R={self.R}, fraction={self.fraction})"
