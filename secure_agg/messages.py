"""Typed protocol messages with a versioned binary wire format.

One frozen dataclass per message of SecAgg (Bonawitz et al., CCS 2017, Fig. 4) /
SecAgg+ (Bell et al., CCS 2020). Every message encodes as::

    header  magic b"SA" | version u8 | type u8 | round_id u64 | sender u32 |
            receiver u32 | body_len u32                          (24 bytes, little endian)
    body    type-specific, length-prefixed fields                (body_len bytes)
    auth    auth_len u8 | auth                                   (0, 32 or 64 bytes)

``auth`` covers the same encoding with an empty ``auth``: the sender's Ed25519
signature (64 bytes; client messages in the actively-malicious setting) or an
HMAC-SHA256 tag under the channel key the client shares with the server (32 bytes;
every other message when channels are authenticated, the default). Id 0 is the
server. Version 2 added the 32-byte tag and ``MaskedInput.masked_with``; version 3
added ``AdvertiseKeys.model_digest`` and ``KeyEntry.model_digest`` (the model each
client received, bound into its signed key advertisement; see
:func:`secure_agg.client.model_digest`). :func:`decode_message` raises
:class:`~secure_agg.errors.WireFormatError` on anything that is not exactly one
well-formed message: truncation, trailing bytes, bad magic/type, out-of-range
lengths, duplicate ids in a list; a message of another version raises its
subclass :class:`WireVersionError`.

Examples
--------
>>> m = SurvivorList(round_id=3, sender=0, receiver=7, survivors=(1, 7, 9))
>>> decode_message(m.to_bytes()) == m
True
"""

from __future__ import annotations

import abc
import struct
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import ClassVar, NamedTuple

import numpy as np

from secure_agg.crypto import MAC_BYTES
from secure_agg.errors import WireFormatError
from secure_agg.prg import _le
from secure_agg.quantize import ring_dtype
from secure_agg.shamir import SHARE_BYTES

__all__ = [
    "AUTH_LENGTHS",
    "DIGEST_BYTES",
    "SERVER_ID",
    "WIRE_VERSION",
    "AdvertiseKeys",
    "ConsistencySignature",
    "KeyBroadcast",
    "KeyEntry",
    "MaskedInput",
    "Message",
    "MsgType",
    "ShareKeys",
    "ShareKind",
    "ShareRelay",
    "SignatureBroadcast",
    "Stage",
    "SurvivorList",
    "UnmaskShares",
    "WireVersionError",
    "decode_message",
    "peek_header",
    "signed_part",
    "with_auth",
]

MAGIC = b"SA"
WIRE_VERSION = 3
SERVER_ID = 0
PK_BYTES = 32
SIG_BYTES = 64
DIGEST_BYTES = 32
"""Length of a model digest (SHA-256); an empty digest means the round binds no model."""
AUTH_LENGTHS = (0, MAC_BYTES, SIG_BYTES)
"""Valid lengths of the ``auth`` trailer: none, an HMAC-SHA256 tag, an Ed25519 signature."""
_HEADER = struct.Struct("<2sBBQIII")
MAX_CIPHERTEXT = 4096


class WireVersionError(WireFormatError):
    """A message of another wire version (e.g. a version-2 message without the model digest).

    Examples
    --------
    >>> issubclass(WireVersionError, WireFormatError)
    True
    """


class Stage(IntEnum):
    """The protocol rounds of Bonawitz et al. (CCS 2017), numbered as in the paper."""

    ADVERTISE_KEYS = 0
    SHARE_KEYS = 1
    MASKED_INPUT = 2
    CONSISTENCY_CHECK = 3
    UNMASKING = 4


class MsgType(IntEnum):
    """Wire type codes (odd: client to server, even: server to client)."""

    ADVERTISE_KEYS = 1
    KEY_BROADCAST = 2
    SHARE_KEYS = 3
    SHARE_RELAY = 4
    MASKED_INPUT = 5
    SURVIVOR_LIST = 6
    CONSISTENCY_SIGNATURE = 7
    SIGNATURE_BROADCAST = 8
    UNMASK_SHARES = 9


