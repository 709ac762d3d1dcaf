"""Typed HE aggregation messages in the SecAgg wire format.

Same layout, header codec, field reader and signature rules as
:mod:`secure_agg.messages` (the roles, runner and benchmark treat both families
alike); only the magic differs (``b"HE"``), so an HE message can never be decoded
as a SecAgg message or the reverse::

    header  magic b"HE" | version u8 | type u8 | round_id u64 | sender u32 |
            receiver u32 | body_len u32                          (24 bytes, little endian)
    body    type-specific, length-prefixed fields                (body_len bytes)
    auth    auth_len u8 | auth                                   (0 or 64 bytes, Ed25519)

Messages: :class:`PublicContext` (key holder -> server: the context without secret
key), :class:`EncryptedInput` (client -> server: the packed update as
ciphertexts), :class:`EncryptedAggregate` (server -> clients: the ciphertext sum
and who is in it). Every ciphertext-carrying message names the key (``key_id``)
and the declared vector length; :func:`decode_he_message` raises
:class:`~secure_agg.errors.WireFormatError` on anything that is not exactly one
well-formed message.

Examples
--------
>>> m = EncryptedInput(round_id=1, sender=4, receiver=0, scheme="bfv", key_id=bytes(32),
...                    n_values=3, ciphertexts=(b"abc",))
>>> decode_he_message(m.to_bytes()) == m
True
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from secure_agg.errors import WireFormatError
from secure_agg.messages import _HEADER, SIG_BYTES, Message, _check_distinct, _Reader, _u32

__all__ = [
    "BROADCAST_ID",
    "HE_MAGIC",
    "KEY_HOLDER_ID",
    "EncryptedAggregate",
    "EncryptedInput",
    "HEMessage",
    "HEMsgType",
    "HEStage",
    "PublicContext",
    "decode_he_message",
]

HE_MAGIC = b"HE"
WIRE_VERSION = 1
"""Version of the HE wire format (independent of the SecAgg format's version)."""
KEY_HOLDER_ID = 2**32 - 1
"""Sender id of the key holder (id 0 is the server, as in SecAgg)."""
BROADCAST_ID = 2**32 - 2
"""Receiver id of a server message addressed to every contributing client."""
MAX_CIPHERTEXT_BYTES = 1 << 24
MAX_CONTEXT_BYTES = 1 << 26
_SCHEMES = ("bfv", "ckks")


class HEStage(IntEnum):
    """The stages of one HE aggregation round."""

    SETUP = 0  # key holder -> server: public context
    ENCRYPTED_INPUT = 1  # client -> server: ciphertexts of the packed update
    AGGREGATE = 2  # server -> clients: ciphertext sum


class HEMsgType(IntEnum):
    """Wire type codes (odd: towards the server, even: from the server)."""

    PUBLIC_CONTEXT = 1
    ENCRYPTED_INPUT = 3
    ENCRYPTED_AGGREGATE = 4


_REGISTRY: dict[int, type[HEMessage]] = {}


def _register(cls: type[HEMessage]) -> type[HEMessage]:
    _REGISTRY[int(cls.TYPE)] = cls
    return cls


def _scheme_byte(scheme: str) -> bytes:
    return bytes([_SCHEMES.index(scheme)])


def _read_scheme(r: _Reader) -> str:
    b = r.u8()
    if b >= len(_SCHEMES):
        raise WireFormatError(f"{r.what}: unknown scheme code {b}")
    return _SCHEMES[b]


def _check_common(msg: HEMessage, scheme: str, kid: bytes) -> None:
    name = type(msg).__name__
    if scheme not in _SCHEMES:
        raise WireFormatError(f"{name}: scheme must be one of {_SCHEMES}, got {scheme!r}")
    if len(kid) != 32:
        raise WireFormatError(f"{name}: key_id must be 32 bytes, got {len(kid)}")


@dataclass(frozen=True, kw_only=True)
class HEMessage(Message):
    """Common header of the HE messages (the fields and checks of :class:`secure_agg.messages.Message`)."""

    TYPE: ClassVar[HEMsgType]  # type: ignore[assignment]

    def to_bytes(self) -> bytes:
        """The wire encoding (see the module docstring)."""
        body = self._body()
        head = _HEADER.pack(HE_MAGIC, WIRE_VERSION, int(self.TYPE), self.round_id, self.sender, self.receiver,
                            len(body))
        return b"".join((head, body, bytes([len(self.auth)]), self.auth))

    @classmethod
    def from_bytes(cls, data: bytes) -> HEMessage:
        """Decode ``data``; raises :class:`WireFormatError` unless it is a ``cls`` message."""
        msg = decode_he_message(data)
        if cls is not HEMessage and not isinstance(msg, cls):
            raise WireFormatError(f"expected a {cls.__name__} message, got {type(msg).__name__}")
        return msg


def decode_he_message(data: bytes) -> HEMessage:
    """Decode one HE message of any type.

    Raises
    ------
    WireFormatError
        If ``data`` is not exactly one well-formed HE message (truncated, trailing
        bytes, bad magic/version/type, out-of-range lengths).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireFormatError(f"message must be bytes, got {type(data).__name__}")
    if len(data) < _HEADER.size:
        raise WireFormatError(f"message of {len(data)} bytes is shorter than the {_HEADER.size}-byte header")
    magic, version, mtype, round_id, sender, receiver, body_len = _HEADER.unpack_from(data, 0)
    if magic != HE_MAGIC:
        raise WireFormatError(f"bad magic {bytes(magic)!r}, expected {HE_MAGIC!r}")
    if version != WIRE_VERSION:
        raise WireFormatError(f"unsupported wire version {version}, expected {WIRE_VERSION}")
    if mtype not in _REGISTRY:
        raise WireFormatError(f"unknown HE message type {mtype}")
    cls = _REGISTRY[mtype]
    end = _HEADER.size + body_len
    if len(data) < end + 1:
        raise WireFormatError(f"{cls.__name__}: truncated (declared body {body_len}, got {len(data)})")
    auth_len = data[end]
    if auth_len not in (0, SIG_BYTES):
        raise WireFormatError(f"{cls.__name__}: bad auth length {auth_len}")
    if len(data) != end + 1 + auth_len:
        raise WireFormatError(f"{cls.__name__}: length {len(data)} does not match the declared {end + 1 + auth_len}")
    hdr = {"round_id": round_id, "sender": sender, "receiver": receiver, "auth": bytes(data[end + 1 :])}
    r = _Reader(memoryview(data)[_HEADER.size : end], cls.__name__)
    msg = cls._parse(r, hdr)
    r.end()
    return msg


def _cts_body(cts: tuple[bytes, ...]) -> list[bytes]:
    parts = [_u32(len(cts))]
    for ct in cts:
        parts += [_u32(len(ct)), ct]
    return parts


def _read_cts(r: _Reader) -> tuple[bytes, ...]:
    return tuple(r.blob(MAX_CIPHERTEXT_BYTES) for _ in range(r.count(4)))


def _check_cts(msg: HEMessage, cts: tuple[bytes, ...], n_values: int) -> None:
    name = type(msg).__name__
    if not cts or any(not isinstance(c, bytes) or not c or len(c) > MAX_CIPHERTEXT_BYTES for c in cts):
        raise WireFormatError(f"{name}: needs >= 1 non-empty ciphertexts of <= {MAX_CIPHERTEXT_BYTES} bytes")
    if not 1 <= n_values < 2**40 or len(cts) > n_values:
        raise WireFormatError(f"{name}: declared n_values={n_values} does not fit {len(cts)} ciphertexts")


@_register
@dataclass(frozen=True, kw_only=True)
class PublicContext(HEMessage):
    """Setup, key holder -> server: the TenSEAL context serialised without the secret key."""

    TYPE = HEMsgType.PUBLIC_CONTEXT
    scheme: str
    key_id: bytes
    context: bytes

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_common(self, self.scheme, self.key_id)
        if not self.context or len(self.context) > MAX_CONTEXT_BYTES:
            raise WireFormatError(f"PublicContext: context must be 1..{MAX_CONTEXT_BYTES} bytes")

    def _body(self) -> bytes:
        return b"".join((_scheme_byte(self.scheme), self.key_id, _u32(len(self.context)), self.context))

    @classmethod
    def _parse(cls, r: _Reader, hdr: dict) -> HEMessage:
        scheme = _read_scheme(r)
        kid = bytes(r.take(32))
        return cls(**hdr, scheme=scheme, key_id=kid, context=r.blob(MAX_CONTEXT_BYTES))


@_register
@dataclass(frozen=True, kw_only=True, eq=False)
class EncryptedInput(HEMessage):
    """Client -> server: ``ceil(n_values / slots)`` ciphertexts of the packed, weighted update."""

    TYPE = HEMsgType.ENCRYPTED_INPUT
    scheme: str
    key_id: bytes
    n_values: int
    ciphertexts: tuple[bytes, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_common(self, self.scheme, self.key_id)
        _check_cts(self, self.ciphertexts, self.n_values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EncryptedInput) and self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]

    def _body(self) -> bytes:
        head = [_scheme_byte(self.scheme), self.key_id, self.n_values.to_bytes(8, "little")]
        return b"".join(head + _cts_body(self.ciphertexts))

    @classmethod
    def _parse(cls, r: _Reader, hdr: dict) -> HEMessage:
        scheme = _read_scheme(r)
        kid = bytes(r.take(32))
        n_values = r.u64()
        return cls(**hdr, scheme=scheme, key_id=kid, n_values=n_values, ciphertexts=_read_cts(r))


@_register
@dataclass(frozen=True, kw_only=True, eq=False)
class EncryptedAggregate(HEMessage):
    """Server -> clients: the ciphertext sum over ``contributors`` (those whose input was accepted)."""

    TYPE = HEMsgType.ENCRYPTED_AGGREGATE
    scheme: str
    key_id: bytes
    n_values: int
    contributors: tuple[int, ...]
    ciphertexts: tuple[bytes, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_common(self, self.scheme, self.key_id)
        _check_cts(self, self.ciphertexts, self.n_values)
        _check_distinct(list(self.contributors), "EncryptedAggregate")
        if not self.contributors:
            raise WireFormatError("EncryptedAggregate: empty contributor list")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EncryptedAggregate) and self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]

    def _body(self) -> bytes:
        head = [_scheme_byte(self.scheme), self.key_id, self.n_values.to_bytes(8, "little"),
                _u32(len(self.contributors)), *(_u32(u) for u in self.contributors)]
        return b"".join(head + _cts_body(self.ciphertexts))

    @classmethod
    def _parse(cls, r: _Reader, hdr: dict) -> HEMessage:
        scheme = _read_scheme(r)
        kid = bytes(r.take(32))
        n_values = r.u64()
        contributors = tuple(r.u32() for _ in range(r.count(4)))
        return cls(**hdr, scheme=scheme, key_id=kid, n_values=n_values, contributors=contributors,
                   ciphertexts=_read_cts(r))
