"""Typed messages of the two-server protocol and their sealed wire format (version 2).

Every message travels as one frame::

    header = "FL2S" | version u8 | type u8 | round u64 | sender u32 | receiver u32 | seq u32 | body_len u64
    frame  = header | nonce (12 bytes) | AES-256-GCM(key, nonce, body, associated data = header)

The key is the pair key of sender and receiver (X25519, then HKDF-SHA256 bound to the
purpose, the round and both ids: :func:`secure_agg.crypto.pair_key`), so a frame is
authenticated and encrypted, and one from another round, another sender, another
receiver or another position in the stream (``seq``) fails to open. Bodies are a fixed
sequence of typed fields per message type; every length is checked against what the
receiver expects. Any failure raises :class:`~secure_agg.errors.MessageRejectedError`
(authentication) or :class:`~secure_agg.errors.WireFormatError` (format).

Examples
--------
>>> import numpy as np
>>> msg = AggregateShare(values=np.arange(3, dtype=np.uint64))
>>> frame = seal(msg, b"k" * 32, round_id=7, sender=1, receiver=2, seq=4)
>>> unseal(frame, b"k" * 32, AggregateShare, round_id=7, sender=1, receiver=2, seq=4).values.tolist()
[0, 1, 2]
>>> unseal(frame, b"k" * 32, AggregateShare, round_id=8, sender=1, receiver=2, seq=4)
Traceback (most recent call last):
...
secure_agg.errors.MessageRejectedError: AggregateShare from 1: frame for round 7, expected round 8
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, TypeVar

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secure_agg.errors import MessageRejectedError, WireFormatError

__all__ = [
    "WIRE_VERSION",
    "AggregateShare",
    "ClientSeed",
    "ClientVector",
    "MsgType",
    "Openings",
    "Scalars",
    "Survivors",
    "Triples",
    "seal",
    "unseal",
]

MAGIC = b"FL2S"
WIRE_VERSION = 2
_HEADER = struct.Struct("<4sBBQIIIQ")
_NONCE = 12
_NONCE_AND_TAG = _NONCE + 16
_LE64 = np.dtype("<u8")


class MsgType(IntEnum):
    """Wire type codes."""

    CLIENT_SEED = 1
    CLIENT_VECTOR = 2
    SURVIVORS = 3
    OPENINGS = 4
    SCALARS = 5
    AGGREGATE = 6
    TRIPLES = 7


class _Reader:
    def __init__(self, data: bytes | bytearray, what: str) -> None:
        self.data, self.pos, self.what = memoryview(data), 0, what

    def take(self, k: int) -> memoryview:
        if k < 0 or self.pos + k > len(self.data):
            raise WireFormatError(f"{self.what}: truncated body (wanted {k} bytes at {self.pos} of {len(self.data)})")
        out = self.data[self.pos : self.pos + k]
        self.pos += k
        return out

    def unpack(self, fmt: str) -> tuple:
        s = struct.Struct("<" + fmt)
        return s.unpack(self.take(s.size))

    def end(self) -> None:
        if self.pos != len(self.data):
            raise WireFormatError(f"{self.what}: {len(self.data) - self.pos} trailing bytes")


def _put(kind: str, value: object) -> bytes | list:
    if kind == "u32":
        return struct.pack("<I", value)
    if kind == "f64":
        return struct.pack("<d", value)
    if kind == "bytes":
        return struct.pack("<I", len(value)) + bytes(value)  # type: ignore[arg-type]
    if kind == "ints":
        vals = tuple(value)  # type: ignore[arg-type]
        return struct.pack(f"<I{len(vals)}I", len(vals), *vals)
    if kind == "floats":
        vals = tuple(value)  # type: ignore[arg-type]
        return struct.pack(f"<I{len(vals)}d", len(vals), *vals)
    arr = np.ascontiguousarray(value, dtype=_LE64)  # "array": ndim, shape, little-endian uint64 words
    return [struct.pack(f"<B{arr.ndim}I", arr.ndim, *arr.shape), memoryview(arr).cast("B")]


def _get(r: _Reader, kind: str) -> object:
    if kind in ("u32", "f64"):
        return r.unpack("I" if kind == "u32" else "d")[0]
    if kind == "bytes":
        return bytes(r.take(r.unpack("I")[0]))
    if kind in ("ints", "floats"):
        k = r.unpack("I")[0]
        return r.unpack(f"{k}{'I' if kind == 'ints' else 'd'}")
    ndim = r.unpack("B")[0]
    if ndim > 3:
        raise WireFormatError(f"{r.what}: arrays have at most 3 dimensions, got {ndim}")
    shape = r.unpack(f"{ndim}I")
    count = int(np.prod(shape)) if shape else 1
    return np.frombuffer(r.take(8 * count), dtype=_LE64).view(np.uint64).reshape(shape)  # a view, no copy


@dataclass(frozen=True)
class _Message:
    TYPE: ClassVar[MsgType]
    #: (field name, kind) in wire order; kinds: u32, f64, bytes, ints, floats, array.
    LAYOUT: ClassVar[tuple[tuple[str, str], ...]]

    @classmethod
    def parse(cls, body: bytes | bytearray) -> _Message:
        r = _Reader(body, cls.__name__)
        values = {name: _get(r, kind) for name, kind in cls.LAYOUT}
        r.end()
        return cls(**values)


@dataclass(frozen=True)
class ClientSeed(_Message):
    """Client to S0: the 32-byte AES-CTR seed of its share, and its public weight."""

    TYPE: ClassVar[MsgType] = MsgType.CLIENT_SEED
    LAYOUT: ClassVar = (("weight", "f64"), ("seed", "bytes"))
    weight: float
    seed: bytes


@dataclass(frozen=True)
class ClientVector(_Message):
    """Client to S1: the other share ``y - PRG(seed)`` (``d`` ring words), and its public weight."""

    TYPE: ClassVar[MsgType] = MsgType.CLIENT_VECTOR
    LAYOUT: ClassVar = (("weight", "f64"), ("share", "array"))
    weight: float
    share: np.ndarray


@dataclass(frozen=True)
class Survivors(_Message):
    """Server to server: the clients whose share arrived intact, with the weight each declared."""

    TYPE: ClassVar[MsgType] = MsgType.SURVIVORS
    LAYOUT: ClassVar = (("ids", "ints"), ("weights", "floats"))
    ids: tuple[int, ...]
    weights: tuple[float, ...]


@dataclass(frozen=True)
class Openings(_Message):
    """Server to server: this server's share of one column block of a masked matrix ``E = X - A``.

    ``tags`` is ``(triple tag, block index)``; ``stack`` is ``(1, n, block columns)``. Wire
    version 2 streams each triple's ``E`` block by block (version 1 sent it whole).
    """

    TYPE: ClassVar[MsgType] = MsgType.OPENINGS
    LAYOUT: ClassVar = (("tags", "ints"), ("stack", "array"))
    tags: tuple[int, ...]
    stack: np.ndarray


@dataclass(frozen=True)
class Scalars(_Message):
    """Server to server: this server's shares of the scalars being opened (``phase`` says which)."""

    TYPE: ClassVar[MsgType] = MsgType.SCALARS
    LAYOUT: ClassVar = (("phase", "u32"), ("values", "array"))
    phase: int
    values: np.ndarray