class ShareKind(IntEnum):
    """Which secret a revealed share belongs to."""

    MASK_KEY = 0  # s_u^SK: reveals the pairwise masks of a dropped client
    SELF_MASK = 1  # b_u: reveals the self-mask of a surviving client


class KeyEntry(NamedTuple):
    """One advertised key pair: ``(id, c_pk, s_pk, signature, model_digest)``."""

    client_id: int
    c_pk: bytes
    s_pk: bytes
    signature: bytes
    model_digest: bytes = b""


class _Reader:
    def __init__(self, data: bytes | memoryview, what: str) -> None:
        self.mv = memoryview(data)
        self.pos = 0
        self.what = what

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.mv):
            raise WireFormatError(
                f"{self.what}: truncated body (need {n} bytes at offset {self.pos}, "
                f"have {len(self.mv) - self.pos})"
            )
        out = self.mv[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "little")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "little")

    def u64(self) -> int:
        return int.from_bytes(self.take(8), "little")

    def blob(self, max_len: int) -> bytes:
        n = self.u32()
        if n > max_len:
            raise WireFormatError(f"{self.what}: field of {n} bytes exceeds the maximum {max_len}")
        return bytes(self.take(n))

    def count(self, min_item: int) -> int:
        n = self.u32()
        if n * min_item > len(self.mv) - self.pos:
            raise WireFormatError(f"{self.what}: list of {n} items cannot fit in the body")
        return n

    def end(self) -> None:
        if self.pos != len(self.mv):
            raise WireFormatError(f"{self.what}: {len(self.mv) - self.pos} trailing bytes in body")


def _u32(v: int) -> bytes:
    return int(v).to_bytes(4, "little")


def _check_distinct(ids: list[int], what: str) -> None:
    if len(set(ids)) != len(ids):
        raise WireFormatError(f"{what}: duplicate ids in {ids}")


def _check_auth(auth: bytes, what: str) -> None:
    if len(auth) not in AUTH_LENGTHS:
        raise WireFormatError(f"{what}: auth must be one of {AUTH_LENGTHS} bytes, got {len(auth)}")


def _check_sig(sig: bytes, what: str) -> None:
    if len(sig) not in (0, SIG_BYTES):
        raise WireFormatError(f"{what}: signature must be 0 or {SIG_BYTES} bytes, got {len(sig)}")


def _check_digest(digest: bytes, what: str) -> None:
    if not isinstance(digest, bytes) or len(digest) not in (0, DIGEST_BYTES):
        got = len(digest) if isinstance(digest, bytes) else type(digest).__name__
        raise WireFormatError(f"{what}: model_digest must be 0 or {DIGEST_BYTES} bytes, got {got}")


@dataclass(frozen=True, kw_only=True)
class Message(abc.ABC):
    """Common header fields of every message; subclasses add the body."""

    TYPE: ClassVar[MsgType]

    round_id: int
    sender: int
    receiver: int
    auth: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.round_id < 2**64:
            raise WireFormatError(f"round_id must fit in 64 bits, got {self.round_id}")
        for name in ("sender", "receiver"):
            v = getattr(self, name)
            if not 0 <= v < 2**32:
                raise WireFormatError(f"{name} must fit in 32 bits, got {v}")
        _check_auth(self.auth, type(self).__name__)

    @abc.abstractmethod
    def _body(self) -> bytes:
        """The message's body bytes (after the header)."""

    @classmethod
    @abc.abstractmethod
    def _parse(cls, r: _Reader, hdr: dict) -> Message:
        """Read the body from ``r`` and build the message."""

    def to_bytes(self) -> bytes:
        """The wire encoding (see the module docstring)."""
        body = self._body()
        head = _HEADER.pack(
            MAGIC,
            WIRE_VERSION,
            int(self.TYPE),
            self.round_id,
            self.sender,
            self.receiver,
            len(body),
        )
        return b"".join((head, body, bytes([len(self.auth)]), self.auth))

    def signing_payload(self) -> bytes:
        """The bytes covered by ``auth``: this message encoded with an empty ``auth``."""
        return replace(self, auth=b"").to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Message:
        """Decode ``data``; raises :class:`WireFormatError` unless it is a ``cls`` message."""
        msg = decode_message(data)
        if cls is not Message and not isinstance(msg, cls):
            raise WireFormatError(f"expected a {cls.__name__} message, got {type(msg).__name__}")
        return msg


