"""Overflow-safe kernels: norms, dot products and weighted sums of cohorts of updates.

Shared by fl_core (the weighted mean, input checks), the robust rules and DP clipping.

Finite but extreme updates are valid input (a Byzantine row of ``3e38`` in
float32): a rule must keep its guarantee for them, so no intermediate value may
overflow to ``inf`` (``inf - inf`` is NaN, ties on ``inf`` fall to the first
row) or underflow to 0. Every kernel here has

* a **fast path** in the updates' own dtype, the only one taken for ordinary
  updates; its result is *checked*, not trusted: an overflow anywhere in a sum
  of products ends as ``inf`` or NaN in the result (``inf`` never turns finite
  again under ``+``, ``-`` and ``*``), and a result below the dtype's safe
  lower bound may have lost digits to underflow;
* a **safe path** for only the rows or results that failed the check: each
  such row is multiplied by the power of two that brings its largest magnitude
  into ``[0.5, 1)`` (:func:`scale_rows`; exact, only the exponent changes),
  computed on in its own dtype, and scaled back in float64; sums that still
  overflow are redone in float64 (a float32 value squared, times any ``d`` a
  tensor can have, fits float64: ``(3.4e38)^2 = 1.2e77`` against ``1.8e308``).
  Rescaling a few rows in their dtype costs a fraction of one pass over the
  cohort; converting the cohort to float64 would cost several.

Norms and distances are returned in float64 whatever the input dtype: the
norm of a float32 vector of ``d`` entries of ``3e38`` is not a float32 number.

Examples
--------
>>> import torch
>>> x = torch.tensor([[3e38, 3e38], [3.0, 4.0]])
>>> torch.linalg.vector_norm(x, dim=1).tolist()  # the naive norm overflows
[inf, 5.0]
>>> row_norms(x)[1].item(), bool(torch.isfinite(row_norms(x)[0]))
(5.0, True)
>>> big = torch.full((2, 1), 2.0**127)
>>> (torch.tensor([0.5, 0.5]) @ big).item() == combine(torch.tensor([0.5, 0.5]), big).item() == 2.0**127
True
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = [
    "WIDE",
    "abs_max",
    "all_finite",
    "clip_rows",
    "combine",
    "in_safe_range",
    "mix_rows",
    "pow2_scale",
    "row_dots",
    "row_exponents",
    "row_norms",
    "rows_finite",
    "safe_mean",
    "scale_rows",
    "unscale",
    "wide_columns",
]

#: The dtype of the wide path and of every norm, distance and score.
WIDE = torch.float64

#: Elements per column block of the wide path (bounds its extra memory to 128 MiB).
_BLOCK_ELEMENTS = 1 << 24


def _low(dtype: torch.dtype) -> float:
    """Smallest norm the fast path computes to full precision: ``sqrt(tiny) / eps``.

    Squares below ``tiny`` lose digits; entries that small contribute at most
    ``d * tiny`` to a squared norm of at least ``tiny / eps^2``, a relative error
    of ``d * eps^2 <= eps`` for ``d <= 1 / eps`` (8.4e6 in float32).
    """
    fi = torch.finfo(dtype)
    return fi.tiny**0.5 / fi.eps


def _needs_scaling(dtype: torch.dtype) -> bool:
    """Whether squares of ``dtype``'s finite values can overflow float64 (float64 itself)."""
    return torch.finfo(dtype).max >= torch.finfo(WIDE).max


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of ``t`` is finite, in one or two reductions.

    A finite sum proves it. When the sum is not finite (which finite entries
    can also cause: the sum overflows), the minimum and maximum decide (NaN
    propagates through both); ``torch.aminmax`` is one vectorised reduction,
    while ``torch.isfinite(t).all()`` costs about 25 times more on CPU.

    Examples
    --------
    >>> import torch
    >>> all_finite(torch.tensor([3e38, 3e38])), all_finite(torch.tensor([1.0, float("inf")]))
    (True, False)
    >>> all_finite(torch.tensor([1.0, float("nan")]))
    False
    """
    if bool(torch.isfinite(t.sum())):
        return True
    low, high = torch.aminmax(t)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def rows_finite(x: torch.Tensor) -> torch.Tensor:
    """``(n,)`` mask of the rows of ``x`` ``(n, d)`` whose entries are all finite (row sums, then ``aminmax``).

    Examples
    --------
    >>> import torch
    >>> rows_finite(torch.tensor([[3e38, 3e38], [1.0, float("nan")], [1.0, 2.0]])).tolist()
    [True, False, True]
    """
    ok = torch.isfinite(x.sum(dim=1))
    if not bool(ok.all()):
        rows = (~ok).nonzero().squeeze(1)
        low, high = torch.aminmax(x.index_select(0, rows), dim=1)
        ok[rows] = torch.isfinite(low) & torch.isfinite(high)
    return ok


def abs_max(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Largest magnitude of ``x`` (over ``dim``), from one ``aminmax`` reduction (no ``abs`` temporary).

    Examples
    --------
    >>> import torch
    >>> abs_max(torch.tensor([[1.0, -3.0], [2.0, 0.5]]), dim=1).tolist()
    [3.0, 2.0]
    """
    low, high = torch.aminmax(x) if dim is None else torch.aminmax(x, dim=dim)
    return torch.maximum(-low, high)


