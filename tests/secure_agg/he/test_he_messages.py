"""HE wire format: round trips, and every malformed byte string is rejected."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_agg.errors import WireFormatError
from secure_agg.he.messages import (
    BROADCAST_ID,
    KEY_HOLDER_ID,
    EncryptedAggregate,
    EncryptedInput,
    PublicContext,
    decode_he_message,
)
from secure_agg.messages import SurvivorList, decode_message

_MSGS = [
    PublicContext(round_id=7, sender=KEY_HOLDER_ID, receiver=0, scheme="ckks", key_id=b"k" * 32, context=b"ctx"),
    EncryptedInput(round_id=2**63, sender=5, receiver=0, scheme="bfv", key_id=b"a" * 32, n_values=9,
                   ciphertexts=(b"x" * 10, b"y")),
    EncryptedInput(round_id=1, sender=5, receiver=0, scheme="bfv", key_id=b"a" * 32, n_values=9,
                   ciphertexts=(b"x",), auth=b"s" * 64),
    EncryptedAggregate(round_id=3, sender=0, receiver=BROADCAST_ID, scheme="ckks", key_id=b"b" * 32, n_values=4,
                       contributors=(1, 4, 9), ciphertexts=(b"zz",)),
]


@pytest.mark.parametrize("msg", _MSGS, ids=lambda m: type(m).__name__)
def test_round_trip(msg) -> None:
    data = msg.to_bytes()
    assert decode_he_message(data) == msg
    assert type(msg).from_bytes(data) == msg
    for cut in (0, 1, 23, 24, len(data) - 1):
        with pytest.raises(WireFormatError):
            decode_he_message(data[:cut])
    with pytest.raises(WireFormatError, match="does not match"):
        decode_he_message(data + b"\0")


@settings(max_examples=60, deadline=None)
@given(i=st.integers(0, 10_000), cut=st.integers(1, 400))
def test_truncation_anywhere_is_rejected(i: int, cut: int) -> None:
    data = _MSGS[i % len(_MSGS)].to_bytes()
    with pytest.raises(WireFormatError):
        decode_he_message(data[: max(0, len(data) - cut)])


def test_families_do_not_mix() -> None:
    he = _MSGS[1].to_bytes()
    with pytest.raises(WireFormatError, match="magic"):
        decode_message(he)
    sa = SurvivorList(round_id=0, sender=0, receiver=1, survivors=(1,)).to_bytes()
    with pytest.raises(WireFormatError, match="magic"):
        decode_he_message(sa)
    with pytest.raises(WireFormatError, match="expected a EncryptedAggregate"):
        EncryptedAggregate.from_bytes(he)


def test_bad_fields_are_rejected() -> None:
    with pytest.raises(WireFormatError, match="key_id"):
        EncryptedInput(round_id=0, sender=1, receiver=0, scheme="bfv", key_id=b"short", n_values=1,
                       ciphertexts=(b"x",))
    with pytest.raises(WireFormatError, match="n_values"):
        EncryptedInput(round_id=0, sender=1, receiver=0, scheme="bfv", key_id=b"a" * 32, n_values=1,
                       ciphertexts=(b"x", b"y"))
    with pytest.raises(WireFormatError, match="duplicate"):
        EncryptedAggregate(round_id=0, sender=0, receiver=1, scheme="bfv", key_id=b"a" * 32, n_values=1,
                           contributors=(2, 2), ciphertexts=(b"x",))
    data = bytearray(_MSGS[1].to_bytes())
    data[24] = 9  # scheme code
    with pytest.raises(WireFormatError, match="scheme"):
        decode_he_message(bytes(data))
    data = bytearray(_MSGS[1].to_bytes())
    data[2] = 99  # version
    with pytest.raises(WireFormatError, match="version"):
        decode_he_message(bytes(data))
