"""SecAgg / SecAgg+ rounds: correctness under dropouts, aborts, privacy and bad messages."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from secure_agg import crypto
from secure_agg.client import SecAggClient
from secure_agg.errors import ProtocolAbortError
from secure_agg.graph import CommunicationGraph
from secure_agg.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    ShareKind,
    SignatureBroadcast,
    Stage,
    SurvivorList,
    decode_message,
)
from secure_agg.params import SecAggParams
from secure_agg.quantize import ring_dtype
from secure_agg.runner import Direction, run_secagg
from secure_agg.server import SecAggServer

STAGES = [
    Stage.ADVERTISE_KEYS,
    Stage.SHARE_KEYS,
    Stage.MASKED_INPUT,
    Stage.CONSISTENCY_CHECK,
    Stage.UNMASKING,
]


def _inputs(n: int, d: int, bits: int, seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    dt = ring_dtype(bits)
    return {u: rng.integers(0, 2**bits, d, dtype=np.uint64).astype(dt) for u in range(1, n + 1)}


def _plain_sum(xs: dict[int, np.ndarray], ids, bits: int) -> np.ndarray:
    acc = np.zeros_like(next(iter(xs.values())))
    for u in ids:
        acc = acc + xs[u]
    return acc & acc.dtype.type((1 << bits) - 1) if bits < 8 * acc.dtype.itemsize else acc


def _params(
    t: int,
    d: int,
    bits: int = 32,
    active: bool = False,
    round_id: int = 7,
    authenticated: bool = True,
) -> SecAggParams:
    return SecAggParams(
        round_id=round_id, t=t, d=d, ring_bits=bits, active=active, authenticated=authenticated
    )


# ---------------------------------------------------------------------------- correctness


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(3, 10),
    d=st.integers(1, 40),
    bits=st.sampled_from([12, 32, 40]),
    active=st.booleans(),
    sparse=st.booleans(),
    data=st.data(),
)
def test_secure_sum_equals_plain_sum_under_dropouts(
    n: int, d: int, bits: int, active: bool, sparse: bool, data: st.DataObject
) -> None:
    seed = data.draw(st.integers(0, 2**16))
    ids = list(range(1, n + 1))
    if sparse and n >= 6:
        graph = CommunicationGraph.harary(ids, k=4, rng=np.random.default_rng(seed))
    else:
        graph = CommunicationGraph.complete(ids)
    t = data.draw(st.integers((graph.k + 1) // 2 + 1, graph.k + 1))  # t > (k + 1) / 2
    stages = STAGES if active else [s for s in STAGES if s is not Stage.CONSISTENCY_CHECK]
    drops = data.draw(st.dictionaries(st.sampled_from(ids), st.sampled_from(stages), max_size=n))
    xs = _inputs(n, d, bits, seed)
    try:
        res = run_secagg(xs, params=_params(t, d, bits, active), graph=graph, dropouts=drops)
    except ProtocolAbortError:
        assert drops, "a round without dropouts must succeed"
        if graph.k == n - 1:  # complete graph: aborts iff some stage has fewer than t clients
            alive = [sum(1 for u in ids if drops.get(u, Stage.UNMASKING + 1) > s) for s in stages]
            assert min(alive) < t
        return
    expected_survivors = tuple(
        u for u in ids if drops.get(u, Stage.UNMASKING + 1) > Stage.MASKED_INPUT
    )
    assert res.survivors == expected_survivors
    assert np.array_equal(res.sum, _plain_sum(xs, res.survivors, bits))
    assert not res.rejected and not res.client_aborts


def test_secagg_plus_n30_with_late_and_early_dropouts() -> None:
    n, d = 30, 257
    ids = list(range(1, n + 1))
    graph = CommunicationGraph.harary(ids, k=8, rng=np.random.default_rng(3))
    xs = _inputs(n, d, 32, 1)
    drops = {2: Stage.SHARE_KEYS, 5: Stage.MASKED_INPUT, 9: Stage.MASKED_INPUT, 11: Stage.UNMASKING}
    res = run_secagg(xs, params=_params(5, d), graph=graph, dropouts=drops)
    assert 11 in res.survivors and 5 not in res.survivors
    assert np.array_equal(res.sum, _plain_sum(xs, res.survivors, 32))
    up = res.bytes_sent["masked_input"][Direction.UP]
    # 4 bytes/param, 34 bytes of header, the ids of the peers in U2 it masked with, a MAC
    u2 = set(res.sets["U2"])
    assert up == sum(
        4 * d + 34 + 4 + 4 * len(graph.neighbours[u] & u2) + 32 for u in res.sets["U3"]
    )


# ---------------------------------------------------------------------------- aborts


def test_fewer_than_t_masked_inputs_aborts_with_reason() -> None:
    xs = _inputs(5, 4, 32, 0)
    with pytest.raises(
        ProtocolAbortError, match=r"only 3 clients completed COLLECT_INPUTS \(threshold t=4\)"
    ):
        run_secagg(
            xs,
            params=_params(4, 4),
            graph=CommunicationGraph.complete(xs),
            dropouts={1: Stage.MASKED_INPUT, 2: Stage.MASKED_INPUT},
        )


def test_fewer_than_t_unmask_responses_aborts() -> None:
    xs = _inputs(5, 4, 32, 0)
    with pytest.raises(ProtocolAbortError, match=r"COLLECT_UNMASK \(threshold t=4\)"):
        run_secagg(
            xs,
            params=_params(4, 4),
            graph=CommunicationGraph.complete(xs),
            dropouts={1: Stage.UNMASKING, 2: Stage.UNMASKING},
        )


def test_missing_shares_of_one_client_abort_in_sparse_graph() -> None:
    # client 1's holders are its 2 neighbours and itself; t = 3 needs all of them
    ids = list(range(1, 9))
    graph = CommunicationGraph.harary(ids, k=2, rng=np.random.default_rng(0))
    nb = sorted(graph.neighbours[1])
    xs = _inputs(8, 3, 32, 0)
    with pytest.raises(ProtocolAbortError, match="shares of the SELF_MASK of client 1"):
        run_secagg(xs, params=_params(3, 3), graph=graph, dropouts={nb[0]: Stage.UNMASKING})


# ---------------------------------------------------------------------------- privacy


def _capture(store: list, stage: Stage, direction: str):
    def hook(st_: Stage, dr: str, u: int, data: bytes) -> list[bytes]:
        if st_ is stage and dr == direction:
            store.append((u, data))
        return [data]

    return hook


def test_masked_input_is_uniform_even_for_zero_input() -> None:
    d = 1 << 16
    xs = {u: np.zeros(d, np.uint32) for u in (1, 2, 3)}
    seen: list = []
    run_secagg(
        xs,
        params=_params(2, d),
        graph=CommunicationGraph.complete(xs),
        intercept=_capture(seen, Stage.MASKED_INPUT, Direction.UP),
    )
    y = decode_message(dict(seen)[1]).y
    high = (y >> np.uint32(24)).astype(np.int64)
    assert chisquare(np.bincount(high, minlength=256)).pvalue > 1e-4
    low = (y & np.uint32(0xFF)).astype(np.int64)
    assert chisquare(np.bincount(low, minlength=256)).pvalue > 1e-4


def test_honest_clients_reveal_one_kind_per_client() -> None:
    xs = _inputs(6, 3, 32, 0)
    seen: list = []
    res = run_secagg(
        xs,
        params=_params(4, 3),
        graph=CommunicationGraph.complete(xs),
        dropouts={2: Stage.MASKED_INPUT, 4: Stage.UNMASKING},
        intercept=_capture(seen, Stage.UNMASKING, Direction.UP),
    )
    kinds: dict[int, set] = {}
    for _, data in seen:
        for owner, kind, _ in decode_message(data).shares:
            kinds.setdefault(owner, set()).add(kind)
    assert kinds[2] == {ShareKind.MASK_KEY}
    assert all(kinds[u] == {ShareKind.SELF_MASK} for u in res.survivors)
    assert all(len(k) == 1 for k in kinds.values())


def test_client_refuses_a_second_unmasking_request() -> None:
    """A server replaying a different survivor list after unmasking gets nothing more."""
    xs = _inputs(5, 3, 32, 0)
    uploads: list = []

    def hook(stage: Stage, direction: str, u: int, data: bytes) -> list[bytes]:
        if stage is Stage.UNMASKING and direction == Direction.UP:
            uploads.append((u, data))
        if stage is Stage.MASKED_INPUT and direction == Direction.DOWN and u == 1:
            msg = decode_message(data)
            forged = dataclasses.replace(msg, survivors=tuple(v for v in msg.survivors if v != 3))
            return [data, forged.to_bytes()]  # claims client 3 dropped, after the honest list
        return [data]

    res = run_secagg(
        xs, params=_params(3, 3), graph=CommunicationGraph.complete(xs), intercept=hook
    )
    assert "refusing a message after the round ended" in res.client_aborts[1]
    assert [u for u, _ in uploads].count(1) == 1
    shares_of_3 = {k for _, data in uploads for o, k, _ in decode_message(data).shares if o == 3}
    assert shares_of_3 == {ShareKind.SELF_MASK}
    assert np.array_equal(res.sum, _plain_sum(xs, res.survivors, 32))


def _server_tagged(msg, channel_key: bytes) -> bytes:
    """``msg`` with the MAC the server (which holds the channel key) puts on it."""
    key = crypto.channel_mac_key(
        channel_key, round_id=msg.round_id, client_id=msg.receiver, upstream=False
    )
    return dataclasses.replace(msg, auth=crypto.mac(key, msg.signing_payload())).to_bytes()


def test_active_consistency_check_stops_an_equivocating_server() -> None:
    """Clients shown different survivor lists detect it before revealing any share."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    n, d = 4, 2
    ids = list(range(1, n + 1))
    p = _params(3, d, active=True)
    sk = {u: Ed25519PrivateKey.generate() for u in ids}
    vk = {u: k.public_key() for u, k in sk.items()}
    xs = _inputs(n, d, 32, 0)
    ck = {u: bytes([u]) * 32 for u in ids}
    clients = {
        u: SecAggClient(u, xs[u], params=p, signing_key=sk[u], verify_keys=vk, channel_key=ck[u])
        for u in ids
    }
    server = SecAggServer(
        params=p, graph=CommunicationGraph.complete(ids), verify_keys=vk, channel_keys=ck
    )
    for u in ids:
        server.receive(u, clients[u].advertise_keys())
    out = server.advance()
    for u in ids:
        server.receive(u, clients[u].handle(out[u]))
    out = server.advance()
    for u in ids:
        server.receive(u, clients[u].handle(out[u]))
    server.advance()
    # a malicious server tells client 1 that everybody survived, client 2 that 4 dropped
    views = {1: (1, 2, 3, 4), 2: (1, 2, 3)}
    sigs = {}
    for u, view in views.items():
        msg = SurvivorList(round_id=p.round_id, sender=0, receiver=u, survivors=view)
        reply = decode_message(clients[u].handle(_server_tagged(msg, ck[u])))
        assert isinstance(reply, ConsistencySignature)
        sigs[u] = reply.signature
    bcast = SignatureBroadcast(
        round_id=p.round_id, sender=0, receiver=1, signatures=((2, sigs[2]),)
    )
    with pytest.raises(
        ProtocolAbortError, match="invalid signature on survivor list signed by client 2"
    ):
        clients[1].handle(_server_tagged(bcast, ck[1]))
    assert clients[1].revealed == {}