@dataclass(frozen=True)
class AggregateShare(_Message):
    """Server to server: this server's share of the aggregate (noise share included)."""

    TYPE: ClassVar[MsgType] = MsgType.AGGREGATE
    LAYOUT: ClassVar = (("values", "array"),)
    values: np.ndarray


@dataclass(frozen=True)
class Triples(_Message):
    """Dealer to one server: seeds of its mask shares and of its product shares, and explicit corrections.

    ``tags`` name the triples (a truncation ``t`` for a norm triple, ``GRAM_TAG`` for the
    Gram triple); ``ids`` the clients (rows) they cover. S0 gets two seeds per triple
    and no corrections; S1 one seed per triple and the product corrections, flattened.
    """

    TYPE: ClassVar[MsgType] = MsgType.TRIPLES
    LAYOUT: ClassVar = (("tags", "ints"), ("ids", "ints"), ("d", "u32"), ("seeds", "bytes"), ("corrections", "array"))
    tags: tuple[int, ...]
    ids: tuple[int, ...]
    d: int
    seeds: bytes
    corrections: np.ndarray


_TYPES = {cls.TYPE: cls for cls in (ClientSeed, ClientVector, Survivors, Openings, Scalars, AggregateShare, Triples)}
M = TypeVar("M", bound=_Message)


