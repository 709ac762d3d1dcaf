"""Fixed-point arithmetic on additive shares in ``Z_{2^64}``, and the validation schedule.

A value ``x`` is held as ``x_0 + x_1 = round(x * 2^F)  (mod 2^64)``; NumPy's
``uint64`` wraps, so sums and products of shares are ring operations.

**Lifting and truncation.** Read as signed 64-bit integers, the two shares add
over the integers to some ``y`` with ``y = x (mod 2^64)`` and ``|y| < 2^64``: the
client's *effective* value, whatever shares it chose. Each server can truncate its
own share locally, ``floor(a / 2^t) + floor(b / 2^t) = floor(y / 2^t) - e`` with
``e`` in ``{0, 1}``: exact up to one unit because the shares add without wrapping
(Mohassel and Zhang, SecureML, S&P 2017, truncate shares of values that are
small relative to the ring; here the lift makes it exact).

**Validation levels** (:func:`validation_levels`). A malicious client can choose
entries whose squares wrap modulo ``2^64`` (``y = 2^32`` squares to 0), so a norm
computed in the ring could be a lie. The servers therefore compute the squared norm
of ``floor(y / 2^t)`` at a few truncations ``t``, coarse first: the coarsest cannot
wrap at all (entries below ``2^(64 - t)``), and each check that passes bounds
``||y||`` so that the next, finer one cannot wrap either; the last level is exact
(``t = 0``). A client fails a level if its coarse norm exceeds what a vector of norm
``bound`` can have (plus the truncation error), and is then out of the round. So an
accepted client's norm, distances and inner products are its true ones.

**Ring products as BLAS** (:func:`ring_matmul_t`). ``A @ B.T mod 2^64`` is split
into four 16-bit limbs, so every limb product sums exactly in float64 (at most
``32 + 21 = 53`` bits for ``d <= 2^21``): ten float64 matrix products, six for a Gram
matrix.

Examples
--------
>>> import numpy as np
>>> x = encode(np.array([1.5, -2.25]), 8)
>>> rng = np.random.default_rng(0)
>>> a = rng.integers(0, 2**64, size=2, dtype=np.uint64, endpoint=False)
>>> b = x - a
>>> decode(a + b, 8).tolist()
[1.5, -2.25]
>>> t = truncate(a, 4).view(np.int64) + truncate(b, 4).view(np.int64)  # floor(x * 2^8 / 2^4), or one less
>>> bool(t[0] in (23, 24) and t[1] in (-37, -36))
True
>>> A = rng.integers(0, 2**64, size=(3, 2000), dtype=np.uint64)
>>> bool((ring_matmul_t(A, A)[0, 1] == (A[0] * A[1]).sum()))
True
"""

from __future__ import annotations

import math

import numpy as np

from secure_agg.errors import RingOverflowError

__all__ = [
    "BLOCK",
    "RING_BITS",
    "GramAccumulator",
    "column_blocks",
    "decode",
    "encode",
    "reduce62",
    "ring_matmul_t",
    "row_sums",
    "truncate",
    "validation_levels",
]

RING_BITS = 64
U64 = np.uint64
_LE16 = np.dtype("<u2")
#: Columns per limb product and per streamed block: bounds every temporary to ``n * BLOCK`` words.
BLOCK = _SUPER = 1 << 16


def column_blocks(d: int) -> list[slice]:
    """The column blocks a round is streamed in (each of :data:`BLOCK` columns, the last shorter).

    Examples
    --------
    >>> column_blocks(70_000)
    [slice(0, 65536, None), slice(65536, 70000, None)]
    """
    return [slice(c, min(c + BLOCK, d)) for c in range(0, d, BLOCK)]


def encode(x: np.ndarray, frac_bits: int) -> np.ndarray:
    """``round(x * 2^F)`` as ring elements; raises if a value does not fit in 62 bits."""
    scaled = np.rint(np.asarray(x, dtype=np.float64) * float(2**frac_bits))
    if scaled.size and float(np.abs(scaled).max()) >= 2.0**62:
        raise RingOverflowError(f"a value of magnitude {float(np.abs(x).max()):.3g} does not fit the ring at "
                                f"{frac_bits} fractional bits (at most 2^62 / 2^{frac_bits})")
    return scaled.astype(np.int64).view(U64)


def decode(v: np.ndarray, frac_bits: int) -> np.ndarray:
    """The signed reading of ring elements, divided by ``2^F``, as float64."""
    return np.asarray(v, dtype=U64).view(np.int64).astype(np.float64) / float(2**frac_bits)


