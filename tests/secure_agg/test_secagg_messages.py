"""Wire format: round trips of every message type, truncation and garbage are rejected."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_agg.errors import WireFormatError
from secure_agg.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    KeyBroadcast,
    KeyEntry,
    MaskedInput,
    Message,
    ShareKeys,
    ShareKind,
    ShareRelay,
    SignatureBroadcast,
    SurvivorList,
    UnmaskShares,
    decode_message,
    peek_header,
)
from secure_agg.shamir import SHARE_BYTES

H = {"round_id": 2**40 + 3, "sender": 5, "receiver": 0}
D = {"round_id": 9, "sender": 0, "receiver": 5}
SIG = bytes(range(64))


def _examples() -> list[Message]:
    return [
        AdvertiseKeys(**H, c_pk=b"c" * 32, s_pk=b"s" * 32),
        AdvertiseKeys(**H, c_pk=b"c" * 32, s_pk=b"s" * 32, signature=SIG, auth=SIG),
        ShareKeys(**H, b_commitment=b"h" * 32, ciphertexts=((1, b"abc"), (7, b"x" * 100))),
        MaskedInput(**H, ring_bits=32, y=np.arange(10, dtype=np.uint32)),
        MaskedInput(**H, ring_bits=12, y=np.array([4095, 0], dtype=np.uint16)),
        MaskedInput(**H, ring_bits=64, y=np.array([2**64 - 1], dtype=np.uint64)),
        ConsistencySignature(**H, signature=SIG),
        UnmaskShares(
            **H,
            shares=(
                (1, ShareKind.SELF_MASK, b"a" * SHARE_BYTES),
                (2, ShareKind.MASK_KEY, b"b" * SHARE_BYTES),
            ),
        ),
        KeyBroadcast(
            **D,
            entries=(
                KeyEntry(1, b"c" * 32, b"s" * 32, b""),
                KeyEntry(3, b"d" * 32, b"t" * 32, SIG),
            ),
        ),
        ShareRelay(**D, ciphertexts=((2, b"ct"),)),
        SurvivorList(**D, survivors=(1, 2, 2**32 - 1)),
        SignatureBroadcast(**D, signatures=((1, SIG), (4, SIG))),
    ]


@pytest.mark.parametrize("msg", _examples(), ids=lambda m: type(m).__name__)
def test_round_trip_and_every_truncation_fails(msg: Message) -> None:
    data = msg.to_bytes()
    back = decode_message(data)
    assert back == msg and type(back) is type(msg)
    assert type(msg).from_bytes(data) == msg
    assert peek_header(data)[1:] == (msg.round_id, msg.sender, msg.receiver)
    for cut in range(len(data)):
        with pytest.raises(WireFormatError):
            decode_message(data[:cut])
    with pytest.raises(WireFormatError):
        decode_message(data + b"\0")


def test_from_bytes_checks_the_type() -> None:
    data = SurvivorList(**D, survivors=(1,)).to_bytes()
    with pytest.raises(WireFormatError, match="expected a MaskedInput"):
        MaskedInput.from_bytes(data)


@settings(max_examples=50, deadline=None)
@given(
    round_id=st.integers(0, 2**64 - 1),
    ids=st.lists(st.integers(0, 2**32 - 1), unique=True, max_size=20),
    y=st.lists(st.integers(0, 2**16 - 1), max_size=50),
)
def test_round_trip_property(round_id: int, ids: list[int], y: list[int]) -> None:
    m1 = SurvivorList(round_id=round_id, sender=0, receiver=1, survivors=tuple(ids))
    assert decode_message(m1.to_bytes()) == m1
    m2 = MaskedInput(
        round_id=round_id, sender=1, receiver=0, ring_bits=16, y=np.array(y, np.uint16)
    )
    assert decode_message(m2.to_bytes()) == m2


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_raises_wire_format_error_only(data: bytes) -> None:
    try:
        decode_message(data)
    except WireFormatError:
        pass


@settings(max_examples=200, deadline=None)
@given(pos=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_bit_flips_never_crash(pos: int, bit: int) -> None:
    data = bytearray(_examples()[7].to_bytes())
    data[pos % len(data)] ^= 1 << bit
    try:
        decode_message(bytes(data))
    except WireFormatError:
        pass


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: AdvertiseKeys(**H, c_pk=b"c", s_pk=b"s" * 32), "32 bytes"),
        (lambda: SurvivorList(**D, survivors=(1, 1)), "duplicate"),
        (lambda: MaskedInput(**H, ring_bits=12, y=np.array([4096], np.uint16)), "outside the ring"),
        (lambda: MaskedInput(**H, ring_bits=32, y=np.zeros(2, np.uint16)), "uint32"),
        (lambda: SurvivorList(round_id=-1, sender=0, receiver=1, survivors=()), "64 bits"),
        (lambda: ConsistencySignature(**H, signature=b"short"), "64-byte"),
    ],
)
def test_invalid_fields_raise(build, match: str) -> None:
    with pytest.raises(WireFormatError, match=match):
        build()


def test_unknown_type_and_bad_auth_length() -> None:
    data = bytearray(SurvivorList(**D, survivors=()).to_bytes())
    data[3] = 77
    with pytest.raises(WireFormatError, match="unknown message type 77"):
        decode_message(bytes(data))
    data = bytearray(SurvivorList(**D, survivors=()).to_bytes())
    data[-1] = 5
    with pytest.raises(WireFormatError, match="bad auth length 5"):
        decode_message(bytes(data))