# ---------------------------------------------------------------------------- bad messages


def _run_with_hook(
    hook,
    *,
    active: bool = False,
    n: int = 5,
    t: int = 3,
    round_id: int = 7,
    authenticated: bool = True,
):
    """One round under a network hook; ``authenticated=False`` exercises the checks behind the MACs."""
    xs = _inputs(n, 6, 32, 0)
    res = run_secagg(
        xs,
        params=_params(t, 6, active=active, round_id=round_id, authenticated=authenticated),
        graph=CommunicationGraph.complete(xs),
        intercept=hook,
    )
    return xs, res


def _edit(stage: Stage, direction: str, who: int, fn):
    def hook(st_: Stage, dr: str, u: int, data: bytes) -> list[bytes]:
        if st_ is stage and dr == direction and u == who:
            return fn(data)
        return [data]

    return hook


def test_tampered_relayed_share_makes_the_receiver_drop() -> None:
    def flip(data: bytes) -> list[bytes]:
        msg = decode_message(data)
        (v, ct), *rest = msg.ciphertexts
        bad = ct[:-1] + bytes([ct[-1] ^ 1])
        return [dataclasses.replace(msg, ciphertexts=((v, bad), *rest)).to_bytes()]

    for authenticated, reason in ((True, "invalid MAC on ShareRelay"), (False, "failed authentication")):
        xs, res = _run_with_hook(
            _edit(Stage.SHARE_KEYS, Direction.DOWN, 2, flip), authenticated=authenticated
        )
        assert reason in res.client_aborts[2]
        assert res.survivors == (1, 3, 4, 5)
        assert np.array_equal(res.sum, _plain_sum(xs, res.survivors, 32))


