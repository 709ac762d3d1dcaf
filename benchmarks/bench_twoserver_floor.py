"""Lower bounds ("floors") of the two-server protocol's online server time, measured in the bench's run.

A floor is what *any* round of the protocol's design pays a server online, before the norm
validation, the clients' decryption and the bookkeeping: the local work of one Beaver opening of
an ``n x d`` masked matrix (the AES-CTR mask block by block, the AES-GCM seal of this server's
share and the open of the peer's, the subtraction and the addition) plus S1's share of the rule's
product (the ring Gram matrix ``E A_1^T`` modulo ``2^62`` for rules that need pairwise inner
products, the row sums of ``E * A_1`` for the others). Each part runs the protocol's own code
(:class:`~secure_agg.twoserver.dealer.MaskStream`, :func:`~secure_agg.twoserver.messages.seal`,
:class:`~secure_agg.twoserver.ring.GramAccumulator`) on random ring words, streamed in the
protocol's column blocks. Divided by the plaintext rule's time of the same run, it says which
ratio goal no tuning of this design can reach (``flsec bench two-server --floors``).

Examples
--------
>>> f = measure_floors(5, 3000, repeats=1)
>>> sorted(f), all(v > 0 for v in f.values())
(['gram_s', 'opening_s', 'row_sums_s'], True)
>>> floor_seconds(f, gram=True) == f["opening_s"] + f["gram_s"]
True
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from secure_agg.twoserver.dealer import MaskStream
from secure_agg.twoserver.messages import Openings, seal, unseal
from secure_agg.twoserver.params import GRAM_BITS
from secure_agg.twoserver.ring import U64, GramAccumulator, column_blocks, row_sums

__all__ = ["floor_seconds", "measure_floors"]

_KEY = bytes(range(32))


def _best(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def measure_floors(n: int, d: int, *, repeats: int = 2, seed: int = 0) -> dict[str, float]:
    """Seconds of one opening's local work, S1's ring Gram product and S1's row sums, at ``(n, d)``.

    Parameters
    ----------
    n, d : int
        Clients and model size.
    repeats : int
        Timed runs of each part (the minimum is kept).
    seed : int
        Seed of the random ring words.

    Returns
    -------
    dict
        ``opening_s``, ``gram_s``, ``row_sums_s``.
    """
    blocks = column_blocks(d)
    width = blocks[0].stop - blocks[0].start
    rng = np.random.default_rng(seed)
    x, a = (rng.integers(0, 2**64, size=(n, width), dtype=U64, endpoint=False) for _ in range(2))
    stream = MaskStream(bytes(32), round_id=1, tag=1, n=n)
    rows = np.arange(n)
    body = np.empty(8 * n * width + 4096, dtype=np.uint8)

    def opening() -> None:
        for k, cols in enumerate(blocks):
            w = cols.stop - cols.start
            mask = stream.block(rows, cols)
            own = x[:, :w] - mask
            frame = seal(Openings(tags=(1, k), stack=own[None]), _KEY, round_id=1, sender=0, receiver=1, seq=k)
            peer = unseal(frame, _KEY, Openings, round_id=1, sender=0, receiver=1, seq=k, into=body)
            np.add(own, peer.stack[0], out=own)

    def gram() -> None:
        acc = GramAccumulator(n, n, bits=GRAM_BITS)
        for cols in blocks:
            w = cols.stop - cols.start
            acc.add(x[:, :w], a[:, :w])

    def sums() -> None:
        total = np.zeros(n, dtype=U64)
        for cols in blocks:
            w = cols.stop - cols.start
            total += row_sums(x[:, :w] * a[:, :w])

    return {"opening_s": _best(opening, repeats), "gram_s": _best(gram, repeats),
            "row_sums_s": _best(sums, repeats)}


def floor_seconds(floors: dict[str, float], *, gram: bool) -> float:
    """One opening plus S1's product: the Gram matrix if ``gram``, else the row sums of squares."""
    return floors["opening_s"] + (floors["gram_s"] if gram else floors["row_sums_s"])
