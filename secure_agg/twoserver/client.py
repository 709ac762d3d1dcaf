"""The client role: fixed-point encoding, one seed and one ring vector, sealed to each server.

A client splits its ring vector ``y`` into ``x_0 = PRG(seed)`` and ``x_1 = y - x_0``; S0
receives the 32-byte seed, S1 the ``d`` words of ``x_1``, each sealed with the pair key
the client shares with that server (:mod:`secure_agg.twoserver.messages`). Upload: ``8 d``
bytes plus about 150 bytes, 2.0x the float32 update.

Examples
--------
>>> import numpy as np
>>> from secure_agg.twoserver.params import Party, SERVERS
>>> servers = (Party(SERVERS[0]), Party(SERVERS[1]))
>>> c = ShareClient(party=Party(7), server_publics=(servers[0].public, servers[1].public), frac_bits=16)
>>> to_s0, to_s1 = c.share(np.full(1000, 0.5), weight=3.0, round_id=1)
>>> len(to_s0), len(to_s1)
(106, 8075)
"""

from __future__ import annotations

import logging
import math

import numpy as np

from secure_agg.errors import SecAggConfigError
from secure_agg.prg import derive_key
from secure_agg.twoserver.messages import ClientSeed, ClientVector, seal
from secure_agg.twoserver.params import SERVERS, Party, keystream_words, new_seed
from secure_agg.twoserver.ring import encode

__all__ = ["CLIENT_PURPOSE", "ShareClient", "input_key", "input_share"]

logger = logging.getLogger(__name__)
CLIENT_PURPOSE = b"2s-client"
_LIMIT = 2.0**62 - 2.0**12


def input_key(seed: bytes, *, round_id: int, client_id: int) -> bytes:
    """The keystream key of S0's share ``x_0`` (any block: :func:`~secure_agg.twoserver.params.keystream_words`)."""
    return derive_key(seed, purpose=b"2s-input", round_id=round_id, a=client_id, b=client_id)


def input_share(seed: bytes, *, round_id: int, client_id: int, d: int) -> np.ndarray:
    """S0's share ``x_0``: the expansion of the client's seed."""
    return keystream_words(input_key(seed, round_id=round_id, client_id=client_id), slice(0, d))


class ShareClient:
    """One client of the two-server protocol."""

    def __init__(self, *, party: Party, server_publics: tuple[bytes, bytes], frac_bits: int) -> None:
        if party.ident >= SERVERS[0]:
            raise SecAggConfigError(f"client ids must be below {SERVERS[0]:#x}, got {party.ident}")
        self.party, self.server_publics, self.frac_bits = party, server_publics, frac_bits

    def share(self, x: np.ndarray, *, weight: float, round_id: int) -> tuple[bytes, bytes]:
        """Encode ``x`` with ``F`` fractional bits and share it; entries past the ring are saturated (logged).

        A vector that large is far beyond any norm bound, so it fails validation either way.
        """
        x = np.asarray(x, dtype=np.float64)
        scale = 2.0**self.frac_bits
        if x.size and float(np.abs(x).max()) * scale >= _LIMIT:
            logger.warning("client %d: entries beyond the ring saturated at 2^62 / 2^F; it will fail validation",
                           self.party.ident)
            x = np.clip(x, -_LIMIT / scale, _LIMIT / scale)
        return self.share_ring(encode(x, self.frac_bits), weight=weight, round_id=round_id)

    def share_ring(self, y: np.ndarray, *, weight: float, round_id: int) -> tuple[bytes, bytes]:
        """Share an arbitrary ring vector ``y`` (what a malicious client may send)."""
        if not (isinstance(weight, int | float) and math.isfinite(weight) and weight > 0):
            raise SecAggConfigError(f"weight must be a finite number > 0, got weight={weight!r}")
        seed = new_seed()
        x1 = np.asarray(y, dtype=np.uint64) - input_share(seed, round_id=round_id, client_id=self.party.ident,
                                                          d=len(y))
        frames = []
        for k, msg in enumerate((ClientSeed(weight=float(weight), seed=seed),
                                 ClientVector(weight=float(weight), share=x1))):
            key = self.party.key_with(self.server_publics[k], SERVERS[k], purpose=CLIENT_PURPOSE, round_id=round_id)
            frames.append(seal(msg, key, round_id=round_id, sender=self.party.ident, receiver=SERVERS[k], seq=0))
        return frames[0], frames[1]