def test_share_ciphertext_moved_to_another_receiver_fails() -> None:
    """AES-GCM binds sender and receiver: a ciphertext relabelled as from another client fails."""

    def swap(data: bytes) -> list[bytes]:
        msg = decode_message(data)
        (v1, c1), (v2, c2), *rest = msg.ciphertexts
        return [dataclasses.replace(msg, ciphertexts=((v1, c2), (v2, c1), *rest)).to_bytes()]

    xs, res = _run_with_hook(_edit(Stage.SHARE_KEYS, Direction.DOWN, 4, swap))
    assert 4 in res.client_aborts and 4 not in res.survivors
    assert np.array_equal(res.sum, _plain_sum(xs, res.survivors, 32))


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b: b[:-7], "truncated|does not match"),
        (lambda b: b + b"\0", "does not match"),
        (lambda b: b"XX" + b[2:], "bad magic"),
        (lambda b: b[:2] + b"\x09" + b[3:], "unsupported wire version"),
        (lambda b: b[:4] + (99).to_bytes(8, "little") + b[12:], "round 99"),
        (lambda b: b[:12] + (4).to_bytes(4, "little") + b[16:], "on client 3's channel"),
        (lambda b: b"", "shorter than"),
    ],
)
def test_bad_masked_input_drops_the_sender(mutate, reason: str) -> None:
    xs, res = _run_with_hook(_edit(Stage.MASKED_INPUT, Direction.UP, 3, lambda b: [mutate(b)]))
    assert 3 in res.rejected and re.search(reason, res.rejected[3])
    assert res.survivors == (1, 2, 4, 5)
    assert np.array_equal(res.sum, _plain_sum(xs, res.survivors, 32))