def truncate(share: np.ndarray, t: int) -> np.ndarray:
    """``floor(signed(share) / 2^t)`` as a ring element: one server's truncated share."""
    return (np.asarray(share, dtype=U64).view(np.int64) >> np.int64(t)).view(U64)


def row_sums(a: np.ndarray) -> np.ndarray:
    """Row sums modulo ``2^64``."""
    return a.sum(axis=1, dtype=U64)


def _limbs(a: np.ndarray) -> list[np.ndarray]:
    """The four 16-bit limbs of ``uint64`` entries as float64 (a zero-copy ``uint16`` view, one cast each)."""
    v = np.ascontiguousarray(a).view(_LE16).reshape(*a.shape, 4)
    return [v[..., k].astype(np.float64) for k in range(4)]


def _accumulate(out: np.ndarray, la: list[np.ndarray], lb: list[np.ndarray] | None) -> None:
    """``out += a @ b.T mod 2^64`` from limbs; ``lb=None`` means ``b = a`` (pairs computed once, transposed)."""
    for i in range(4):
        for j in range(4 - i):
            if lb is None and j < i:
                continue
            prod = la[i] @ (la if lb is None else lb)[j].T  # entries < 2^32 * d <= 2^53: exact
            part = prod.astype(U64)
            if lb is None and i != j:
                part = part + part.T
            out += part << U64(16 * (i + j))


#: Limb layout of products modulo ``2^62``: three limbs of 21, 21 and 20 bits; a limb product
#: summed over at most ``2^11`` columns stays below ``2^53``, so it is exact in float64.
_LIMB62, _COLS62 = 21, 1 << 11
_MASK62 = U64((1 << 62) - 1)


def _limbs62(a: np.ndarray) -> list[np.ndarray]:
    """Bits 0-20, 21-41 and 42-61 of ``uint64`` entries, as float64."""
    a = np.asarray(a, dtype=U64)
    low = U64((1 << _LIMB62) - 1)
    return [((a >> U64(_LIMB62 * k)) & low).astype(np.float64) for k in range(3)]


def _accumulate62(out: np.ndarray, la: list[np.ndarray], lb: list[np.ndarray] | None) -> None:
    """``out += a @ b.T mod 2^62`` (upper two bits of ``out`` are garbage) from the limbs of
    :func:`_limbs62` over at most ``2^11`` columns: the six limb pairs of weight below ``2^62``
    (four products when ``b = a``: two symmetric, two transposed)."""
    for i in range(3):
        for j in range(3 - i):
            if lb is None and j < i:
                continue
            prod = la[i] @ (la if lb is None else lb)[j].T  # entries < 2^42 * 2^11 = 2^53: exact
            part = prod.astype(U64)
            if lb is None and i != j:
                part = part + part.T
            out += part << U64(_LIMB62 * (i + j))


def reduce62(v: np.ndarray, *, signed: bool) -> np.ndarray:
    """Ring words read modulo ``2^62`` as int64: in ``[0, 2^62)``, or ``[-2^61, 2^61)`` when ``signed``.

    Examples
    --------
    >>> v = np.array([5, 2**64 - 3, 2**62 + 7], dtype=np.uint64)
    >>> reduce62(v, signed=True).tolist(), reduce62(v, signed=False).tolist()
    ([5, -3, 7], [5, 4611686018427387901, 7])
    """
    r = (np.asarray(v, dtype=U64) & _MASK62).astype(np.int64)
    return np.where(r >= 2**61, r - 2**62, r) if signed else r