def pow2_scale(amax: torch.Tensor) -> torch.Tensor:
    """Powers of two ``s`` with ``amax * s`` in ``[0.5, 1)`` (``s = 1`` where ``amax == 0``), in float64.

    Multiplying by ``s`` is exact (only the exponent changes) unless a value
    falls below float64's normal range. The exponent is clamped so ``s`` itself
    stays finite and normal.

    Examples
    --------
    >>> import torch
    >>> pow2_scale(torch.tensor([3.0, 0.0, 1e300], dtype=torch.float64)).tolist()[:2]
    [0.25, 1.0]
    """
    _, exponent = torch.frexp(amax.to(WIDE))
    exponent = torch.where(amax == 0, torch.zeros_like(exponent), exponent).clamp(-1000, 1000)
    return torch.pow(torch.tensor(2.0, dtype=WIDE, device=amax.device), -exponent.to(WIDE))


def row_exponents(x: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """Binary exponents ``e_i`` (int64) with ``max|x_i|`` (plus ``max|center|``) in ``[2^(e_i - 1), 2^e_i)``.

    Examples
    --------
    >>> import torch
    >>> row_exponents(torch.tensor([[3.0, -1.0], [0.0, 0.0], [2.0**100, 1.0]])).tolist()
    [2, 0, 101]
    """
    amax = abs_max(x, dim=1).to(WIDE)
    if center is not None:
        amax = amax + abs_max(center).to(WIDE)
    exponent = torch.frexp(amax)[1].to(torch.int64)
    return torch.where(amax == 0, torch.zeros_like(exponent), exponent)


def scale_rows(x: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """``x_i * 2^-e_i`` in ``x.dtype``, exactly, without a float64 copy or a subnormal factor.

    The factor is applied as two powers of two of half the exponent each,
    both normal numbers of the dtype, so the products are exact (except for
    entries that fall below the dtype's range relative to the row's largest)
    and stay on the fast, vectorised arithmetic path.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[3e38, -3e38], [2.0**-140, 0.0]])
    >>> scale_rows(x, row_exponents(x)).abs().max(dim=1).values.tolist()
    [0.8816207647323608, 0.5]
    """
    half = torch.div(exponents, 2, rounding_mode="floor")
    two = torch.tensor(2.0, dtype=x.dtype, device=x.device)
    first = torch.pow(two, (-half).to(x.dtype))[:, None]
    second = torch.pow(two, (half - exponents).to(x.dtype))[:, None]
    return x * first * second


def unscale(values: torch.Tensor, log2: int) -> torch.Tensor:
    """``values * 2**log2`` (``inf`` where the product exceeds float64; ``values`` itself if ``log2 == 0``).

    Examples
    --------
    >>> import torch
    >>> unscale(torch.tensor([1.0], dtype=torch.float64), 2000).tolist()
    [inf]
    """
    if log2 == 0:
        return values
    return values * torch.pow(torch.tensor(2.0, dtype=WIDE), log2)


def in_safe_range(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Mask of fast-path results (norms) that are finite and not at risk of underflow.

    ``values`` are non-negative; 0 counts as unsafe (it may be an underflow),
    callers check whether those rows are truly zero.
    """
    return torch.isfinite(values) & (values >= _low(dtype))


def wide_columns(x: torch.Tensor, rows: torch.Tensor | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
    """Column blocks of ``x`` (or of its ``rows``) converted to float64, with their slices.

    Bounds the wide path's extra memory to ``_BLOCK_ELEMENTS`` float64 values
    whatever ``d`` is; a loop over column blocks, never over clients.
    """
    picked = x if rows is None else x.index_select(0, rows)
    n, d = picked.shape
    step = max(1, _BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, d, step):
        cols = slice(start, min(d, start + step))
        yield cols, picked[:, cols].to(WIDE)


def _wide_norms(x: torch.Tensor, rows: torch.Tensor, center: torch.Tensor | None) -> torch.Tensor:
    """Norms ``||x_i - center||`` of ``rows`` for any finite values, in float64.

    Each row (and ``center`` with it) is scaled by the power of two that brings
    its largest magnitude below 1 (:func:`scale_rows`), the norm is taken in
    the dtype and scaled back in float64.
    """
    picked = x.index_select(0, rows)
    exponents = row_exponents(picked, center)
    scaled = scale_rows(picked, exponents)
    if center is not None:
        scaled = scaled - scale_rows(center.expand_as(picked), exponents)
    norms = torch.linalg.vector_norm(scaled, dim=1).to(WIDE)
    return norms * torch.pow(torch.tensor(2.0, dtype=WIDE, device=x.device), exponents.to(WIDE))


def row_norms(x: torch.Tensor, center: torch.Tensor | None = None, *, diff: torch.Tensor | None = None) -> torch.Tensor:
    """Euclidean norms ``||x_i - center||`` of the rows of ``x`` ``(n, d)``, in float64, for any finite input.

    Parameters
    ----------
    x : torch.Tensor
        ``(n, d)`` finite floating-point tensor.
    center : torch.Tensor, optional
        ``(d,)`` point the distances are measured from (default: the origin).
    diff : torch.Tensor, optional
        ``x - center`` if the caller already computed it (in ``x.dtype``).

    Returns
    -------
    torch.Tensor
        ``(n,)`` float64 norms, finite for finite float32 input (float64 input
        beyond ``1e308`` in norm gives ``inf``: the value is not a float64).

    Examples
    --------
    >>> import torch
    >>> norms = row_norms(torch.tensor([[2.0**-100, 0.0], [2.0**127, -(2.0**127)]]))
    >>> norms[0].item() == 2.0**-100, abs(norms[1].item() / (2.0**127 * 2**0.5) - 1) < 1e-7
    (True, True)
    """
    if diff is None:
        diff = x if center is None else x - center
    norms = torch.linalg.vector_norm(diff, dim=1).to(WIDE)
    redo = ~in_safe_range(norms, x.dtype)
    if bool(redo.any()):
        rows = redo.nonzero().squeeze(1)
        norms[rows] = _wide_norms(x, rows, center)
    return norms


def row_dots(x: torch.Tensor, g: torch.Tensor, x_norms: torch.Tensor, g_norm: torch.Tensor) -> torch.Tensor:
    """Dot products ``<x_i, g>`` in float64, for any finite input.

    The fast product ``x @ g`` is kept where it keeps its error bound
    ``d * eps * ||x_i|| ||g||``: where it is finite (an overflow on the way
    would have left ``inf`` or NaN) and both norms lie in the fast range (no
    loss to underflow). Other rows are recomputed on rows scaled by powers
    of two (:func:`scale_rows`) and scaled back in float64.

    Examples
    --------
    >>> import torch
    >>> x, g = torch.tensor([[2.0**127, 2.0**127], [1.0, 2.0]]), torch.tensor([2.0**40, 0.0])
    >>> row_dots(x, g, row_norms(x), row_norms(g[None])[0]).tolist() == [2.0**167, 2.0**40]
    True
    """
    dots = (x @ g).to(WIDE)
    ok = torch.isfinite(dots) & in_safe_range(x_norms, x.dtype) & in_safe_range(g_norm, x.dtype)
    if bool(ok.all()):
        return dots
    rows = (~ok).nonzero().squeeze(1)
    picked = x.index_select(0, rows)
    exponents = row_exponents(picked)
    g_exponent = row_exponents(g[None])
    scaled = (scale_rows(picked, exponents) @ scale_rows(g[None], g_exponent)[0]).to(WIDE)
    two = torch.tensor(2.0, dtype=WIDE, device=x.device)
    dots[rows] = scaled * torch.pow(two, (exponents + g_exponent).to(WIDE))
    return dots


def _abnormal(coef: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Mask of the nonzero coefficients that are not normal numbers of ``dtype`` (with ``eps`` to spare).

    A coefficient in the subnormal range (``tau / ||x_i||`` for a huge
    ``x_i``) keeps only a few bits: the clipped row could come out longer than
    the clipping radius; one beyond the maximum is ``inf``.
    """
    fi = torch.finfo(dtype)
    mag = coef.abs()
    return (mag != 0) & ((mag < fi.tiny / fi.eps) | (mag > fi.max))


def _fast_coefficients(coef: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """``coef`` in ``dtype`` if every nonzero coefficient is a normal number there, else ``None``."""
    if bool(_abnormal(coef, dtype).any()):
        return None
    return coef.to(dtype)


def combine(coef: torch.Tensor, x: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_i coef_i (x_i - center)`` for the rows of ``x`` ``(n, d)``, without overflow, in ``x.dtype``.

    The weighted sums of the robust rules (means of kept rows, clipped sums)
    are bounded by their inputs (convex combinations, clipped vectors), so the
    result is representable; only the arithmetic on the way may overflow. The
    fast path is one ``(n,) x (n, d)`` product in ``x.dtype``. Rows whose
    coefficient is not a normal number there (a huge row clipped to ``tau``
    has coefficient ``tau / ||x_i||``, subnormal in float32) are left out of
    it and summed in float64, only they. If the result is still not finite,
    the whole sum is recomputed in float64 over the rows with a nonzero
    coefficient (a row with coefficient 0 contributes exactly 0, however
    large it is).

    Parameters
    ----------
    coef : torch.Tensor
        ``(n,)`` coefficients (any real dtype; float64 keeps tiny ones exact).
    x : torch.Tensor
        ``(n, d)`` finite floating-point tensor.
    center : torch.Tensor, optional
        ``(d,)`` point subtracted from every row.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[2.0**127, 1.0], [2.0**127, 3.0]])
    >>> combine(torch.tensor([0.5, 0.5]), x).tolist() == [2.0**127, 2.0]
    True
    >>> combine(torch.tensor([0.0, 0.5]), x, center=torch.tensor([-(2.0**127), 1.0])).tolist() == [2.0**127, 1.0]
    True
    """
    abnormal = _abnormal(coef, x.dtype)
    rows = abnormal.nonzero().squeeze(1)
    ordinary = coef if rows.numel() == 0 else coef.masked_fill(abnormal, 0)
    out = ordinary.to(x.dtype) @ (x if center is None else x - center)
    if all_finite(out):
        if rows.numel() == 0:
            return out
        # rows with a tiny (or huge) coefficient c_i: c_i x_i = (c_i 2^e_i)(x_i 2^-e_i), both normal
        rest = _scaled_share(coef.index_select(0, rows).to(WIDE), x.index_select(0, rows), center)
        if rest is not None:
            total = out + rest
            if all_finite(total):
                return total
    return _wide_combine(coef.to(WIDE), x, center).to(x.dtype)


def _scaled_share(coef: torch.Tensor, rows: torch.Tensor, center: torch.Tensor | None) -> torch.Tensor | None:
    """``sum_i coef_i (x_i - center)`` over a few rows with abnormal coefficients, or ``None``.

    Each row is scaled by ``2^-e_i`` (:func:`scale_rows`) and its coefficient
    by ``2^e_i`` (in float64); ``None`` if a rescaled coefficient is still not
    a normal number of the dtype (the caller then sums in float64).
    """
    exponents = row_exponents(rows, center)
    scaled = scale_rows(rows, exponents)
    if center is not None:
        scaled = scaled - scale_rows(center.expand_as(rows), exponents)
    rescaled = coef * torch.pow(torch.tensor(2.0, dtype=WIDE, device=rows.device), exponents.to(WIDE))
    if bool(_abnormal(rescaled, rows.dtype).any()):
        return None
    return rescaled.to(rows.dtype) @ scaled


def _wide_combine(coef: torch.Tensor, x: torch.Tensor, center: torch.Tensor | None) -> torch.Tensor:
    rows = (coef != 0).nonzero().squeeze(1)
    k = coef.index_select(0, rows)
    out = torch.zeros(x.shape[1], dtype=WIDE, device=x.device)
    scale = torch.ones((), dtype=WIDE, device=x.device)
    if _needs_scaling(x.dtype) and rows.numel() > 0:
        amax = abs_max(x.index_select(0, rows), dim=1).to(WIDE)
        if center is not None:
            amax = amax + abs_max(center).to(WIDE)
        scale = pow2_scale((k.abs() * amax).max() * max(1, rows.numel()))
    for cols, block in wide_columns(x, rows):
        block = block * scale
        if center is not None:
            block = block - center[cols].to(WIDE) * scale
        out[cols] = k @ block
    return out / scale


def safe_mean(x: torch.Tensor) -> torch.Tensor:
    """Column means of ``x`` ``(n, d)`` without overflow, in ``x.dtype``.

    The mean of finite values lies between their minimum and maximum, so it is
    always representable; only the running sum may overflow.

    Examples
    --------
    >>> import torch
    >>> safe_mean(torch.full((3, 1), 2.0**127)).item() == 2.0**127
    True
    """
    out = x.mean(dim=0)
    if all_finite(out):
        return out
    n = x.shape[0]
    return combine(torch.full((n,), 1.0 / n, dtype=WIDE, device=x.device), x)


def mix_rows(mix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``mix @ x`` for a non-negative ``(m, n)`` mixing matrix (rows of averages), without overflow.

    The ``(m, d)`` result is in ``x.dtype``: each output row is a combination
    of the rows of ``x`` (a bucket mean, a neighbour mean); see :func:`combine`
    for the two paths.

    Examples
    --------
    >>> import torch
    >>> big = torch.tensor([[2.0**127], [2.0**127], [1.0]])
    >>> mix = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]], dtype=torch.float64)
    >>> mix_rows(mix, big).tolist() == [[2.0**127], [2.0**126]]
    True
    """
    fast = _fast_coefficients(mix, x.dtype)
    if fast is None:
        redo = torch.arange(mix.shape[0], device=x.device)
        out = torch.empty(mix.shape[0], x.shape[1], dtype=x.dtype, device=x.device)
    else:
        out = fast @ x
        redo = (~rows_finite(out)).nonzero().squeeze(1)
        if redo.numel() == 0:
            return out
    # the output rows that overflowed (a mean including a huge row), in float64 over the rows they use
    weights = mix.index_select(0, redo).to(WIDE)
    used = (weights != 0).any(dim=0).nonzero().squeeze(1)
    weights = weights.index_select(1, used)
    scale = torch.ones((), dtype=WIDE, device=x.device)
    if _needs_scaling(x.dtype):
        scale = pow2_scale(abs_max(x.index_select(0, used)).to(WIDE) * weights.abs().sum(dim=1).max())
    for cols, block in wide_columns(x, used):
        out[redo[:, None], torch.arange(cols.start, cols.stop, device=x.device)[None, :]] = (
            (weights @ (block * scale)) / scale
        ).to(x.dtype)
    return out


def clip_rows(x: torch.Tensor, rows: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """The ``rows`` of ``x`` rescaled to norm ``radius`` (a float64 scalar), in ``x.dtype``.

    Each row is first scaled by a power of two to a maximum magnitude in
    ``[0.5, 1)`` (exact, :func:`scale_rows`) and its direction formed there, so a row of any
    finite magnitude comes out with norm ``radius`` (to rounding): a factor
    ``radius / ||x_i||`` applied directly would be subnormal, or 0, for a
    huge row.

    Examples
    --------
    >>> import torch
    >>> out = clip_rows(torch.tensor([[3e38, 3e38], [3.0, 4.0]]), torch.tensor([0, 1]), torch.tensor(1.0))
    >>> [round(v, 6) for v in out.flatten().tolist()]
    [0.707107, 0.707107, 0.6, 0.8]
    """
    picked = x.index_select(0, rows)
    picked = scale_rows(picked, row_exponents(picked))
    norms = torch.linalg.vector_norm(picked, dim=1).to(WIDE)
    return picked * (radius.to(WIDE) / norms).to(x.dtype)[:, None]
