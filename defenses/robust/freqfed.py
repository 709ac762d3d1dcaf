"""FreqFed (Fereidooni, Pegoraro, Rieger, Dmitrienko, Sadeghi, NDSS 2024): cluster the updates' low frequencies.

Examples
--------
>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> honest = 1.0 + 0.1 * torch.randn(6, 32, generator=g)        # a smooth common update: low frequencies
>>> bad = torch.cos(3.0 * torch.arange(32.0)).repeat(3, 1)        # a fast oscillation: high frequencies only
>>> kept = FreqFed(f=3).aggregate(torch.cat([honest, bad])).kept
>>> kept[6:].tolist(), int(kept[:6].sum())  # HDBSCAN may also leave an honest update out as noise
([False, False, False], 5)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import scipy.fft
import torch

from defenses.robust.base import RobustAggregator, check_count, require
from defenses.robust.distances import pairwise_cosine_similarity
from defenses.robust.flame import flame_admit
from defenses.robust.registry import register
from fl_core.aggregation import AggregationResult, RoundContext
from fl_core.errors import ConfigError, InvalidUpdateError
from fl_core.numerics import WIDE, combine, row_exponents, scale_rows

__all__ = ["FreqFed", "low_frequency", "low_frequency_mask"]

logger = logging.getLogger(__name__)


def low_frequency_mask(p: int, q: int) -> np.ndarray:
    """The ``(p, q)`` bool mask of FreqFed's low-frequency block: the entries ``(i, j)`` with ``i + j <= floor(p / 2)``.

    The top-left triangle of the DCT matrix, where the energy of a smooth
    signal concentrates (FreqFed, Algorithm 1, ``Filtering``).

    Examples
    --------
    >>> low_frequency_mask(4, 3).astype(int).tolist()
    [[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]]
    >>> int(low_frequency_mask(7, 1).sum())  # one column: the first floor(7 / 2) + 1 coefficients
    4
    """
    i, j = np.ogrid[:p, :q]
    return (i + j) <= p // 2


def low_frequency(updates: torch.Tensor, shape: Sequence[int] | None = None) -> torch.Tensor:
    """The low-frequency DCT components of each row of ``updates`` ``(n, d)``, as an ``(n, k)`` float64 CPU tensor.

    Each row is read as a ``P x Q`` matrix (row-major; ``shape=None`` is one
    column, ``P = d``, ``Q = 1``), transformed with the orthonormal type-II DCT
    along both axes (:func:`scipy.fft.dctn`; along one axis for a column) and
    its entries with ``i + j <= floor(P / 2)`` (:func:`low_frequency_mask`) are
    kept, in row-major order.

    Each row ``x_i`` is first divided by ``2^e_i``, the power of two with
    ``max|x_i| / 2^e_i`` in ``[0.5, 1)`` (exact): the DCT is linear, so the
    components returned are row ``i``'s divided by ``2^e_i``, a positive factor
    no cosine sees, and rows of ``3e38`` (or float64 rows of ``1e308``) cannot
    overflow.

    Raises
    ------
    InvalidUpdateError
        If ``shape`` does not hold ``d`` entries.

    Examples
    --------
    >>> import torch
    >>> low_frequency(torch.full((1, 4), 0.5)).round(decimals=12).tolist()  # a constant: DC term 0.5 * sqrt(4)
    [[1.0, 0.0, 0.0]]
    """
    n, d = updates.shape
    scaled = scale_rows(updates, row_exponents(updates)).detach().to(device="cpu", dtype=WIDE).numpy()
    if shape is None:
        return torch.from_numpy(scipy.fft.dct(scaled, type=2, axis=1, norm="ortho")[:, : d // 2 + 1].copy())
    p, q = (int(s) for s in shape)
    if p * q != d:
        raise InvalidUpdateError(f"FreqFed shape=({p}, {q}) holds {p * q} entries, but the updates have d={d}")
    coeffs = scipy.fft.dctn(scaled.reshape(n, p, q), type=2, axes=(1, 2), norm="ortho")
    return torch.from_numpy(coeffs[:, low_frequency_mask(p, q)].copy())


@register(
    "freqfed",
    kind="rule",
    description="HDBSCAN on cosine distances of the updates' low-frequency DCT components, "
    "mean of the largest cluster (Fereidooni et al. 2024); n > 2f",
)
class FreqFed(RobustAggregator):
    """FreqFed: keep the clients whose low-frequency DCT components form the majority cluster, and average them.

    Fereidooni, Pegoraro, Rieger, Dmitrienko, Sadeghi, "FreqFed: A Frequency
    Analysis-Based Approach for Mitigating Poisoning Attacks in Federated
    Learning", NDSS 2024 (Algorithm 1). For every update ``x_i``:

    1. ``V_i = DCT(x_i)``, the orthonormal type-II discrete cosine transform;
    2. ``F_i``: the low-frequency block of ``V_i``, the components ``(i, j)``
       with ``i + j <= floor(P / 2)`` of the ``P x Q`` DCT matrix
       (:func:`low_frequency`);
    3. HDBSCAN on the pairwise cosine distances ``1 - cos(F_i, F_j)`` with
       ``min_cluster_size = n / 2 + 1``, so at most one cluster, a majority,
       forms; the other clients are rejected (the same clustering as FLAME's,
       :func:`~defenses.robust.flame.flame_admit`: ``min_samples = 1``,
       single cluster allowed);
    4. the aggregate is the mean of the accepted updates (the paper averages
       the accepted models with FedAvg; like FLAME here it is unweighted, since
       a Byzantine client could inflate a reported example count).

    The DCT is applied to the updates ``x_i = W_i - G`` (the paper calls the
    clients' "model updates (i.e., weights)"; as in FLAME here, on the
    differences the cosines are not dominated by the global model ``G``
    shared by every ``W_i``; the DCT is linear, so ``DCT(W_i) = DCT(G) + DCT(x_i)``).
    The flat ``(d,)`` update is one column by default (``P = d``, ``Q = 1``: the
    first ``floor(d / 2) + 1`` DCT coefficients); ``shape=(P, Q)`` reads it as a
    ``P x Q`` matrix (row-major) and applies the 2-D DCT, as the paper does on
    a weight matrix.

    The DCT runs in float64 on the CPU (:mod:`scipy.fft`); the mask goes back to
    the updates' device, where the mean is formed without overflow
    (:func:`~fl_core.numerics.combine`). With fewer than ``n / 2`` Byzantine rows
    the accepted majority holds an honest client; the output is a mean of rows,
    inside their convex hull, or the zero update when no cluster forms
    (a warning is logged), so its norm is at most the largest norm of a row.

    Parameters
    ----------
    f : int
        Byzantine clients assumed; FreqFed needs an honest majority, ``n > 2f``,
        and ``n >= 3`` to cluster.
    shape : tuple of int, optional
        ``(P, Q)`` with ``P * Q = d``: read each update as this matrix.

    Raises
    ------
    ConfigError
        ``shape`` that is not two positive integers.
    InvalidUpdateError
        At call time, if ``P * Q != d``.

    Notes
    -----
    ``kept`` marks the accepted cluster; ``scores`` are the mean cosine
    similarities of each client's low frequencies to the accepted clients'
    (NaN when none is accepted); ``metrics`` holds ``accepted`` and
    ``components`` (the number of low-frequency components per update).

    Examples
    --------
    >>> import numpy as np
    >>> FreqFed()(np.array([[1.0, 0.1, 0.0, 0.0], [1.0, 0.0, 0.1, 0.0], [1.0, 0.0, 0.0, 0.1], [0.0, 1.0, -1.0, 1.0]]))
    array([1.        , 0.03333333, 0.03333333, 0.03333333])
    """

    OUTPUT_REGION = "ball"

    def __init__(self, *, f: int = 0, shape: Sequence[int] | None = None) -> None:
        super().__init__(f=f)
        if shape is not None:
            if isinstance(shape, str | bytes) or not isinstance(shape, Sequence) or len(shape) != 2:
                raise ConfigError(f"shape must be a pair (P, Q) of positive ints, got shape={shape!r}")
            shape = (check_count("shape[0]", shape[0], minimum=1), check_count("shape[1]", shape[1], minimum=1))
        self.shape: tuple[int, int] | None = shape

    def check_tolerance(self, n: int) -> None:
        require(n >= 3, f"FreqFed needs n >= 3 clients to cluster, got n={n}, f={self.f}")
        require(n > 2 * self.f, f"FreqFed needs n > 2f, got n={n}, f={self.f}")

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        low = low_frequency(updates, self.shape)
        cos = pairwise_cosine_similarity(low)
        accepted = flame_admit(cos)
        count = int(accepted.sum())
        if count == 0:
            logger.warning("FreqFed: HDBSCAN formed no cluster; returning the zero update")
            scores = torch.full((updates.shape[0],), float("nan"), dtype=WIDE)
        else:
            scores = cos[:, accepted].mean(dim=1)
        coef = accepted.to(WIDE) / max(count, 1)
        device = updates.device
        agg = combine(coef.to(device), updates)
        metrics = {"accepted": float(count), "components": float(low.shape[1])}
        return AggregationResult(aggregate=agg, kept=accepted.to(device), scores=scores.to(device), metrics=metrics)

    def __repr__(self) -> str:
        extra = "" if self.shape is None else f", shape={self.shape}"
        return f"FreqFed(f={self.f}{extra})"
