"""Column-wise sorting, the shared kernel of the coordinate-wise rules.

Median, trimmed mean and Bulyan's second phase sort each coordinate across
the clients. On CUDA this is ``torch.sort(dim=0)``. On CPU, PyTorch's sort
along a short axis is an order of magnitude slower than NumPy's SIMD sort
(measured: 2.0 s vs 0.15 s for a ``(52, 1e6)`` float32 array on two cores), so
CPU tensors of a NumPy-supported dtype are sorted by NumPy (one copy of the
input, sorted in place, in parallel column blocks for large inputs), with a
row-wise sorting network for short columns (``n <= 16``).

Examples
--------
>>> import torch
>>> sort_columns(torch.tensor([[3.0, 0.0], [1.0, 2.0]]))
tensor([[1., 0.],
        [3., 2.]])
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

__all__ = ["column_median", "sort_columns"]

_NUMPY_SORTABLE = (torch.float16, torch.float32, torch.float64)
_NETWORK_MAX_ROWS = 16
_PARALLEL_MIN = 1 << 18  # elements; below this a thread hand-off costs more than it saves
_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0


@functools.cache
def _merge_network(n: int) -> tuple[tuple[int, int], ...]:
    """Comparators of Batcher's odd-even merge sort for ``n`` rows (padded to a power of 2).

    Comparators touching a padding row are dropped: padding rows hold ``+inf``
    conceptually and never move, so those comparators are no-ops.
    """
    size = 1
    while size < n:
        size *= 2
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        pairs.append((a, b))
            k //= 2
        p *= 2
    return tuple(pairs)


def _sort_block(block: np.ndarray) -> None:
    """Sort the columns of ``block`` in place.

    Up to ``_NETWORK_MAX_ROWS`` rows a sorting network of row-wise
    ``minimum``/``maximum`` (vectorised across columns) beats a per-column
    sort 3-4x (measured: 1.4 ms vs 5.4 ms for ``(8, 1e5)`` float32);
    beyond, NumPy's sort wins.
    """
    n = block.shape[0]
    if n > _NETWORK_MAX_ROWS:
        block.sort(axis=0)
        return
    tmp = np.empty(block.shape[1], dtype=block.dtype)
    for a, b in _merge_network(n):
        np.minimum(block[a], block[b], out=tmp)
        np.maximum(block[a], block[b], out=block[b])
        block[a] = tmp


def _pool() -> ThreadPoolExecutor:
    global _POOL, _POOL_SIZE
    size = max(1, torch.get_num_threads())
    if _POOL is None or _POOL_SIZE != size:
        _POOL = ThreadPoolExecutor(max_workers=size, thread_name_prefix="flsec-sort")
        _POOL_SIZE = size
    return _POOL


def sort_columns(updates: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Sort each column of ``updates`` ``(n, d)`` (or of its ``rows`` only) in non-decreasing order.

    Returns a new ``(n, d)`` (or ``(len(rows), d)``) tensor on ``updates.device``
    with ``updates.dtype``; selecting the rows here saves a separate copy.
    On CPU, large inputs are split into column blocks sorted in parallel by
    ``torch.get_num_threads()`` threads (NumPy's sort releases the GIL), as
    PyTorch's own kernels (the GEMM of the distance matrix) use all threads.

    Examples
    --------
    >>> import torch
    >>> sort_columns(torch.tensor([[2.0], [1.0], [3.0]])).flatten().tolist()
    [1.0, 2.0, 3.0]
    """
    if updates.device.type != "cpu" or updates.dtype not in _NUMPY_SORTABLE:
        picked = updates if rows is None else updates.index_select(0, rows)
        return torch.sort(picked, dim=0).values
    arr = updates.detach().numpy()
    out = np.array(arr, copy=True) if rows is None else arr[rows.cpu().numpy()]
    n, d = out.shape
    pool = _pool()
    workers = _POOL_SIZE if n * d >= _PARALLEL_MIN else 1
    if workers == 1 or d < workers:
        _sort_block(out)
    else:
        step = -(-d // workers)
        blocks = [out[:, i : i + step] for i in range(0, d, step)]
        for _ in pool.map(_sort_block, blocks):
            pass
    return torch.from_numpy(out)


def column_median(sorted_updates: torch.Tensor) -> torch.Tensor:
    """Median of each column of an already column-sorted ``(n, d)`` tensor.

    For even ``n`` it is the mean of the two middle values (the usual
    definition, as in ``numpy.median``), not the lower middle value that
    ``torch.median`` returns. It is computed as ``a / 2 + b / 2``: halving is
    exact, so the result equals ``(a + b) / 2`` rounded once, and cannot
    overflow when ``a + b`` would (two middle values of ``3e38``).

    Examples
    --------
    >>> import torch
    >>> column_median(torch.tensor([[1.0], [2.0], [4.0], [8.0]])).tolist()
    [3.0]
    >>> column_median(torch.tensor([[3e38], [3e38]])).isfinite().item()
    True
    """
    n = sorted_updates.shape[0]
    lo, hi = (n - 1) // 2, n // 2
    if lo == hi:
        return sorted_updates[lo].clone()
    return 0.5 * sorted_updates[lo] + 0.5 * sorted_updates[hi]