def _ad(header: bytes) -> bytes:
    return b"flsec-2s/" + header


def _body_parts(msg: _Message) -> list:
    parts: list = []
    for name, kind in msg.LAYOUT:
        part = _put(kind, getattr(msg, name))
        parts.extend(part if isinstance(part, list) else [part])
    return parts


def seal(msg: _Message, key: bytes, *, round_id: int, sender: int, receiver: int, seq: int) -> bytearray:
    """The frame of ``msg`` under ``key`` (see the module docstring).

    The body's parts (a ring matrix is a view of its array) are encrypted straight into
    the one frame buffer with a streaming AES-GCM encryptor: no copy of the body is made.
    """
    parts = _body_parts(msg)
    blen = sum(memoryview(p).nbytes for p in parts)
    header = _HEADER.pack(MAGIC, WIRE_VERSION, int(msg.TYPE), round_id, sender, receiver, seq, blen)
    nonce = os.urandom(_NONCE)
    frame = bytearray(len(header) + _NONCE_AND_TAG + blen)
    view = memoryview(frame)
    view[: len(header)] = header
    view[len(header) : len(header) + _NONCE] = nonce
    enc = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
    enc.authenticate_additional_data(_ad(header))
    pos = len(header) + _NONCE
    for part in parts:
        size = memoryview(part).nbytes
        if size:  # the slice runs 15 bytes past the part (update_into's requirement); the tag follows
            written = enc.update_into(part, view[pos : pos + size + 15])
            assert written == size
            pos += size
    enc.finalize()
    view[pos:] = enc.tag
    return frame


def unseal(data: bytes | bytearray, key: bytes, expect: type[M], *, round_id: int, sender: int, receiver: int,
           seq: int, into: np.ndarray | None = None) -> M:
    """Check and open a frame: the expected type, round, ids and position; then authenticate and parse.

    ``into``: a ``uint8`` buffer the body is decrypted into when it is large enough (the
    parsed arrays are views of it, valid until the buffer is reused); a fresh one otherwise.
    A receiver that opens ``n x d`` matrices every step reuses one buffer instead of asking
    the kernel for fresh pages each time.
    """
    what = f"{expect.__name__} from {sender}"
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) < _HEADER.size + _NONCE_AND_TAG:
        raise WireFormatError(f"{what}: frame too short ({len(data) if hasattr(data, '__len__') else '?'} bytes)")
    view = memoryview(data)
    magic, version, mtype, rnd, snd, rcv, sq, blen = _HEADER.unpack_from(view)
    if magic != MAGIC or version != WIRE_VERSION:
        raise WireFormatError(f"{what}: bad magic {magic!r} or version {version} (expected {WIRE_VERSION})")
    if mtype != expect.TYPE:
        got = _TYPES[MsgType(mtype)].__name__ if mtype in _TYPES else f"type {mtype}"
        raise MessageRejectedError(f"{what}: got {got}")
    if rnd != round_id:
        raise MessageRejectedError(f"{what}: frame for round {rnd}, expected round {round_id}")
    if (snd, rcv, sq) != (sender, receiver, seq):
        raise MessageRejectedError(f"{what}: frame from {snd} to {rcv} at position {sq}, "
                                   f"expected {sender} to {receiver} at {seq} (replayed or redirected)")
    if len(view) != _HEADER.size + _NONCE_AND_TAG + blen:
        raise WireFormatError(f"{what}: frame of {len(view)} bytes does not match its body length {blen}")
    if into is not None and into.dtype == np.uint8 and into.ndim == 1 and into.size >= blen:
        body = memoryview(into)[:blen]
    else:
        body = memoryview(np.empty(blen, dtype=np.uint8))  # no zero fill: decryption writes every byte
    start = _HEADER.size + _NONCE
    nonce, ad, aead = view[_HEADER.size : start], _ad(bytes(view[: _HEADER.size])), AESGCM(key)
    try:
        if hasattr(aead, "decrypt_into"):
            aead.decrypt_into(nonce, view[start:], ad, body)
        else:
            body[:] = aead.decrypt(bytes(nonce), bytes(view[start:]), ad)  # cryptography < 45
    except InvalidTag:
        raise MessageRejectedError(f"{what}: frame failed authentication") from None
    return expect.parse(body)  # type: ignore[return-value]
