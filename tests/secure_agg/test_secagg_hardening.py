"""Issue 13 (hardening): each reported failure reproduced, with the required outcome."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from secure_agg import crypto
from secure_agg.aggregator import SecAggAggregator, SecAggPlusAggregator
from secure_agg.errors import ProtocolAbortError, SecAggConfigError
from secure_agg.graph import CommunicationGraph
from secure_agg.messages import Stage, decode_message
from secure_agg.params import SecAggParams
from secure_agg.runner import Direction, run_secagg


def _inputs(n: int, d: int, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {u: rng.integers(0, 2**32, d, dtype=np.uint64).astype(np.uint32) for u in range(1, n + 1)}


def _sum(xs, ids) -> np.ndarray:
    acc = np.zeros_like(next(iter(xs.values())))
    for u in ids:
        acc = acc + xs[u]
    return acc


KEYS = {u: bytes([u]) * 32 for u in range(1, 9)}


def _retag(msg, key: bytes) -> bytes:
    """What a lying server sends: its forged message with a valid channel MAC."""
    k = crypto.channel_mac_key(key, round_id=msg.round_id, client_id=msg.receiver, upstream=False)
    return dataclasses.replace(msg, auth=crypto.mac(k, msg.signing_payload())).to_bytes()


def _drop_relay_entry(victim: int, missing: int, *, lying_server: bool):
    def hook(stage: Stage, direction: str, u: int, data: bytes) -> list[bytes]:
        if stage is Stage.SHARE_KEYS and direction == Direction.DOWN and u == victim:
            msg = decode_message(data)
            cts = tuple((v, ct) for v, ct in msg.ciphertexts if v != missing)
            forged = dataclasses.replace(msg, ciphertexts=cts)
            return [_retag(forged, KEYS[u]) if lying_server else forged.to_bytes()]
        return [data]

    return hook


@pytest.mark.parametrize("active", [False, True])
@pytest.mark.parametrize(
    ("authenticated", "lying_server", "where", "reason"),
    [
        (True, False, "client", "invalid MAC on ShareRelay"),  # the network cut it: MAC fails
        (True, True, "server", "inconsistent view of U2"),  # the server cut it: view check
        (False, False, "server", "inconsistent view of U2"),  # no MACs: view check
    ],
)
def test_relay_with_a_withheld_entry_never_gives_a_wrong_sum(
    active: bool, authenticated: bool, lying_server: bool, where: str, reason: str
) -> None:
    """Client 2 never gets client 4's share: it masks without 4, and that input never counts."""
    xs = _inputs(5, 4)
    params = SecAggParams(round_id=1, t=3, d=4, active=active, authenticated=authenticated)
    res = run_secagg(
        xs,
        params=params,
        graph=CommunicationGraph.complete(xs),
        intercept=_drop_relay_entry(2, 4, lying_server=lying_server),
        channel_keys={u: KEYS[u] for u in xs} if authenticated else None,
    )
    assert reason in (res.client_aborts if where == "client" else res.rejected)[2]
    assert res.survivors == (1, 3, 4, 5)
    assert np.array_equal(res.sum, _sum(xs, res.survivors))


def test_flipped_byte_in_a_passive_masked_input_is_detected() -> None:
    def flip(stage: Stage, direction: str, u: int, data: bytes) -> list[bytes]:
        if stage is Stage.MASKED_INPUT and direction == Direction.UP and u == 3:
            b = bytearray(data)
            b[40] ^= 1
            return [bytes(b)]
        return [data]

    xs = _inputs(5, 4)
    res = run_secagg(
        xs, params=SecAggParams(round_id=1, t=3, d=4), graph=CommunicationGraph.complete(xs),
        intercept=flip,
    )
    assert 3 not in res.survivors
    assert np.array_equal(res.sum, _sum(xs, res.survivors))


def test_threshold_below_the_secure_bound_is_refused() -> None:
    xs = _inputs(6, 2)
    with pytest.raises(SecAggConfigError, match=r"t > \(k \+ 1\) / 2"):
        run_secagg(xs, params=SecAggParams(round_id=1, t=3, d=2), graph=CommunicationGraph.complete(xs))


def test_malformed_unmask_share_is_a_protocol_abort_or_rejection() -> None:
    def bad_limb(stage: Stage, direction: str, u: int, data: bytes) -> list[bytes]:
        if stage is Stage.UNMASKING and direction == Direction.UP and u == 1:
            msg = decode_message(data)
            shares = tuple((o, k, b"\xff\xff\xff\xff" + s[4:]) for o, k, s in msg.shares)
            return [dataclasses.replace(msg, shares=shares).to_bytes()]
        return [data]

    xs = _inputs(5, 4)
    try:
        res = run_secagg(
            xs, params=SecAggParams(round_id=1, t=3, d=4), graph=CommunicationGraph.complete(xs),
            intercept=bad_limb,
        )
    except ProtocolAbortError:
        return
    assert np.array_equal(res.sum, _sum(xs, res.survivors))


