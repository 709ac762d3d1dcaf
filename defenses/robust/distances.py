"""The one pairwise-distance helper every distance-based rule uses, safe for any finite input.

All rules that need the distances between clients (Krum, Multi-Krum, Bulyan,
NNM) compute the ``(n, n)`` matrix once, as one matrix product::

    D_ij = ||x_i||^2 + ||x_j||^2 - 2 <x_i, x_j>

clamped at 0 (rounding can make it slightly negative) with a zero diagonal.
It costs one ``(n, d) x (d, n)`` GEMM, on whatever device the updates live.

Rounding: the absolute error of ``D_ij`` is about ``eps * (||x_i||^2 + ||x_j||^2)``,
so it depends only on the norms of the two vectors involved: huge Byzantine
vectors do not blur the distances between honest ones. Updates sharing a
large common offset relative to their spread lose precision in float32; pass
float64 updates where that matters.

Extreme magnitudes: a float32 row of ``1e20`` has a squared norm (``1e40 d``)
that float32 cannot hold; computed naively it is ``inf``, ``inf - inf`` is NaN
and Krum's ties on ``inf`` fall to row 0, so the far row would be *selected*.
The GEMM therefore runs in the updates' dtype only while its result is
provably accurate (every squared norm finite and above the underflow range,
every distance finite; checked in ``O(n^2)``), which is always the case for
ordinary updates. Otherwise the matrix is recomputed in float64, where every
float32 square and sum fits, and the distances among rows whose squared norm
exceeds the input dtype's range are recomputed from differences (no
cancellation between two huge, nearby rows). Float64 input is scaled by a power
of two first (exact); see :func:`scaled_sq_distances`. Distances are returned in
float64 in every case, so Krum scores never overflow.

Examples
--------
>>> import torch
>>> pairwise_sq_distances(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
tensor([[ 0., 25.],
        [25.,  0.]], dtype=torch.float64)
>>> pairwise_sq_distances(torch.tensor([[0.0], [1.0], [2.0**70]]))[2].tolist() == [2.0**140, (2.0**70 - 1) ** 2, 0.0]
True
"""

from __future__ import annotations

import torch

from defenses.robust.numerics import WIDE, in_safe_range, pow2_scale, unscale, wide_columns

__all__ = ["pairwise_cosine_similarity", "pairwise_sq_distances", "scaled_sq_distances"]