class GramAccumulator:
    """``sum over column blocks of a_blk @ b_blk.T`` modulo ``2^bits`` (``b_blk=None``: ``a_blk @ a_blk.T``).

    ``bits=64``: four 16-bit limbs, ten float64 products per block (six when ``b = a``).
    ``bits=62``: three 21-bit limbs over sub-blocks of ``2^11`` columns, six products (four
    when ``b = a``); the upper two bits of :attr:`out` are then meaningless, read it with
    :func:`reduce62`. Reduction modulo ``2^62`` is a ring homomorphism of ``Z_{2^64}``, so
    Beaver shares computed this way add up to the product modulo ``2^62``: enough for a
    Gram matrix whose entries are below ``2^61`` in magnitude.

    Examples
    --------
    >>> a = np.arange(6, dtype=np.uint64).reshape(2, 3)
    >>> acc = GramAccumulator(2, 2)
    >>> acc.add(a[:, :2]); acc.add(a[:, 2:])
    >>> acc.out.tolist() == ring_matmul_t(a).tolist() == [[5, 14], [14, 50]]
    True
    >>> rng = np.random.default_rng(0)
    >>> A, B = (rng.integers(0, 2**64, size=(3, 5000), dtype=np.uint64) for _ in range(2))
    >>> acc = GramAccumulator(3, 3, bits=62)
    >>> acc.add(A, B)
    >>> bool((reduce62(acc.out, signed=False) == reduce62(ring_matmul_t(A, B), signed=False)).all())
    True
    """

    def __init__(self, n: int, m: int, *, bits: int = 64) -> None:
        if bits not in (62, 64):
            raise ValueError(f"bits must be 62 or 64, got {bits}")
        self.bits = bits
        self.out = np.zeros((n, m), dtype=U64)

    def add(self, a_blk: np.ndarray, b_blk: np.ndarray | None = None) -> None:
        if a_blk.shape[1] > 2**21:
            raise RingOverflowError(f"a block of {a_blk.shape[1]} columns exceeds 2^21")
        if self.bits == 64:
            _accumulate(self.out, _limbs(a_blk), None if b_blk is None else _limbs(b_blk))
            return
        la, lb = _limbs62(a_blk), None if b_blk is None else _limbs62(b_blk)
        for c in range(0, a_blk.shape[1], _COLS62):
            sl = slice(c, c + _COLS62)
            _accumulate62(self.out, [x[:, sl] for x in la], None if lb is None else [x[:, sl] for x in lb])


def ring_matmul_t(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """``a @ b.T`` modulo ``2^64`` for ``uint64`` ``(n, d)`` and ``(m, d)``, exactly, through float64 BLAS.

    ``b=None`` computes the Gram matrix ``a @ a.T`` with the symmetric limb pairs once.
    Each 64-bit entry is four 16-bit limbs; a limb product summed over ``d <= 2^21``
    columns stays below ``2^53``, so each of the ten limb pairs (six when symmetric)
    whose weight ``2^(16(i+j))`` is below ``2^64`` is one exact float64 matrix product.
    """
    if b is not None and a.shape[1] != b.shape[1]:
        raise ValueError(f"ring_matmul_t needs equal column counts, got {a.shape} and {b.shape}")
    if a.shape[1] > 2**21:
        raise RingOverflowError(f"ring_matmul_t handles d <= 2^21 columns, got d={a.shape[1]}")
    out = np.zeros((a.shape[0], (a if b is None else b).shape[0]), dtype=U64)
    for start in range(0, a.shape[1], _SUPER):
        sl = slice(start, start + _SUPER)
        _accumulate(out, _limbs(a[:, sl]), None if b is None else _limbs(b[:, sl]))
    return out


def validation_levels(d: int, cap_bits: int) -> tuple[int, ...]:
    """Truncations ``t_1 > t_2 > ... > 0`` whose norm checks make a final exact Gram safe.

    Parameters
    ----------
    d : int
        Vector length.
    cap_bits : int
        ``log2`` of the largest accepted norm in ring units (``bound * 2^F``).

    Returns
    -------
    tuple of int
        The coarse truncations, coarsest first; the exact level ``t = 0`` follows them.
        Level ``t`` is safe when ``||y|| / 2^t + 2 sqrt(d) < 2^31`` (its squared norm stays
        below ``2^62``); passing it leaves ``||y|| <= 2^cap + 2^(t+2) sqrt(d)``.

    Examples
    --------
    >>> validation_levels(10**6, 30), validation_levels(10**4, 30)
    ((43, 24, 5), (40, 18))
    """
    if cap_bits > 30:
        raise RingOverflowError(f"a norm bound of 2^{cap_bits} ring units leaves distances no room in 2^64; "
                                "at most 2^30 (lower the bound or the fractional bits)")
    root = math.sqrt(d)
    if 2 * root >= 2.0**29:
        raise RingOverflowError(f"d={d} is too large for norm validation in Z_2^64")
    bound, levels = 2.0**64 * root, []
    while bound >= 2.0**31 - 2 * root:
        t = max(1, math.ceil(math.log2(bound / (2.0**31 - 2 * root))))
        if levels and t >= levels[-1]:
            raise RingOverflowError(f"norm validation does not converge for d={d}, cap=2^{cap_bits}")
        levels.append(t)
        bound = 2.0**cap_bits + 2.0 ** (t + 2) * root
    return tuple(levels)