def test_replay_from_an_earlier_round_is_rejected() -> None:
    old: list = []
    _run_with_hook(_capture(old, Stage.MASKED_INPUT, Direction.UP), round_id=6)
    replay = dict(old)[3]
    xs, res = _run_with_hook(
        _edit(Stage.MASKED_INPUT, Direction.UP, 3, lambda b: [replay]), round_id=7
    )
    assert "round 6" in res.rejected[3]
    assert np.array_equal(res.sum, _plain_sum(xs, res.survivors, 32))


def test_out_of_order_client_message_is_rejected() -> None:
    stale = AdvertiseKeys(round_id=7, sender=3, receiver=0, c_pk=b"\1" * 32, s_pk=b"\2" * 32)
    xs, res = _run_with_hook(
        _edit(Stage.MASKED_INPUT, Direction.UP, 3, lambda b: [stale.to_bytes()])
    )
    assert "out-of-order AdvertiseKeys" in res.rejected[3]
    assert np.array_equal(res.sum, _plain_sum(xs, res.survivors, 32))


def test_duplicate_different_message_drops_sender_and_identical_is_ignored() -> None:
    def dup_diff(data: bytes) -> list[bytes]:
        msg = decode_message(data)
        y = msg.y.copy()
        y[0] ^= 1
        return [data, dataclasses.replace(msg, y=y).to_bytes()]

    xs, res = _run_with_hook(_edit(Stage.MASKED_INPUT, Direction.UP, 3, dup_diff))
    assert "two different messages" in res.rejected[3] and 3 not in res.survivors
    assert np.array_equal(res.sum, _plain_sum(xs, res.survivors, 32))
    xs, res = _run_with_hook(_edit(Stage.MASKED_INPUT, Direction.UP, 3, lambda b: [b, b]))
    assert not res.rejected and 3 in res.survivors