def test_non_integer_weight_is_refused() -> None:
    agg = SecAggAggregator(clip=1.0, gamma=0.0, delta=0.0)
    with pytest.raises(SecAggConfigError, match=r"10000000\.5"):
        agg.aggregate(torch.zeros(3, 2), torch.tensor([1.0, 2.0, 10000000.5], dtype=torch.float64))


def test_dropout_given_by_stage_name() -> None:
    xs = _inputs(4, 2)
    res = run_secagg(
        xs, params=SecAggParams(round_id=1, t=3, d=2), graph=CommunicationGraph.complete(xs),
        dropouts={2: "MASKED_INPUT"},
    )
    assert res.survivors == (1, 3, 4)


def test_unknown_dropout_stage_names_the_value_and_the_valid_ones() -> None:
    xs = _inputs(4, 2)
    with pytest.raises(SecAggConfigError, match=r"'MASKED'.*MASKED_INPUT"):
        run_secagg(
            xs, params=SecAggParams(round_id=1, t=3, d=2), graph=CommunicationGraph.complete(xs),
            dropouts={2: "MASKED"},
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sigma": -1}, "sigma"),
        ({"eta": 0}, "eta"),
        ({"ring_bits": 70}, "ring_bits"),
        ({"gamma": 0.6, "delta": 0.5}, "gamma"),
    ],
)
@pytest.mark.parametrize("cls", [SecAggAggregator, SecAggPlusAggregator])
def test_aggregator_validates_at_construction(cls, kwargs, match) -> None:
    with pytest.raises(SecAggConfigError, match=match):
        cls(clip=1.0, **kwargs)


def test_numpy_scalars_are_accepted() -> None:
    agg = SecAggPlusAggregator(
        clip=np.float32(1.0), ring_bits=np.int64(32), gamma=np.float64(0.0), delta=np.float32(0.0),
        sigma=np.float32(40.0),
    )
    out = agg(torch.tensor([[0.5], [0.25]]))
    assert abs(out.item() - 0.375) < 1e-6
    p = SecAggParams(round_id=np.int64(0), t=np.int64(3), d=np.int32(4), ring_bits=np.int64(32))
    assert type(p.t) is int and p.t == 3


def _retag_up(msg, key: bytes) -> bytes:
    """What a malicious client sends on its own authenticated channel."""
    k = crypto.channel_mac_key(key, round_id=msg.round_id, client_id=msg.sender, upstream=True)
    return dataclasses.replace(msg, auth=crypto.mac(k, msg.signing_payload())).to_bytes()


def test_malicious_client_share_outside_the_field_rejects_only_that_client() -> None:
    def bad_limb(stage: Stage, direction: str, u: int, data: bytes) -> list[bytes]:
        if stage is Stage.UNMASKING and direction == Direction.UP and u == 1:
            msg = decode_message(data)
            shares = tuple((o, k, b"\xff\xff\xff\xff" + s[4:]) for o, k, s in msg.shares)
            return [_retag_up(dataclasses.replace(msg, shares=shares), KEYS[1])]
        return [data]

    xs = _inputs(5, 4)
    res = run_secagg(
        xs, params=SecAggParams(round_id=1, t=3, d=4), graph=CommunicationGraph.complete(xs),
        intercept=bad_limb, channel_keys={u: KEYS[u] for u in xs},
    )
    assert "outside GF(2^31 - 1)" in res.rejected[1]
    assert res.survivors == (1, 2, 3, 4, 5)  # its input is in the sum; its shares are not used
    assert np.array_equal(res.sum, _sum(xs, res.survivors))


def test_flipped_byte_in_an_advertised_key_is_detected() -> None:
    def flip(stage: Stage, direction: str, u: int, data: bytes) -> list[bytes]:
        if stage is Stage.ADVERTISE_KEYS and direction == Direction.UP and u == 2:
            b = bytearray(data)
            b[30] ^= 4  # inside c_pk
            return [bytes(b)]
        return [data]

    xs = _inputs(5, 4)
    res = run_secagg(
        xs, params=SecAggParams(round_id=1, t=3, d=4), graph=CommunicationGraph.complete(xs),
        intercept=flip,
    )
    assert "invalid MAC" in res.rejected[2]
    assert res.survivors == (1, 3, 4, 5)
    assert np.array_equal(res.sum, _sum(xs, res.survivors))