def signed_part(data: bytes | memoryview, auth_len: int) -> tuple[memoryview, bytes]:
    """The bytes ``auth`` covers, taken from a received encoding without re-encoding it.

    ``data`` with its ``auth_len``-byte trailer removed, as the two parts
    ``(header and body, b"\\x00")`` (the empty-auth encoding); no copy is made.

    Examples
    --------
    >>> m = SurvivorList(round_id=1, sender=0, receiver=2, survivors=(2,))
    >>> head, tail = signed_part(with_auth(m.to_bytes(), b"t" * 32), 32)
    >>> bytes(head) + tail == m.signing_payload()
    True
    """
    return memoryview(data)[: len(data) - 1 - auth_len], b"\x00"


def with_auth(unsigned: bytes, auth: bytes) -> bytes:
    """An encoding with an empty ``auth`` (:meth:`Message.to_bytes`) with ``auth`` put in."""
    _check_auth(auth, "with_auth")
    return b"".join((memoryview(unsigned)[:-1], bytes([len(auth)]), auth))


_REGISTRY: dict[int, type[Message]] = {}


def _register(cls: type[Message]) -> type[Message]:
    _REGISTRY[int(cls.TYPE)] = cls
    return cls


def peek_header(data: bytes) -> tuple[MsgType, int, int, int]:
    """``(type, round_id, sender, receiver)`` of an encoded message (header checks only).

    Examples
    --------
    >>> peek_header(SurvivorList(round_id=2, sender=0, receiver=5, survivors=()).to_bytes())
    (<MsgType.SURVIVOR_LIST: 6>, 2, 0, 5)
    """
    mtype, round_id, sender, receiver, _ = _unpack_header(data)
    return mtype, round_id, sender, receiver