def _fast_gram(updates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Gram matrix and squared norms in the updates' dtype, and whether they are accurate.

    Accurate means: every squared norm is finite and either above the
    underflow range or belongs to a row that is exactly zero.
    """
    gram = updates @ updates.T
    sq = torch.diagonal(gram)
    low = ~in_safe_range(torch.sqrt(sq.abs()), updates.dtype)
    if not bool(low.any()):
        return gram, sq, True
    rows = low.nonzero().squeeze(1)
    finite = bool(torch.isfinite(sq).all())
    truly_zero = bool((updates.index_select(0, rows).abs().amax(dim=1) == 0).all())
    return gram, sq, finite and truly_zero


def _from_gram(gram: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
    dist = sq[:, None] + sq[None, :] - 2.0 * gram
    dist.clamp_(min=0.0)
    dist.fill_diagonal_(0.0)
    # symmetrise exactly: GEMM rounding may differ between (i, j) and (j, i)
    return torch.minimum(dist, dist.T)


def _wide_sq_distances(updates: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The float64 path: Gram over column blocks, differences among the huge rows."""
    n = updates.shape[0]
    log2 = 0
    scale = torch.ones((), dtype=WIDE, device=updates.device)
    if torch.finfo(updates.dtype).max >= torch.finfo(WIDE).max:
        scale = pow2_scale(updates.abs().amax())
        log2 = -2 * int(torch.frexp(scale)[1].item() - 1)
    gram = torch.zeros(n, n, dtype=WIDE, device=updates.device)
    for _, block in wide_columns(updates):
        block = block * scale
        gram += block @ block.T
    sq = torch.diagonal(gram).clone()
    dist = _from_gram(gram, sq)
    # rows whose squared norm the input dtype cannot hold: exact differences among them
    huge = (unscale(sq, log2) > torch.finfo(updates.dtype).max).nonzero().squeeze(1)
    if huge.numel() > 1:
        exact = torch.zeros(huge.numel(), huge.numel(), dtype=WIDE, device=updates.device)
        for _, block in wide_columns(updates, huge):
            block = block * scale
            exact += torch.cdist(block, block, compute_mode="donot_use_mm_for_euclid_dist") ** 2
        exact.fill_diagonal_(0.0)
        dist[huge[:, None], huge[None, :]] = torch.minimum(exact, exact.T)
    return dist, log2


def scaled_sq_distances(updates: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Squared distances up to a power of two: ``(D, k)`` with the true matrix ``D * 2**k``, in float64.

    For float32 (and narrower) input ``k`` is always 0. For float64 input of
    magnitude beyond ``~1e150`` the squares do not fit float64; the cohort is
    then scaled by a power of two (``k != 0``), which preserves every ratio and
    so the order of the distances and of any sum of them (Krum scores), except
    that distances more than ``~1e300`` times smaller than the largest round to 0.
    Rules that only compare distances use ``D`` directly.

    Examples
    --------
    >>> import torch
    >>> D, k = scaled_sq_distances(torch.tensor([[0.0], [1e200]], dtype=torch.float64))
    >>> k > 0, D[0, 1].item() < 1.0
    (True, True)
    """
    gram, sq, accurate = _fast_gram(updates)
    if accurate:
        dist = _from_gram(gram, sq)
        if bool(torch.isfinite(dist).all()):
            return dist.to(WIDE), 0
    return _wide_sq_distances(updates)


def pairwise_sq_distances(updates: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between the rows of ``updates`` ``(n, d)``, in float64.

    Parameters
    ----------
    updates : torch.Tensor
        ``(n, d)`` finite floating-point tensor (not validated here; callers validate).

    Returns
    -------
    torch.Tensor
        ``(n, n)`` float64, symmetric, non-negative, zero-diagonal tensor on
        ``updates.device``; finite for every finite float32 input (float64 input
        beyond ``~1e154`` may give ``inf``, see :func:`scaled_sq_distances`).

    Examples
    --------
    >>> import torch
    >>> pairwise_sq_distances(torch.eye(2)).tolist()
    [[0.0, 2.0], [2.0, 0.0]]
    """
    dist, log2 = scaled_sq_distances(updates)
    return unscale(dist, log2)


def pairwise_cosine_similarity(updates: torch.Tensor) -> torch.Tensor:
    """Cosine similarities between the rows of ``updates`` ``(n, d)``, in float64.

    A zero row has similarity 0 with every row (its direction is undefined).
    Cosines do not change when a row is multiplied by a positive number, so
    when the fast Gram matrix is not accurate (a row too large or too small for
    its squares) every row is rescaled by a power of two to a maximum
    magnitude in ``[0.5, 1)`` and the Gram matrix is recomputed in float64.

    Examples
    --------
    >>> import torch
    >>> pairwise_cosine_similarity(torch.tensor([[1.0, 0.0], [-2.0, 0.0]])).tolist()
    [[1.0, -1.0], [-1.0, 1.0]]
    >>> pairwise_cosine_similarity(torch.tensor([[3e38, 3e38], [1e-30, 1e-30]])).tolist()
    [[1.0, 1.0], [1.0, 1.0]]
    """
    gram, sq, accurate = _fast_gram(updates)
    if accurate:
        gram = gram.to(WIDE)
        sq = sq.to(WIDE)
    else:
        scale = pow2_scale(updates.abs().amax(dim=1))
        gram = torch.zeros(updates.shape[0], updates.shape[0], dtype=WIDE, device=updates.device)
        for _, block in wide_columns(updates):
            block = block * scale[:, None]
            gram += block @ block.T
        sq = torch.diagonal(gram).clone()
    norms = torch.sqrt(sq.clamp(min=0.0))
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    cos = gram / (safe[:, None] * safe[None, :])
    return cos.clamp_(min=-1.0, max=1.0)
