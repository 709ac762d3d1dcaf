"""Parameters of a two-server round, parties' ids and keys, and the seed expansion.

Examples
--------
>>> p = TwoServerParams.from_bound(d=10_000, bound=64.0)
>>> p.frac_bits, p.cap, p.levels
(24, 1073741824, (40, 18))
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secure_agg.crypto import pair_key, public_bytes
from secure_agg.errors import SecAggConfigError
from secure_agg.prg import derive_key, expand_mask
from secure_agg.twoserver.ring import validation_levels

__all__ = [
    "DEALER",
    "GRAM_BITS",
    "GRAM_TAG",
    "SERVERS",
    "Party",
    "TwoServerParams",
    "expand",
    "keystream_words",
    "new_seed",
    "row_key",
]

#: Wire ids of the two servers and the dealer (client ids must be below them).
SERVERS = (0xFFFF_FFF0, 0xFFFF_FFF1)
DEALER = 0xFFFF_FFF2
#: Tag of the Gram-matrix triple (norm triples are tagged by their truncation ``t``).
GRAM_TAG = 0xFFFF
#: The Gram triple's products are computed modulo ``2^62`` (three limbs, not four): an accepted
#: client's squared norm is below ``2^61`` and an inner product of two at most ``2^60`` in size.
GRAM_BITS = 62
SEED_BYTES = 32


def new_seed() -> bytes:
    """32 fresh bytes from the OS (the only randomness a seed may come from)."""
    return os.urandom(SEED_BYTES)


def expand(seed: bytes, *, purpose: bytes, round_id: int, a: int, b: int, count: int) -> np.ndarray:
    """``count`` ring words of the AES-256-CTR keystream under ``HKDF(seed, purpose, round, a, b)``."""
    return expand_mask(derive_key(seed, purpose=purpose, round_id=round_id, a=a, b=b), count, np.uint64)


def keystream_words(key: bytes, cols: slice) -> np.ndarray:
    """Words ``cols`` of the AES-256-CTR keystream of ``key`` (:func:`secure_agg.prg.expand_mask`'s stream).

    The counter starts at the block holding word ``cols.start`` (which must be even: two
    words per AES block), so any column block is produced without the words before it.

    Examples
    --------
    >>> key = bytes(range(32))
    >>> bool((keystream_words(key, slice(4, 10)) == expand_mask(key, 10, np.uint64)[4:]).all())
    True
    """
    if cols.start % 2:
        raise ValueError(f"keystream blocks start at an even word, got {cols.start}")
    iv = (cols.start // 2).to_bytes(16, "big")
    enc = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return np.frombuffer(enc.update(bytes(8 * (cols.stop - cols.start))), dtype="<u8").view(np.uint64)


def row_key(seed: bytes, *, purpose: bytes, round_id: int, tag: int, row: int) -> bytes:
    """The keystream key of one row of a mask expanded from ``seed`` (tags below 2^16, rows below 2^16)."""
    ident = (tag << 16) | row
    return derive_key(seed, purpose=purpose, round_id=round_id, a=ident, b=ident)


@dataclass
class Party:
    """One party's X25519 key and id; :meth:`key_with` derives a pair key for one purpose and round."""

    ident: int
    private: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate, repr=False)

    @property
    def public(self) -> bytes:
        return public_bytes(self.private)

    def key_with(self, peer_public: bytes, peer: int, *, purpose: bytes, round_id: int) -> bytes:
        return pair_key(self.private, peer_public, purpose=purpose, round_id=round_id, u=self.ident, v=peer)


@dataclass(frozen=True)
class TwoServerParams:
    """Fixed point, norm capacity and validation schedule of one round.

    Parameters
    ----------
    d : int
        Update length.
    bound : float
        Largest L2 norm a valid update may have; a client above it fails validation and
        is out of the round. Its ring image ``cap = bound * 2^F`` is at most ``2^30``,
        so every inner product of accepted clients fits ``Z_{2^64}`` with room.
    frac_bits : int
        ``F``, the fractional bits; default the most the bound allows (``30 - ceil(log2 bound)``).
    coef_bits : int
        Fractional bits of the rule's coefficients in the aggregate.
    """

    d: int
    bound: float
    frac_bits: int
    coef_bits: int = 24

    def __post_init__(self) -> None:
        if not (isinstance(self.d, int) and self.d >= 1):
            raise SecAggConfigError(f"d must be a positive int, got d={self.d!r}")
        if not (math.isfinite(self.bound) and self.bound > 0):
            raise SecAggConfigError(f"bound must be a finite number > 0, got bound={self.bound!r}")
        if not 0 <= self.frac_bits <= 40 or self.bound * 2.0**self.frac_bits > 2.0**30:
            raise SecAggConfigError(f"bound * 2^frac_bits must be at most 2^30, got bound={self.bound}, "
                                    f"frac_bits={self.frac_bits}")
        if self.frac_bits < 8:
            raise SecAggConfigError(f"bound={self.bound} leaves only {self.frac_bits} fractional bits "
                                    "(at least 8 needed): lower the bound")
        if not 8 <= self.coef_bits <= 24:
            raise SecAggConfigError(f"coef_bits must be in [8, 24], got {self.coef_bits}")
        validation_levels(self.d, self.cap_bits)

    @classmethod
    def from_bound(cls, *, d: int, bound: float, frac_bits: int | None = None) -> TwoServerParams:
        """The parameters with the most fractional bits ``bound`` allows (or the given ones)."""
        if frac_bits is None:
            if not (isinstance(bound, int | float) and math.isfinite(bound) and bound > 0):
                raise SecAggConfigError(f"bound must be a finite number > 0, got bound={bound!r}")
            frac_bits = 30 - max(0, math.ceil(math.log2(bound)))
        return cls(d=d, bound=float(bound), frac_bits=frac_bits)

    @property
    def cap(self) -> int:
        """The norm bound in ring units, ``floor(bound * 2^F)``."""
        return int(self.bound * 2**self.frac_bits)

    @property
    def cap_bits(self) -> int:
        return max(1, math.ceil(math.log2(self.cap)))

    @property
    def levels(self) -> tuple[int, ...]:
        """Coarse truncations of the validation (the exact level follows)."""
        return validation_levels(self.d, self.cap_bits)

    def threshold(self, t: int) -> int:
        """Largest squared norm of ``floor(y / 2^t) - e`` for a ``y`` of norm ``cap`` (truncation error included)."""
        if t == 0:
            return self.cap**2
        return math.ceil((self.cap / 2**t + 2 * math.sqrt(self.d)) ** 2)