def _unpack_header(data: bytes) -> tuple[MsgType, int, int, int, int]:
    if len(data) < _HEADER.size:
        raise WireFormatError(
            f"message of {len(data)} bytes is shorter than the {_HEADER.size}-byte header"
        )
    magic, version, mtype, round_id, sender, receiver, body_len = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise WireFormatError(f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != WIRE_VERSION:
        raise WireVersionError(
            f"unsupported wire version {version}, expected {WIRE_VERSION} (version 3 binds the "
            f"model digest into AdvertiseKeys; older peers must upgrade)"
        )
    if mtype not in _REGISTRY:
        raise WireFormatError(f"unknown message type {mtype}")
    return MsgType(mtype), round_id, sender, receiver, body_len


def decode_message(data: bytes) -> Message:
    """Decode one message of any type.

    Raises
    ------
    WireFormatError
        If ``data`` is not exactly one well-formed message.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireFormatError(f"message must be bytes, got {type(data).__name__}")
    mtype, round_id, sender, receiver, body_len = _unpack_header(data)
    cls = _REGISTRY[int(mtype)]
    end = _HEADER.size + body_len
    if len(data) < end + 1:
        raise WireFormatError(
            f"{cls.__name__}: truncated (declared body {body_len}, got {len(data)})"
        )
    auth_len = data[end]
    if auth_len not in AUTH_LENGTHS:
        raise WireFormatError(f"{cls.__name__}: bad auth length {auth_len}")
    if len(data) != end + 1 + auth_len:
        raise WireFormatError(
            f"{cls.__name__}: length {len(data)} does not match the declared {end + 1 + auth_len}"
        )
    hdr = {
        "round_id": round_id,
        "sender": sender,
        "receiver": receiver,
        "auth": bytes(data[end + 1 :]),
    }
    r = _Reader(memoryview(data)[_HEADER.size : end], cls.__name__)
    msg = cls._parse(r, hdr)
    r.end()
    return msg


# ----------------------------------------------------------------------------- client messages


@_register
@dataclass(frozen=True, kw_only=True)
class AdvertiseKeys(Message):
    """Round 0, client -> server: the public keys ``c_u^PK`` (encryption) and ``s_u^PK`` (masking).

    ``model_digest`` is ``H(round || model)``, the digest of the model the client
    received this round (:func:`secure_agg.client.model_digest`; empty when the round
    binds no model). ``signature`` is ``SIG(d_u^SK, round || u || c^PK || s^PK || digest)``
    in the active setting (:func:`secure_agg.client.advertise_payload`).
    """

    TYPE = MsgType.ADVERTISE_KEYS
    c_pk: bytes
    s_pk: bytes
    signature: bytes = b""
    model_digest: bytes = b""

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.c_pk) != PK_BYTES or len(self.s_pk) != PK_BYTES:
            raise WireFormatError(f"public keys must be {PK_BYTES} bytes")
        _check_sig(self.signature, "AdvertiseKeys")
        _check_digest(self.model_digest, "AdvertiseKeys")

    def _body(self) -> bytes:
        return b"".join((self.c_pk, self.s_pk, bytes([len(self.model_digest)]), self.model_digest,
                         bytes([len(self.signature)]), self.signature))

    @classmethod
    def _parse(cls, r: _Reader, hdr: dict) -> Message:
        c_pk, s_pk = bytes(r.take(PK_BYTES)), bytes(r.take(PK_BYTES))
        digest = bytes(r.take(r.u8()))
        sig = bytes(r.take(r.u8()))
        return cls(**hdr, c_pk=c_pk, s_pk=s_pk, signature=sig, model_digest=digest)


@_register
@dataclass(frozen=True, kw_only=True)
class ShareKeys(Message):
    """Round 1, client -> server: encrypted shares for each neighbour, and a commitment.

    ``ciphertexts`` holds ``(receiver v, AES-GCM(u || v || share of s_u^SK || share of b_u))``.
    ``b_commitment`` is ``SHA-256(round || u || b_u)``; the server checks the
    reconstructed ``b_u`` against it, so a corrupt share aborts instead of
    producing a wrong sum.
    """

    TYPE = MsgType.SHARE_KEYS
    b_commitment: bytes
    ciphertexts: tuple[tuple[int, bytes], ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.b_commitment) != 32:
            raise WireFormatError("b_commitment must be 32 bytes")
        _check_distinct([v for v, _ in self.ciphertexts], "ShareKeys")

    def _body(self) -> bytes:
        parts = [self.b_commitment, _u32(len(self.ciphertexts))]
        for v, ct in self.ciphertexts:
            parts += [_u32(v), _u32(len(ct)), ct]
        return b"".join(parts)

    @classmethod
    def _parse(cls, r: _Reader, hdr: dict) -> Message:
        commit = bytes(r.take(32))
        cts = tuple((r.u32(), r.blob(MAX_CIPHERTEXT)) for _ in range(r.count(8)))
        return cls(**hdr, b_commitment=commit, ciphertexts=cts)


@_register
@dataclass(frozen=True, kw_only=True, eq=False)
class MaskedInput(Message):
    """Round 2, client -> server: ``y_u = x_u + PRG(b_u) + sum_v +-PRG(s_{u,v})`` mod ``2^b``.

    ``masked_with`` lists the peers ``v`` whose pairwise masks are in ``y_u``: the
    senders of the shares the client received (its view of ``U2``). It travels
    under the message's MAC or signature, so the server unmasks with exactly the
    pairs the client used, or refuses the input (see :class:`~secure_agg.server.SecAggServer`).
    """

    TYPE = MsgType.MASKED_INPUT
    ring_bits: int
    y: np.ndarray
    masked_with: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_distinct(list(self.masked_with), "MaskedInput.masked_with")
        try:
            dt = ring_dtype(self.ring_bits)
        except ValueError as e:
            raise WireFormatError(f"MaskedInput: {e}") from None
        if not isinstance(self.y, np.ndarray) or self.y.ndim != 1 or self.y.dtype != dt:
            raise WireFormatError(
                f"MaskedInput.y must be a 1-d {dt} array for ring_bits={self.ring_bits}"
            )
        if self.ring_bits < 8 * dt.itemsize and self.y.size and int(self.y.max()) >> self.ring_bits:
            raise WireFormatError(
                f"MaskedInput.y has words outside the ring of {self.ring_bits} bits"
            )

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, MaskedInput)
            and self.signing_payload() == other.signing_payload()
            and self.auth == other.auth
        )

    __hash__ = None  # type: ignore[assignment]

    def _body(self) -> bytes:
        peers = _u32(len(self.masked_with)) + b"".join(_u32(v) for v in self.masked_with)
        head = bytes([self.ring_bits]) + peers + self.y.size.to_bytes(8, "little")
        return head + self.y.astype(_le(self.y.dtype), copy=False).tobytes()

    @classmethod
    def _parse(cls, r: _Reader, hdr: dict) -> Message:
        bits = r.u8()
        peers = tuple(r.u32() for _ in range(r.count(4)))
        d = r.u64()
        try:
            dt = ring_dtype(bits)
        except ValueError:
            raise WireFormatError(f"MaskedInput: invalid ring_bits {bits}") from None
        if d > (len(r.mv) - r.pos) // dt.itemsize:
            raise WireFormatError(f"MaskedInput: truncated vector (d={d})")
        raw = r.take(d * dt.itemsize)
        y = np.frombuffer(raw, dtype=_le(dt)).astype(dt, copy=False)
        return cls(**hdr, ring_bits=bits, y=y, masked_with=peers)


@_register
@dataclass(frozen=True, kw_only=True)
class ConsistencySignature(Message):
    """Round 3, client -> server: ``SIG(d_u^SK, round || U3)`` (active setting only)."""

    TYPE = MsgType.CONSISTENCY_SIGNATURE
    signature: bytes

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.signature) != SIG_BYTES:
            raise WireFormatError(f"ConsistencySignature needs a {SIG_BYTES}-byte signature")

    def _body(self) -> bytes:
        return self.signature

    @classmethod
    def _parse(cls, r: _Reader, hdr: dict) -> Message:
        return cls(**hdr, signature=bytes(r.take(SIG_BYTES)))


@_register
@dataclass(frozen=True, kw_only=True)
class UnmaskShares(Message):
    """Round 4, client -> server: ``(owner, kind, share)`` triples.

    Shares of ``b_v`` for surviving neighbours, of ``s_v^SK`` for dropped ones.
    """

    TYPE = MsgType.UNMASK_SHARES
    shares: tuple[tuple[int, ShareKind, bytes], ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_distinct([o for o, _, _ in self.shares], "UnmaskShares")
        for _, kind, sh in self.shares:
            if kind not in (ShareKind.MASK_KEY, ShareKind.SELF_MASK) or len(sh) != SHARE_BYTES:
                raise WireFormatError(f"UnmaskShares: bad share kind {kind} or length {len(sh)}")

    def _body(self) -> bytes:
        parts = [_u32(len(self.shares))]
        for owner, kind, sh in self.shares:
            parts += [_u32(owner), bytes([int(kind)]), sh]
        return b"".join(parts)

    @classmethod
    def _parse(cls, r: _Reader, hdr: dict) -> Message:
        out = []
        for _ in range(r.count(5 + SHARE_BYTES)):
            owner, kind = r.u32(), r.u8()
            if kind > 1:
                raise WireFormatError(f"UnmaskShares: unknown share kind {kind}")
            out.append((owner, ShareKind(kind), bytes(r.take(SHARE_BYTES))))
        return cls(**hdr, shares=tuple(out))


# ----------------------------------------------------------------------------- server messages


@_register
@dataclass(frozen=True, kw_only=True)
class KeyBroadcast(Message):
    """Round 0 answer, server -> client: the advertised keys (and model digests) of the receiver's neighbours."""

    TYPE = MsgType.KEY_BROADCAST
    entries: tuple[KeyEntry, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_distinct([e.client_id for e in self.entries], "KeyBroadcast")
        for e in self.entries:
            if len(e.c_pk) != PK_BYTES or len(e.s_pk) != PK_BYTES:
                raise WireFormatError("KeyBroadcast: public keys must be 32 bytes")
            _check_sig(e.signature, "KeyBroadcast")
            _check_digest(e.model_digest, "KeyBroadcast")

    def _body(self) -> bytes:
        parts = [_u32(len(self.entries))]
        for e in self.entries:
            parts += [_u32(e.client_id), e.c_pk, e.s_pk, bytes([len(e.model_digest)]), e.model_digest,
                      bytes([len(e.signature)]), e.signature]
        return b"".join(parts)

    @classmethod
    def _parse(cls, r: _Reader, hdr: dict) -> Message:
        out = []
        for _ in range(r.count(4 + 2 * PK_BYTES + 2)):
            cid = r.u32()
            c_pk, s_pk = bytes(r.take(PK_BYTES)), bytes(r.take(PK_BYTES))
            digest = bytes(r.take(r.u8()))
            out.append(KeyEntry(cid, c_pk, s_pk, bytes(r.take(r.u8())), digest))
        return cls(**hdr, entries=tuple(out))


@_register
@dataclass(frozen=True, kw_only=True)
class ShareRelay(Message):
    """Round 1 answer, server -> client: ``(sender u, ciphertext e_{u,v})`` for receiver ``v``."""

    TYPE = MsgType.SHARE_RELAY
    ciphertexts: tuple[tuple[int, bytes], ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_distinct([u for u, _ in self.ciphertexts], "ShareRelay")

    def _body(self) -> bytes:
        parts = [_u32(len(self.ciphertexts))]
        for u, ct in self.ciphertexts:
            parts += [_u32(u), _u32(len(ct)), ct]
        return b"".join(parts)

    @classmethod
    def _parse(cls, r: _Reader, hdr: dict) -> Message:
        cts = tuple((r.u32(), r.blob(MAX_CIPHERTEXT)) for _ in range(r.count(8)))
        return cls(**hdr, ciphertexts=cts)


@_register
@dataclass(frozen=True, kw_only=True)
class SurvivorList(Message):
    """Round 2 answer, server -> client: ``U3``, the clients whose masked input arrived."""

    TYPE = MsgType.SURVIVOR_LIST
    survivors: tuple[int, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_distinct(list(self.survivors), "SurvivorList")

    def _body(self) -> bytes:
        return _u32(len(self.survivors)) + b"".join(_u32(u) for u in self.survivors)

    @classmethod
    def _parse(cls, r: _Reader, hdr: dict) -> Message:
        return cls(**hdr, survivors=tuple(r.u32() for _ in range(r.count(4))))


@_register
@dataclass(frozen=True, kw_only=True)
class SignatureBroadcast(Message):
    """Round 3 answer, server -> client: neighbours' consistency signatures ``(v, sigma'_v)``."""

    TYPE = MsgType.SIGNATURE_BROADCAST
    signatures: tuple[tuple[int, bytes], ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_distinct([v for v, _ in self.signatures], "SignatureBroadcast")
        for _, s in self.signatures:
            if len(s) != SIG_BYTES:
                raise WireFormatError("SignatureBroadcast: signatures must be 64 bytes")

    def _body(self) -> bytes:
        parts = [_u32(len(self.signatures))]
        for v, s in self.signatures:
            parts += [_u32(v), s]
        return b"".join(parts)

    @classmethod
    def _parse(cls, r: _Reader, hdr: dict) -> Message:
        sigs = tuple((r.u32(), bytes(r.take(SIG_BYTES))) for _ in range(r.count(4 + SIG_BYTES)))
        return cls(**hdr, signatures=sigs)
