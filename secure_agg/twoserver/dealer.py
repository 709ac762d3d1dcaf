"""The dealer: a third party that sees no data and hands the servers correlated randomness.

For each triple the dealer draws the masks ``A = A_0 + A_1`` (each share the AES-CTR
expansion of a seed, row by row: :class:`MaskStream`) and splits their products: for a norm triple the row sums
``c = rowsum(A * A)`` (``n`` words), for the Gram triple ``C = A @ A.T`` (``n x n``).
S0 receives only seeds (its ``A_0`` and its product share ``c_0``); S1 receives the seed
of ``A_1`` and the corrections ``c_1 = c - c_0``. So the dealer sends ``O(n^2)`` words,
never ``O(n d)``.

Trust: the dealer is semi-honest, as CrypTen's trusted third party and SecureNN's third
server are. It learns nothing about the updates (it never sees a message that depends
on them). A wrong triple is **not** detected: it would make the opened norms and inner
products wrong, so the rule could decide on wrong geometry (it cannot change what a
linear combination of accepted shares sums to, nor reveal an update). This is stated,
not checked; a sacrificed-triple check would double the openings.

Examples
--------
>>> from secure_agg.twoserver.params import Party, SERVERS, DEALER
>>> s0, s1, dealer = Party(SERVERS[0]), Party(SERVERS[1]), Dealer(party=Party(DEALER), server_publics=None)
>>> dealer.server_publics = (s0.public, s1.public)
>>> f0, f1 = dealer.triples(round_id=1, ids=(3, 4), d=8, tags=(5, 0))
>>> len(f0), len(f1)  # seeds only to S0; one seed per triple and the product corrections to S1
(227, 195)
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from secure_agg.twoserver.messages import Triples, seal
from secure_agg.twoserver.params import GRAM_BITS, GRAM_TAG, SERVERS, Party, expand, keystream_words, new_seed, row_key
from secure_agg.twoserver.ring import GramAccumulator, column_blocks, row_sums

__all__ = ["DEALER_PURPOSE", "Dealer", "MaskStream", "product_share"]

DEALER_PURPOSE = b"2s-dealer"


class MaskStream:
    """One server's mask share of triple ``tag``: row ``r`` is the keystream of ``HKDF(seed, tag, r)``.

    Any block of rows and columns is produced on demand (:func:`~secure_agg.twoserver.params.keystream_words`),
    so no party ever holds a whole ``(n, d)`` mask.

    Examples
    --------
    >>> m = MaskStream(bytes(32), round_id=1, tag=5, n=3)
    >>> m.block([0, 2], slice(0, 4)).shape
    (2, 4)
    >>> bool((m.block([2], slice(2, 4)) == m.block([0, 1, 2], slice(0, 4))[2:, 2:]).all())
    True
    """

    def __init__(self, seed: bytes, *, round_id: int, tag: int, n: int) -> None:
        if n >= 2**16:
            raise ValueError(f"at most 65535 clients per round, got n={n}")
        self.keys = [row_key(seed, purpose=b"2s-triple-A", round_id=round_id, tag=tag, row=r) for r in range(n)]

    def block(self, rows: Sequence[int] | np.ndarray, cols: slice) -> np.ndarray:
        out = np.empty((len(rows), cols.stop - cols.start), dtype=np.uint64)
        for i, r in enumerate(rows):
            out[i] = keystream_words(self.keys[int(r)], cols)
        return out


def product_share(seed: bytes, *, round_id: int, tag: int, n: int) -> np.ndarray:
    """S0's product share of triple ``tag``: ``n`` words, or ``(n, n)`` for the Gram triple."""
    count = n * n if tag == GRAM_TAG else n
    out = expand(seed, purpose=b"2s-triple-C", round_id=round_id, a=tag, b=0, count=count)
    return out.reshape(n, n) if tag == GRAM_TAG else out


class Dealer:
    """The dealer role: :meth:`triples` produces one sealed :class:`Triples` frame per server."""

    def __init__(self, *, party: Party, server_publics: tuple[bytes, bytes] | None) -> None:
        self.party, self.server_publics = party, server_publics
        self.seconds = 0.0

    def _key(self, k: int, round_id: int) -> bytes:
        assert self.server_publics is not None
        return self.party.key_with(self.server_publics[k], SERVERS[k], purpose=DEALER_PURPOSE, round_id=round_id)

    def triples(self, *, round_id: int, ids: tuple[int, ...], d: int, tags: tuple[int, ...]) -> tuple[bytes, bytes]:
        """Frames for S0 and S1 with the triples ``tags`` over the clients ``ids``."""
        start = time.perf_counter()
        n = len(ids)
        seeds0, seeds1, corrections = [], [], []
        for tag in tags:
            a_seed0, c_seed0, a_seed1 = new_seed(), new_seed(), new_seed()
            m0, m1 = (MaskStream(sd, round_id=round_id, tag=tag, n=n) for sd in (a_seed0, a_seed1))
            gram = GramAccumulator(n, n, bits=GRAM_BITS) if tag == GRAM_TAG else None
            sums = np.zeros(n, dtype=np.uint64)
            for cols in column_blocks(d):
                a = m0.block(range(n), cols) + m1.block(range(n), cols)
                if gram is not None:
                    gram.add(a)
                else:
                    sums += row_sums(a * a)
            product = gram.out if gram is not None else sums
            corrections.append((product - product_share(c_seed0, round_id=round_id, tag=tag, n=n)).ravel())
            seeds0 += [a_seed0, c_seed0]
            seeds1.append(a_seed1)
        frames = []
        for k, (seeds, corr) in enumerate(((seeds0, []), (seeds1, corrections))):
            flat = np.concatenate(corr) if corr else np.zeros(0, dtype=np.uint64)
            msg = Triples(tags=tuple(tags), ids=tuple(ids), d=d, seeds=b"".join(seeds), corrections=flat)
            frames.append(seal(msg, self._key(k, round_id), round_id=round_id, sender=self.party.ident,
                               receiver=SERVERS[k], seq=0))
        self.seconds += time.perf_counter() - start
        return frames[0], frames[1]