def test_out_of_order_server_message_makes_client_abort() -> None:
    def wrong(data: bytes) -> list[bytes]:
        return [SurvivorList(round_id=7, sender=0, receiver=2, survivors=(1, 2, 3)).to_bytes()]

    xs, res = _run_with_hook(_edit(Stage.ADVERTISE_KEYS, Direction.DOWN, 2, wrong))
    assert "invalid MAC on SurvivorList" in res.client_aborts[2]
    xs, res = _run_with_hook(
        _edit(Stage.ADVERTISE_KEYS, Direction.DOWN, 2, wrong), authenticated=False
    )
    assert "out-of-order SurvivorList" in res.client_aborts[2]
    assert np.array_equal(res.sum, _plain_sum(xs, res.survivors, 32))


def test_active_mode_detects_a_tampered_masked_vector() -> None:
    def flip(data: bytes) -> list[bytes]:
        b = bytearray(data)
        b[40] ^= 0x80  # inside y
        return [bytes(b)]

    xs, res = _run_with_hook(_edit(Stage.MASKED_INPUT, Direction.UP, 3, flip), active=True)
    assert "invalid signature on message of client 3" in res.rejected[3]
    assert res.survivors == (1, 2, 4, 5)
    assert np.array_equal(res.sum, _plain_sum(xs, res.survivors, 32))


def test_corrupt_unmasking_share_aborts_instead_of_a_wrong_sum() -> None:
    def corrupt(data: bytes) -> list[bytes]:
        msg = decode_message(data)
        shares = []
        for owner, kind, sh in msg.shares:
            if owner == 3:
                sh = bytes([sh[0] ^ 1]) + sh[1:]
            shares.append((owner, kind, sh))
        return [dataclasses.replace(msg, shares=tuple(shares)).to_bytes()]

    with pytest.raises(ProtocolAbortError, match="client 3"):
        _run_with_hook(_edit(Stage.UNMASKING, Direction.UP, 1, corrupt), authenticated=False)
    # on an authenticated channel the altered message is refused: client 1 counts as dropped
    xs, res = _run_with_hook(_edit(Stage.UNMASKING, Direction.UP, 1, corrupt))
    assert "invalid MAC" in res.rejected[1]
    assert np.array_equal(res.sum, _plain_sum(xs, res.survivors, 32))


def test_wrong_share_kind_is_rejected() -> None:
    def wrong_kind(data: bytes) -> list[bytes]:
        msg = decode_message(data)
        shares = tuple((o, ShareKind.MASK_KEY if o == 4 else k, s) for o, k, s in msg.shares)
        return [dataclasses.replace(msg, shares=shares).to_bytes()]

    xs, res = _run_with_hook(
        _edit(Stage.UNMASKING, Direction.UP, 2, wrong_kind), authenticated=False
    )
    assert "MASK_KEY share of client 4" in res.rejected[2]
    assert np.array_equal(res.sum, _plain_sum(xs, res.survivors, 32))


def test_share_relay_from_a_stranger_aborts_client() -> None:
    def stranger(data: bytes) -> list[bytes]:
        msg = decode_message(data)
        return [
            dataclasses.replace(msg, ciphertexts=(*msg.ciphertexts, (99, b"\0" * 40))).to_bytes()
        ]

    xs, res = _run_with_hook(
        _edit(Stage.SHARE_KEYS, Direction.DOWN, 5, stranger), authenticated=False
    )
    assert "not a neighbour" in res.client_aborts[5]
    assert np.array_equal(res.sum, _plain_sum(xs, res.survivors, 32))


def test_masked_input_wrong_length_is_rejected() -> None:
    def short(data: bytes) -> list[bytes]:
        msg = decode_message(data)
        return [dataclasses.replace(msg, y=msg.y[:-1].copy()).to_bytes()]

    _, res = _run_with_hook(_edit(Stage.MASKED_INPUT, Direction.UP, 1, short), authenticated=False)
    assert "d=5" in res.rejected[1]
