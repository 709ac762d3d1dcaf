"""A SecAgg(+) client between two messages, as bytes: for runtimes that do not keep objects alive.

Flower runs a ``ClientApp`` afresh for every message (a new process per message in a
deployment; any Ray actor in a simulation), so a client of a multi-stage protocol must
carry its state from one message to the next in the node's own storage (Flower's
``context.state``, which stays on the node). :func:`snapshot` writes everything the
state machine of :class:`~secure_agg.client.SecAggClient` holds -- its X25519 secret
keys, self-mask seed, Shamir shares, the neighbours' keys and the channel's MAC keys --
and :func:`restore` rebuilds the client exactly, so the next :meth:`~SecAggClient.handle`
answers as the original object would (tested message for message against an in-memory
round). Secrets already erased (after unmasking or an abort) stay erased.

The snapshot holds secret keys: it must stay on the client's node, like the keys
themselves. The active setting (Ed25519 signatures) is not snapshotted: it needs the
client's long-term signing key, which belongs in a key store, not in per-round state.

Format (version 2): ``b"FLSC" | version (1 byte) | header length (4 bytes, little endian)
| UTF-8 JSON header | the input's ring words``. Version 2 added the header's
``model_digest`` (the digest of the model the client received, which it compares
with its neighbours'); a version-1 snapshot is refused.

Examples
--------
>>> import numpy as np
>>> from secure_agg.params import SecAggParams
>>> from secure_agg.client import SecAggClient
>>> c = SecAggClient(3, np.arange(4, dtype=np.uint32), params=SecAggParams(round_id=5, t=2, d=4),
...                  channel_key=bytes(32))
>>> _ = c.advertise_keys()
>>> r = restore(snapshot(c))
>>> (r.u, r.state.name, r.params.round_id, r._keys == c._keys, r.model_digest)
(3, 'KEYS_ADVERTISED', 5, True, b'')
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from secure_agg.client import ClientState, SecAggClient, _raw_private
from secure_agg.errors import SecAggConfigError
from secure_agg.messages import DIGEST_BYTES, ShareKind
from secure_agg.params import SecAggParams

__all__ = ["SNAPSHOT_VERSION", "restore", "snapshot"]

MAGIC = b"FLSC"
SNAPSHOT_VERSION = 2
_HEAD = struct.Struct("<4sBI")


def _hex(b: bytes | None) -> str | None:
    return None if b is None else b.hex()


def _unhex(s: str | None) -> bytes | None:
    return None if s is None else bytes.fromhex(s)


def _pairs(d: dict[int, tuple[bytes, bytes]]) -> dict[str, list[str]]:
    return {str(k): [a.hex(), b.hex()] for k, (a, b) in d.items()}


def _unpairs(d: dict[str, list[str]]) -> dict[int, tuple[bytes, bytes]]:
    return {int(k): (bytes.fromhex(a), bytes.fromhex(b)) for k, (a, b) in d.items()}


def snapshot(client: SecAggClient) -> bytes:
    """The whole state of ``client`` as bytes (see the module docstring).

    Raises
    ------
    SecAggConfigError
        For a client of the active setting (its signing key is not per-round state).
    """
    p = client.params
    if p.active:
        raise SecAggConfigError("clients of the active setting are not snapshotted (their signing key is long-term)")
    sk = {name: None if key is None else _raw_private(key).hex()
          for name, key in (("c_sk", client._c_sk), ("s_sk", client._s_sk))}
    header: dict[str, Any] = {
        "u": client.u,
        "params": {"round_id": p.round_id, "t": p.t, "d": p.d, "ring_bits": p.ring_bits,
                   "authenticated": p.authenticated, "allow_insecure_threshold": p.allow_insecure_threshold},
        "state": client.state.name,
        "abort_reason": client.abort_reason,
        "revealed": {str(v): k.name for v, k in client.revealed.items()},
        **sk,
        "b": _hex(client._b),
        "keys": _pairs(client._keys),
        "own_shares": None if client._own_shares is None else [s.hex() for s in client._own_shares],
        "received": _pairs(client._received),
        "u3": list(client._u3),
        "mac_up": client._mac_up.hex(),
        "mac_down": client._mac_down.hex(),
        "model_digest": client.model_digest.hex(),
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    x = np.ascontiguousarray(client._x).astype(p.dtype.newbyteorder("<"), copy=False)
    return _HEAD.pack(MAGIC, SNAPSHOT_VERSION, len(head)) + head + x.tobytes()


def _private(h: str | None) -> X25519PrivateKey | None:
    return None if h is None else X25519PrivateKey.from_private_bytes(bytes.fromhex(h))


def restore(data: bytes) -> SecAggClient:
    """The client :func:`snapshot` wrote.

    Raises
    ------
    SecAggConfigError
        For bytes that are not a snapshot of this version, or whose input does not
        have the length the header says.
    """
    if len(data) < _HEAD.size:
        raise SecAggConfigError(f"a client snapshot has at least {_HEAD.size} bytes, got {len(data)}")
    magic, version, n = _HEAD.unpack_from(data)
    if magic != MAGIC or version != SNAPSHOT_VERSION:
        raise SecAggConfigError(f"not a version-{SNAPSHOT_VERSION} client snapshot (magic {magic!r}, "
                                f"version {version})")
    try:
        h = json.loads(data[_HEAD.size:_HEAD.size + n])
        params = SecAggParams(**h["params"])
    except (ValueError, KeyError, TypeError) as e:
        raise SecAggConfigError(f"corrupt client snapshot header: {e}") from None
    body = data[_HEAD.size + n:]
    if len(body) != params.d * params.dtype.itemsize:
        raise SecAggConfigError(f"client snapshot holds {len(body)} input bytes, its header says "
                                f"d={params.d} words of {params.dtype.itemsize} bytes")
    c = object.__new__(SecAggClient)
    c.u, c.params = int(h["u"]), params
    c._x = np.frombuffer(body, dtype=params.dtype.newbyteorder("<")).astype(params.dtype)
    c._signing_key, c._verify_keys = None, {}
    c.state, c.abort_reason = ClientState[h["state"]], h["abort_reason"]
    c.revealed = {int(v): ShareKind[k] for v, k in h["revealed"].items()}
    c._c_sk, c._s_sk, c._b = _private(h["c_sk"]), _private(h["s_sk"]), _unhex(h["b"])
    c._keys, c._received = _unpairs(h["keys"]), _unpairs(h["received"])
    own = h["own_shares"]
    c._own_shares = None if own is None else (bytes.fromhex(own[0]), bytes.fromhex(own[1]))
    c._u3 = tuple(int(v) for v in h["u3"])
    c._mac_up, c._mac_down = bytes.fromhex(h["mac_up"]), bytes.fromhex(h["mac_down"])
    try:
        c.model_digest = bytes.fromhex(h["model_digest"])
    except (KeyError, TypeError, ValueError) as e:
        raise SecAggConfigError(f"corrupt client snapshot header: model_digest: {e}") from None
    if len(c.model_digest) not in (0, DIGEST_BYTES):
        raise SecAggConfigError(
            f"corrupt client snapshot header: model_digest of {len(c.model_digest)} bytes, "
            f"expected 0 or {DIGEST_BYTES}"
        )
    return c
