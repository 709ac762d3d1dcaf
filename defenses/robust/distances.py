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
The GEMM result is checked in ``O(n)``: a row whose squared norm is not
finite, exceeds a quarter of the dtype's maximum or lies in the underflow
range (and is not exactly zero) is *unsafe*; ordinary updates have none. The
Gram entries between safe rows are kept; the unsafe rows, each multiplied by a
power of two that brings its largest magnitude into ``[0.5, 1)`` (exact), get
their products again in one ``(u, d) x (d, n)`` GEMM in the updates' dtype
(``u`` unsafe rows, typically the Byzantine ones), and the distances are formed
in float64, which holds every float32 square. The rounding model stays the one
above: each ``D_ij`` is exact to a few ``eps`` of ``||x_i||^2 + ||x_j||^2`` of
the updates' dtype. Float64 input beyond the fast range is scaled by one power
of two instead (see :func:`scaled_sq_distances`). Distances are returned in
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

from fl_core.numerics import (
    WIDE,
    abs_max,
    in_safe_range,
    pow2_scale,
    row_exponents,
    scale_rows,
    unscale,
    wide_columns,
)

__all__ = ["pairwise_cosine_similarity", "pairwise_sq_distances", "scaled_sq_distances"]


def _gram(updates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gram matrix in the updates' dtype and the rows for which it is not accurate.

    A row's Gram entries are accurate when its squared norm is finite, at most
    a quarter of the dtype's maximum (so ``||x_i||^2 + ||x_j||^2 - 2 <x_i, x_j>``
    cannot overflow) and above the underflow range (see
    :func:`~fl_core.numerics.in_safe_range`), or the row is exactly
    zero. Each entry involves only its two rows, so the entries between
    accurate rows are valid whatever the other rows hold.
    """
    gram = updates @ updates.T
    sq = torch.diagonal(gram)
    unsafe = ~in_safe_range(torch.sqrt(sq.abs()), updates.dtype) | (sq > torch.finfo(updates.dtype).max / 4)
    if not bool(unsafe.any()):
        return gram, unsafe.nonzero().squeeze(1)
    zero = unsafe & (sq == 0)
    if bool(zero.any()):
        rows = zero.nonzero().squeeze(1)
        unsafe[rows] = abs_max(updates.index_select(0, rows), dim=1) != 0
    return gram, unsafe.nonzero().squeeze(1)


def _rescaled_gram(updates: torch.Tensor, gram: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gram matrix with ``rows`` scaled by powers of two: ``(G', s)``, ``G'_ij = s_i s_j <x_i, x_j>``, float64.

    Each row in ``rows`` is multiplied by the power of two ``s_i`` that brings
    its largest magnitude into ``[0.5, 1)`` (exact); every other row keeps
    ``s_i = 1``. Only the ``len(rows)`` rescaled rows need new products, one
    ``(len(rows), d) x (d, n)`` GEMM in the updates' dtype: an entry with an
    ordinary row is at most ``sqrt(d)`` times that row's norm, one between two
    rescaled rows at most ``d``, so none overflows or underflows.
    """
    n = updates.shape[0]
    picked = updates.index_select(0, rows)
    exponents = row_exponents(picked)
    s = torch.pow(torch.tensor(2.0, dtype=WIDE, device=updates.device), (-exponents).to(WIDE))
    scaled = scale_rows(picked, exponents)
    across = (scaled @ updates.T).to(WIDE)
    across[:, rows] = (scaled @ scaled.T).to(WIDE)
    out = gram.to(WIDE)
    out[rows, :] = across
    out[:, rows] = across.T
    scale = torch.ones(n, dtype=WIDE, device=updates.device)
    scale[rows] = s
    return out, scale


def _from_gram(gram: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
    dist = sq[:, None] + sq[None, :] - 2.0 * gram
    dist.clamp_(min=0.0)
    dist.fill_diagonal_(0.0)
    # symmetrise exactly: GEMM rounding may differ between (i, j) and (j, i)
    return torch.minimum(dist, dist.T)


def _scaled_float64_sq_distances(updates: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Float64 input beyond the fast range: the Gram matrix of the cohort scaled by one power of two."""
    n = updates.shape[0]
    scale = pow2_scale(abs_max(updates))
    log2 = -2 * int(torch.frexp(scale)[1].item() - 1)
    gram = torch.zeros(n, n, dtype=WIDE, device=updates.device)
    for _, block in wide_columns(updates):
        block = block * scale
        gram += block @ block.T
    return _from_gram(gram, torch.diagonal(gram).clone()), log2


def scaled_sq_distances(updates: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Squared distances up to a power of two: ``(D, k)`` with the true matrix ``D * 2**k``, in float64.

    For float32 (and narrower) input ``k`` is always 0: the rows whose Gram
    entries are not accurate in the updates' dtype (:func:`_gram`) are rescaled
    by powers of two (:func:`_rescaled_gram`) and ``D`` is formed in float64,
    which holds every float32 square. For float64 input beyond the fast range
    the squares may not fit float64; the cohort is then scaled by one power of
    two (``k != 0``), which preserves every ratio and so the order of the
    distances and of any sum of them (Krum scores), except that distances more
    than ``~1e300`` times smaller than the largest round to 0. Rules that only
    compare distances use ``D`` directly.

    Examples
    --------
    >>> import torch
    >>> D, k = scaled_sq_distances(torch.tensor([[0.0], [1e200]], dtype=torch.float64))
    >>> k > 0, D[0, 1].item() < 1.0
    (True, True)
    """
    gram, rows = _gram(updates)
    if rows.numel() == 0:
        return _from_gram(gram, torch.diagonal(gram)).to(WIDE), 0
    if torch.finfo(updates.dtype).max >= torch.finfo(WIDE).max:
        return _scaled_float64_sq_distances(updates)
    rescaled, scale = _rescaled_gram(updates, gram, rows)
    inverse = 1.0 / scale
    true_gram = rescaled * inverse[:, None] * inverse[None, :]
    return _from_gram(true_gram, torch.diagonal(true_gram).clone()), 0


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
    the rows whose squares are too large or too small for the updates' dtype
    are rescaled by powers of two (:func:`_rescaled_gram`), in any dtype.

    Examples
    --------
    >>> import torch
    >>> pairwise_cosine_similarity(torch.tensor([[1.0, 0.0], [-2.0, 0.0]])).tolist()
    [[1.0, -1.0], [-1.0, 1.0]]
    >>> pairwise_cosine_similarity(torch.tensor([[3e38, 3e38], [1e-30, 1e-30]])).tolist()
    [[1.0, 1.0], [1.0, 1.0]]
    """
    gram, rows = _gram(updates)
    gram = gram.to(WIDE) if rows.numel() == 0 else _rescaled_gram(updates, gram, rows)[0]
    return cosine_from_gram(gram)


def cosine_from_gram(gram: torch.Tensor) -> torch.Tensor:
    """Cosines from an ``(n, n)`` Gram matrix; a zero row has cosine 0 with every row.

    Examples
    --------
    >>> import torch
    >>> cosine_from_gram(torch.tensor([[4.0, 2.0], [2.0, 4.0]], dtype=torch.float64)).tolist()
    [[1.0, 0.5], [0.5, 1.0]]
    """
    norms = torch.sqrt(torch.diagonal(gram).clamp(min=0.0))
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    cos = gram / (safe[:, None] * safe[None, :])
    return cos.clamp_(min=-1.0, max=1.0)
