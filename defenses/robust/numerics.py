"""Overflow-safe kernels shared by the robust rules: norms, dot products and weighted sums.

Finite but extreme updates are valid input (a Byzantine row of ``3e38`` in
float32): a rule must keep its guarantee for them, so no intermediate value may
overflow to ``inf`` (``inf - inf`` is NaN, ties on ``inf`` fall to the first
row) or underflow to 0. Every kernel here has

* a **fast path** in the updates' own dtype, the only one taken for ordinary
  updates; its result is *checked*, not trusted: an overflow anywhere in a sum
  of products ends as ``inf`` or NaN in the result (``inf`` never turns finite
  again under ``+``, ``-`` and ``*``), and a result below the dtype's safe
  lower bound may have lost digits to underflow;
* a **wide path** for the rows or results that failed the check, computed in
  float64. A float32 (or float16/bfloat16) value squared, times any ``d`` a
  tensor can have, fits float64 (``(3.4e38)^2 = 1.2e77`` against a maximum of
  ``1.8e308``), and the product of two float32 values is exact in float64, so
  the wide path needs no scaling for them. Float64 input is scaled by a power of
  two (exact: only the exponent changes) so that its largest magnitude is below 1.

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
    "all_finite",
    "clip_rows",
    "combine",
    "in_safe_range",
    "mix_rows",
    "pow2_scale",
    "row_dots",
    "row_norms",
    "safe_mean",
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
    """Whether every entry of ``t`` is finite: a finite sum proves it in one reduction.

    ``torch.isfinite(t).all()`` is checked only when the sum is not finite,
    which finite entries can also cause (the sum overflows).

    Examples
    --------
    >>> import torch
    >>> all_finite(torch.tensor([3e38, 3e38])), all_finite(torch.tensor([1.0, float("inf")]))
    (True, False)
    """
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


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
    """Exact-range norms ``||x_i - center||`` of ``rows``, in float64."""
    scale = torch.ones(rows.numel(), dtype=WIDE, device=x.device)
    if _needs_scaling(x.dtype):
        amax = x.index_select(0, rows).abs().amax(dim=1).to(WIDE)
        if center is not None:
            amax = amax + center.abs().amax().to(WIDE)
        scale = pow2_scale(amax)
    total = torch.zeros(rows.numel(), dtype=WIDE, device=x.device)
    for cols, block in wide_columns(x, rows):
        if center is not None:
            block = block * scale[:, None] - center[cols].to(WIDE)[None, :] * scale[:, None]
        else:
            block = block * scale[:, None]
        total += (block * block).sum(dim=1)
    return torch.sqrt(total) / scale


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
    >>> norms[0].item() == 2.0**-100, norms[1].item() == 2.0**127 * 2**0.5
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
    loss to underflow). Other rows are recomputed in float64.

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
    scale = torch.ones(rows.numel(), dtype=WIDE, device=x.device)
    g_scale = torch.ones((), dtype=WIDE, device=x.device)
    if _needs_scaling(x.dtype):
        scale = pow2_scale(x.index_select(0, rows).abs().amax(dim=1))
        g_scale = pow2_scale(g.abs().amax())
    total = torch.zeros(rows.numel(), dtype=WIDE, device=x.device)
    for cols, block in wide_columns(x, rows):
        total += (block * scale[:, None]) @ (g[cols].to(WIDE) * g_scale)
    dots[rows] = total / scale / g_scale
    return dots


def _fast_coefficients(coef: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """``coef`` in ``dtype`` if every nonzero coefficient is a normal number there, else ``None``.

    A coefficient in the subnormal range (``tau / ||x_i||`` for a huge
    ``x_i``) keeps only a few bits: the clipped row could come out longer than
    the clipping radius.
    """
    fi = torch.finfo(dtype)
    mag = coef.abs()
    if bool(((mag != 0) & ((mag < fi.tiny / fi.eps) | (mag > fi.max))).any()):
        return None
    return coef.to(dtype)


def combine(coef: torch.Tensor, x: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_i coef_i (x_i - center)`` for the rows of ``x`` ``(n, d)``, without overflow, in ``x.dtype``.

    The weighted sums of the robust rules (means of kept rows, clipped sums)
    are bounded by their inputs (convex combinations, clipped vectors), so the
    result is representable; only the arithmetic on the way may overflow. The
    fast path is one ``(n,) x (n, d)`` product in ``x.dtype``; if its result is
    not finite, or a coefficient is not a normal number there, the sum is
    recomputed in float64 over the rows with a nonzero coefficient (a row with
    coefficient 0 contributes exactly 0, however large it is).

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
    fast = _fast_coefficients(coef, x.dtype)
    if fast is not None:
        out = fast @ (x if center is None else x - center)
        if all_finite(out):
            return out
    return _wide_combine(coef.to(WIDE), x, center).to(x.dtype)


def _wide_combine(coef: torch.Tensor, x: torch.Tensor, center: torch.Tensor | None) -> torch.Tensor:
    rows = (coef != 0).nonzero().squeeze(1)
    k = coef.index_select(0, rows)
    out = torch.zeros(x.shape[1], dtype=WIDE, device=x.device)
    scale = torch.ones((), dtype=WIDE, device=x.device)
    if _needs_scaling(x.dtype) and rows.numel() > 0:
        amax = x.index_select(0, rows).abs().amax(dim=1).to(WIDE)
        if center is not None:
            amax = amax + center.abs().amax().to(WIDE)
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
    if fast is not None:
        out = fast @ x
        if all_finite(out):
            return out
    mix = mix.to(WIDE)
    out = torch.empty(mix.shape[0], x.shape[1], dtype=x.dtype, device=x.device)
    scale = torch.ones((), dtype=WIDE, device=x.device)
    if _needs_scaling(x.dtype):
        scale = pow2_scale(x.abs().amax().to(WIDE) * mix.abs().sum(dim=1).max())
    for cols, block in wide_columns(x):
        out[:, cols] = ((mix @ (block * scale)) / scale).to(x.dtype)
    return out


def clip_rows(x: torch.Tensor, rows: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """The ``rows`` of ``x`` rescaled to norm ``radius`` (a float64 scalar), in ``x.dtype``.

    Each row is first scaled by a power of two to a maximum magnitude in
    ``[0.5, 1)`` (exact) and its direction formed in float64, so a row of any
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
    picked = x.index_select(0, rows).to(WIDE)
    picked = picked * pow2_scale(picked.abs().amax(dim=1))[:, None]
    norms = torch.linalg.vector_norm(picked, dim=1)
    return (picked * (radius.to(WIDE) / norms)[:, None]).to(x.dtype)
