"""Fixed-point encoding of weighted float updates into the ring ``Z_{2^b}``.

Secure aggregation sums integers modulo ``2^b``. A client with update ``x`` (length
``d``) and integer weight ``w`` (its example count) sends the ring vector of length
``d + 1``::

    y[:d] = SR(s * w * clip(x, -c, c))  mod 2^b        y[d] = w

where ``SR`` is unbiased stochastic rounding (``floor(v + U)``, ``U ~ U[0, 1)`` from
an explicit generator) and ``s`` is the scale. The server decodes the secure sum
of the survivors into ``sum_i w_i x_i`` and ``sum_i w_i`` and divides: the weighted
mean over exactly the clients that survived, with the survivors' total weight
itself summed securely (it is the extra coordinate), never sent in the clear.

Overflow bound. ``W`` is a public bound on the total weight of the cohort (the
server knows the example counts it samples from). Each entry satisfies
``|SR(v)| <= |v| + 1`` and clients with weight 0 contribute exact zeros, so the
signed sum is bounded by ``s c W + W``; the scale is the largest with
``s c W + W <= 2^(min(b, 53) - 1) - 1`` (float64 carries 53 bits), so the sum of
the survivors never wraps. The
quantisation error of the decoded weighted mean is below
``n_survivors / (s * sum_i w_i)`` per coordinate (:meth:`FixedPointEncoder.mean_error_bound`).

The ring is sized to the cohort: ``b`` bits stored in the smallest unsigned dtype
(``b <= 32`` uses 4 bytes per parameter).

Examples
--------
>>> import numpy as np
>>> enc = FixedPointEncoder(clip=1.0, ring_bits=32, weight_bound=3)
>>> rng = np.random.default_rng(0)
>>> y = (enc.encode(np.array([0.5, -0.25]), weight=1, rng=rng)
...      + enc.encode(np.array([0.1, 0.25]), weight=2, rng=rng))
>>> mean, wsum = enc.decode_mean(enc.reduce(y))
>>> wsum, bool(np.allclose(mean, [(0.5 + 0.2) / 3, 0.25 / 3], atol=enc.mean_error_bound(2, 3)))
(3, True)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from secure_agg.errors import RingOverflowError, SecAggConfigError

__all__ = ["FixedPointEncoder", "ring_dtype"]

logger = logging.getLogger(__name__)


def ring_dtype(ring_bits: int) -> np.dtype:
    """The smallest unsigned NumPy dtype holding ``ring_bits`` bits (8 to 64).

    Examples
    --------
    >>> ring_dtype(20), ring_dtype(32), ring_dtype(33)
    (dtype('uint32'), dtype('uint32'), dtype('uint64'))
    """
    if isinstance(ring_bits, np.integer):
        ring_bits = int(ring_bits)
    if not isinstance(ring_bits, int) or isinstance(ring_bits, bool) or not 2 <= ring_bits <= 64:
        raise SecAggConfigError(f"ring_bits must be an int in [2, 64], got {ring_bits!r}")
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        if ring_bits <= 8 * np.dtype(dt).itemsize:
            return np.dtype(dt)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class FixedPointEncoder:
    """Fixed-point codec for weighted secure aggregation (see the module docstring).

    Parameters
    ----------
    clip : float
        ``c``: every coordinate is clipped to ``[-c, c]`` before encoding (the
        number of clipped entries is logged as a warning, never silently).
    ring_bits : int
        ``b``: the ring is ``Z_{2^b}``.
    weight_bound : int
        ``W``: public upper bound on the sum of the integer client weights.
    """

    clip: float
    ring_bits: int = 32
    weight_bound: int = 1
    scale: float = field(init=False)
    dtype: np.dtype = field(init=False)

    def __post_init__(self) -> None:
        if isinstance(self.clip, np.floating | np.integer):  # NumPy scalars are valid values
            object.__setattr__(self, "clip", float(self.clip))
        if isinstance(self.ring_bits, np.integer):
            object.__setattr__(self, "ring_bits", int(self.ring_bits))
        if not (isinstance(self.clip, int | float) and math.isfinite(self.clip) and self.clip > 0):
            raise SecAggConfigError(f"clip must be a finite float > 0, got {self.clip!r}")
        dtype = ring_dtype(self.ring_bits)
        if not isinstance(self.weight_bound, int | np.integer) or self.weight_bound < 1:
            raise SecAggConfigError(f"weight_bound must be an int >= 1, got {self.weight_bound!r}")
        # float64 carries 53 bits: wider rings get no more precision, only headroom
        half = 2 ** (min(self.ring_bits, 53) - 1) - 1
        scale = (half - int(self.weight_bound)) / (float(self.clip) * int(self.weight_bound))
        if scale * self.clip < 1.0:
            raise RingOverflowError(
                f"ring of {self.ring_bits} bits cannot hold the sum of weights up to "
                f"W={self.weight_bound} with clip={self.clip} at even one level of precision "
                f"(scale={scale:.3g}); use more ring_bits"
            )
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "dtype", dtype)

    @property
    def mask(self) -> int:
        """``2^b - 1``."""
        return (1 << self.ring_bits) - 1

    def reduce(self, y: np.ndarray) -> np.ndarray:
        """Reduce an array of ring words modulo ``2^b`` (no-op when ``b`` fills the dtype)."""
        y = np.asarray(y).astype(self.dtype, copy=False)
        if self.ring_bits == 8 * self.dtype.itemsize:
            return y
        return y & self.dtype.type(self.mask)

    def check_weight(self, weight: float) -> int:
        """Validate one client weight: a non-negative integer not above ``W``."""
        w = float(weight)
        if not math.isfinite(w) or w < 0 or w != math.floor(w):
            raise SecAggConfigError(
                f"secure aggregation weights must be non-negative integers (example counts), "
                f"got {weight!r}"
            )
        if w > self.weight_bound:
            raise RingOverflowError(
                f"weight {int(w)} exceeds the weight bound W={self.weight_bound}"
            )
        return int(w)

    def encode(self, x: np.ndarray, *, weight: float = 1, rng: np.random.Generator) -> np.ndarray:
        """Encode ``w * clip(x)`` with stochastic rounding; returns ``d + 1`` ring words.

        Parameters
        ----------
        x : numpy.ndarray
            ``(d,)`` finite floats.
        weight : float
            Integer-valued example count ``w``.
        rng : numpy.random.Generator
            Source of the rounding noise (never key material).
        """
        w = self.check_weight(weight)
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 1 or x.size == 0:
            raise SecAggConfigError(f"x must have shape (d,) with d >= 1, got {x.shape}")
        if not np.isfinite(x).all():
            raise SecAggConfigError("x contains NaN or Inf")
        c = float(self.clip)
        n_clipped = int(np.count_nonzero(np.abs(x) > c))
        if n_clipped:
            logger.warning("clipping %d of %d entries to [-%g, %g]", n_clipped, x.size, c, c)
        v = np.clip(x, -c, c)
        v *= self.scale * w
        v += rng.random(v.size)
        q = np.floor(v).astype(np.int64)
        out = np.empty(x.size + 1, dtype=self.dtype)
        out[:-1] = q.astype(self.dtype)  # two's complement wrap == reduction mod 2^(8*itemsize)
        out[-1] = w
        return self.reduce(out)

    def decode_sum(self, total: np.ndarray) -> tuple[np.ndarray, int]:
        """Decode a ring sum into (``sum_i w_i clip(x_i)`` as float64, ``sum_i w_i``).

        Raises
        ------
        RingOverflowError
            If the weight coordinate or any entry lies outside what honest encodings
            can produce (a corrupted sum is never returned as a result).
        """
        total = self.reduce(np.asarray(total))
        if total.ndim != 1 or total.size < 2:
            raise SecAggConfigError(f"total must have shape (d + 1,), got {total.shape}")
        signed = total.astype(np.int64) if self.ring_bits < 64 else total.view(np.int64)
        if self.ring_bits < 64:
            half = np.int64(1 << (self.ring_bits - 1))
            signed = np.where(signed >= half, signed - (half << np.int64(1)), signed)
        wsum = int(signed[-1])
        if not 0 <= wsum <= self.weight_bound:
            raise RingOverflowError(
                f"decoded total weight {wsum} is outside [0, W={self.weight_bound}]: corrupt sum"
            )
        limit = self.scale * self.clip * wsum + wsum + 1
        vals = signed[:-1]
        if vals.size and float(np.abs(vals).max()) > limit:
            raise RingOverflowError(
                f"decoded entry {int(np.abs(vals).max())} exceeds the bound {limit:.6g} for total "
                f"weight {wsum}: corrupt sum"
            )
        return vals.astype(np.float64) / self.scale, wsum

    def decode_mean(self, total: np.ndarray) -> tuple[np.ndarray, int]:
        """Weighted mean ``sum_i w_i clip(x_i) / sum_i w_i`` and the total weight."""
        s, wsum = self.decode_sum(total)
        if wsum == 0:
            raise RingOverflowError("total weight of the survivors is zero: no mean exists")
        return s / wsum, wsum

    def mean_error_bound(self, n_survivors: int, weight_sum: int) -> float:
        """Max quantisation error of the decoded weighted mean (vs the clipped float mean)."""
        if weight_sum <= 0:
            raise SecAggConfigError(f"weight_sum must be > 0, got {weight_sum}")
        return n_survivors / (self.scale * weight_sum)