def test_insecure_threshold_needs_the_explicit_flag() -> None:
    xs = _inputs(6, 2)
    p = SecAggParams(round_id=1, t=3, d=2, allow_insecure_threshold=True)
    res = run_secagg(xs, params=p, graph=CommunicationGraph.complete(xs))
    assert np.array_equal(res.sum, _sum(xs, xs))


def test_client_refuses_more_share_holders_than_its_threshold_protects() -> None:
    """A server showing 5 neighbours to a client with t=3 gets no shares from it."""
    from secure_agg.client import SecAggClient
    from secure_agg.messages import KeyBroadcast, KeyEntry

    p = SecAggParams(round_id=1, t=3, d=2)
    c = SecAggClient(1, np.zeros(2, np.uint32), params=p, channel_key=KEYS[1])
    c.advertise_keys()
    entries = tuple(KeyEntry(v, bytes([v]) * 32, bytes([v + 100]) * 32, b"") for v in range(2, 7))
    msg = KeyBroadcast(round_id=1, sender=0, receiver=1, entries=entries)
    with pytest.raises(ProtocolAbortError, match="refusing to share with 5 neighbours"):
        c.handle(_retag(msg, KEYS[1]))


def test_missing_channel_keys_are_a_config_error() -> None:
    from secure_agg.client import SecAggClient
    from secure_agg.server import SecAggServer

    p = SecAggParams(round_id=1, t=2, d=2)
    with pytest.raises(SecAggConfigError, match="channel_key"):
        SecAggClient(1, np.zeros(2, np.uint32), params=p)
    with pytest.raises(SecAggConfigError, match=r"missing \[3\]"):
        SecAggServer(
            params=p, graph=CommunicationGraph.complete([1, 2, 3]), channel_keys={1: KEYS[1], 2: KEYS[2]}
        )


@pytest.mark.parametrize("field", ["s_pk", "c_pk"])
def test_low_order_public_key_rejects_its_sender(field: str) -> None:
    """A malicious client's unusable key is refused at once, not in the server's unmasking."""
    from secure_agg.messages import AdvertiseKeys

    def bad_key(stage: Stage, direction: str, u: int, data: bytes) -> list[bytes]:
        if stage is Stage.ADVERTISE_KEYS and direction == Direction.UP and u == 4:
            msg = AdvertiseKeys.from_bytes(data)
            return [_retag_up(dataclasses.replace(msg, **{field: bytes(32)}), KEYS[4])]
        return [data]

    xs = _inputs(5, 4)
    res = run_secagg(
        xs, params=SecAggParams(round_id=1, t=3, d=4), graph=CommunicationGraph.complete(xs),
        intercept=bad_key, channel_keys={u: KEYS[u] for u in xs},
    )
    assert f"invalid X25519 public key ({field} of client 4)" in res.rejected[4]
    assert np.array_equal(res.sum, _sum(xs, res.survivors)) and res.survivors == (1, 2, 3, 5)


def test_numpy_scalars_in_the_lower_layers() -> None:
    from secure_agg.graph import choose_k_t
    from secure_agg.he.params import select_params
    from secure_agg.quantize import FixedPointEncoder, ring_dtype

    assert ring_dtype(np.int64(20)) == np.uint32
    enc = FixedPointEncoder(clip=np.float32(1.0), ring_bits=np.int64(32), weight_bound=np.int64(3))
    assert enc.clip == 1.0 and type(enc.clip) is float
    g = CommunicationGraph.harary(range(1, 11), k=np.int64(4), rng=np.random.default_rng(0))
    assert g.k == 4
    assert choose_k_t(np.int64(100), gamma=0.05, delta=0.1) == choose_k_t(100, gamma=0.05, delta=0.1)
    p = select_params(d=np.int64(10), n=np.int32(3), clip=np.float32(1.0), weight_bound=np.int64(3),
                      precision_bits=np.int64(10), security_bits=np.int64(128))
    assert p.n_values == 11


def test_check_tolerance_fails_before_any_round() -> None:
    with pytest.raises(SecAggConfigError, match="at least 2 clients"):
        SecAggPlusAggregator(clip=1.0).check_tolerance(1)
    with pytest.raises(SecAggConfigError, match="no \\(k, t\\) meets"):
        SecAggPlusAggregator(clip=1.0, gamma=0.4, delta=0.4).check_tolerance(6)
    SecAggAggregator(clip=1.0, gamma=0.0, delta=0.0).check_tolerance(np.int64(3))
