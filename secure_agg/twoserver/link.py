"""An authenticated, encrypted link between S0 and a party process (S1 or the dealer).

When the two servers and the dealer are separate processes (S0 inside a Flower
``ServerApp``, S1 and the dealer run by other operators: :mod:`secure_agg.twoserver.service`),
S0 opens one TCP connection to each. Every record on it is sealed with AES-256-GCM under
a session key: ``HKDF(X25519(own, peer), r_0 || r_1)`` with the long-term X25519 keys of
the two ends and 16 fresh random bytes from each end, so a recorded session cannot be
replayed into a new one. The nonce is the direction and a record counter: a dropped,
reordered, replayed or altered record fails authentication and ends the link with
:class:`LinkError` (the round then aborts; it never finishes with a wrong aggregate).
Either end may pin the other's public key.

The protocol's own frames (clients' shares, the dealer's triples, the servers' openings)
are already sealed end to end (:mod:`secure_agg.twoserver.messages`); the link adds
authentication of S0 to the party and privacy of the control fields (the round's spec,
public references).

A record is ``kind`` and a JSON header, then binary blobs::

    u32 header length | header (UTF-8 JSON, with "kind") | u32 count | (u64 length | bytes) * count

Examples
--------
>>> import socket, threading
>>> from secure_agg.twoserver.params import Party
>>> a, b = Party(1), Party(2)
>>> s0, s1 = socket.socketpair()
>>> box = {}
>>> t = threading.Thread(target=lambda: box.update(link=Link.accept(s1, b, timeout_s=5.0)))
>>> t.start()
>>> left = Link.connect(s0, a, peer_ident=2, peer_public=b.public, timeout_s=5.0)
>>> t.join()
>>> left.send("ping", {"x": 1}, [b"abc"])
>>> box["link"].recv()
('ping', {'x': 1}, [b'abc'])
>>> box["link"].peer_public == a.public
True
>>> left.close(); box["link"].close()
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Sequence
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secure_agg.crypto import pair_key
from secure_agg.errors import MessageRejectedError, ProtocolAbortError
from secure_agg.prg import derive_key
from secure_agg.twoserver.params import Party

__all__ = ["LINK_VERSION", "MAX_RECORD", "Link", "LinkError"]

MAGIC = b"FS2L"
LINK_VERSION = 1
#: Largest sealed record (bytes): one client's share at ``d = 2^27`` with room.
MAX_RECORD = 1 << 31
_HELLO = struct.Struct("<4sHI32s16s")
_LEN = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_PURPOSE = b"2s-link"


class LinkError(ProtocolAbortError):
    """The link to the other party failed: refused handshake, bad record, closed or timed out."""


def _read_exact(sock: socket.socket, n: int, what: str) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    try:
        while got < n:
            k = sock.recv_into(view[got:], n - got)
            if k == 0:
                raise LinkError(f"the link closed while reading {what} ({got} of {n} bytes)")
            got += k
    except TimeoutError as e:
        raise LinkError(f"timed out reading {what}") from e
    except OSError as e:
        raise LinkError(f"the link failed reading {what}: {e}") from e
    return bytes(buf)


def _pack(kind: str, header: dict[str, Any], blobs: Sequence[bytes]) -> bytes:
    head = json.dumps({"kind": kind, **header}, separators=(",", ":")).encode()
    parts = [_U32.pack(len(head)), head, _U32.pack(len(blobs))]
    for b in blobs:
        parts += [_LEN.pack(len(b)), bytes(b)]
    return b"".join(parts)


def _unpack(data: bytes) -> tuple[str, dict[str, Any], list[bytes]]:
    try:
        (hlen,) = _U32.unpack_from(data, 0)
        header = json.loads(data[4: 4 + hlen].decode())
        pos = 4 + hlen
        (count,) = _U32.unpack_from(data, pos)
        pos += 4
        blobs = []
        for _ in range(count):
            (blen,) = _LEN.unpack_from(data, pos)
            pos += 8
            if pos + blen > len(data):
                raise ValueError("a blob runs past the record")
            blobs.append(data[pos: pos + blen])
            pos += blen
        if pos != len(data) or not isinstance(header, dict) or not isinstance(header.get("kind"), str):
            raise ValueError("trailing bytes or no kind")
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise LinkError(f"malformed record: {e}") from e
    kind = header.pop("kind")
    return kind, header, blobs


class Link:
    """One end of a sealed link; make it with :meth:`connect` (S0) or :meth:`accept` (the party)."""

    def __init__(self, sock: socket.socket, key: bytes, *, initiator: bool, peer_public: bytes,
                 peer_ident: int) -> None:
        self.sock, self._aead = sock, AESGCM(key)
        self._out_dir, self._in_dir = (0, 1) if initiator else (1, 0)
        self._sent = self._received = 0
        self.peer_public, self.peer_ident = peer_public, peer_ident
        self.bytes_sent = self.bytes_received = 0

    # ------------------------------------------------------------------ handshake
    @classmethod
    def connect(cls, sock: socket.socket, own: Party, *, peer_ident: int, peer_public: bytes | None,
                timeout_s: float) -> Link:
        """S0's end: say who we are, check who answered (and its key, when pinned)."""
        sock.settimeout(timeout_s)
        mine = os.urandom(16)
        try:
            sock.sendall(_HELLO.pack(MAGIC, LINK_VERSION, own.ident, own.public, mine))
        except OSError as e:
            raise LinkError(f"cannot reach party {peer_ident:#x}: {e}") from e
        magic, version, ident, public, theirs = _HELLO.unpack(_read_exact(sock, _HELLO.size, "the hello"))
        cls._check_hello(magic, version)
        if ident != peer_ident:
            raise LinkError(f"expected party {peer_ident:#x}, the link answered as {ident:#x}")
        if peer_public is not None and public != peer_public:
            raise LinkError(f"party {peer_ident:#x} answered with key {public.hex()[:16]}..., not the pinned "
                            f"{peer_public.hex()[:16]}...")
        return cls(sock, cls._session(own, public, ident, mine + theirs), initiator=True, peer_public=public,
                   peer_ident=ident)

    @classmethod
    def accept(cls, sock: socket.socket, own: Party, *, peer_public: bytes | None = None,
               timeout_s: float) -> Link:
        """The party's end: answer a hello; refuse an initiator whose key is not the pinned one."""
        sock.settimeout(timeout_s)
        magic, version, ident, public, theirs = _HELLO.unpack(_read_exact(sock, _HELLO.size, "the hello"))
        cls._check_hello(magic, version)
        if peer_public is not None and public != peer_public:
            raise LinkError(f"refused {ident:#x}: its key {public.hex()[:16]}... is not the pinned "
                            f"{peer_public.hex()[:16]}...")
        mine = os.urandom(16)
        try:
            sock.sendall(_HELLO.pack(MAGIC, LINK_VERSION, own.ident, own.public, mine))
        except OSError as e:
            raise LinkError(f"cannot answer {ident:#x}: {e}") from e
        return cls(sock, cls._session(own, public, ident, theirs + mine), initiator=False, peer_public=public,
                   peer_ident=ident)

    @staticmethod
    def _check_hello(magic: bytes, version: int) -> None:
        if magic != MAGIC:
            raise LinkError(f"not a flsec two-server link (magic {magic!r})")
        if version != LINK_VERSION:
            raise LinkError(f"link version {version}, this end speaks {LINK_VERSION}")

    @staticmethod
    def _session(own: Party, peer_public: bytes, peer_ident: int, salt: bytes) -> bytes:
        try:
            base = pair_key(own.private, peer_public, purpose=_PURPOSE, round_id=0, u=own.ident, v=peer_ident)
        except MessageRejectedError as e:
            raise LinkError(f"party {peer_ident:#x}: {e}") from e
        return derive_key(base + salt, purpose=_PURPOSE, round_id=0, a=own.ident, b=peer_ident)

    # ------------------------------------------------------------------ records
    def _nonce(self, direction: int, counter: int) -> bytes:
        return bytes([direction]) + counter.to_bytes(11, "little")

    def send(self, kind: str, header: dict[str, Any] | None = None, blobs: Sequence[bytes] = ()) -> None:
        """Seal and send one record."""
        body = self._aead.encrypt(self._nonce(self._out_dir, self._sent), _pack(kind, header or {}, blobs), MAGIC)
        self._sent += 1
        try:
            self.sock.sendall(_LEN.pack(len(body)) + body)
        except OSError as e:
            raise LinkError(f"the link to {self.peer_ident:#x} failed sending {kind!r}: {e}") from e
        self.bytes_sent += 8 + len(body)

    def recv(self) -> tuple[str, dict[str, Any], list[bytes]]:
        """Receive and open one record: ``(kind, header, blobs)``."""
        (size,) = _LEN.unpack(_read_exact(self.sock, 8, "a record length"))
        if not 16 <= size <= MAX_RECORD:
            raise LinkError(f"record of {size} bytes (at most {MAX_RECORD})")
        body = _read_exact(self.sock, size, "a record")
        try:
            data = self._aead.decrypt(self._nonce(self._in_dir, self._received), body, MAGIC)
        except InvalidTag as e:
            raise LinkError(f"a record from {self.peer_ident:#x} failed authentication (altered, replayed or "
                            "reordered)") from e
        self._received += 1
        self.bytes_received += 8 + size
        return _unpack(data)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
