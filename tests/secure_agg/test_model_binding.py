"""Model binding in SecAgg+: every client advertises the digest of the model it received and refuses a mismatch.

Defense against a server that sends clients different models (LOKI, Zhao et al. IEEE
S&P 2024): an equivocating server gets a specific abort, never a sum; identical models
change nothing; a tampered or replayed digest drops that client or aborts it by name.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secure_agg import crypto
from secure_agg.client import (
    ClientState,
    ModelMismatchError,
    SecAggClient,
    advertise_payload,
    bind_model,
    model_digest,
    model_fingerprint,
)
from secure_agg.client_state import restore, snapshot
from secure_agg.errors import ProtocolAbortError, SecAggConfigError, WireFormatError
from secure_agg.graph import CommunicationGraph
from secure_agg.messages import (
    SERVER_ID,
    AdvertiseKeys,
    KeyBroadcast,
    KeyEntry,
    Stage,
    WireVersionError,
    decode_message,
)
from secure_agg.params import SecAggParams
from secure_agg.runner import Direction, run_secagg

N, D, ROUND = 6, 5, 8
KEYS = {u: bytes([u]) * 32 for u in range(1, N + 1)}
MODEL = [np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), np.ones(4, np.float32)]


def _other_model() -> list[np.ndarray]:
    m = [a.copy() for a in MODEL]
    m[0][1, 2] = np.nextafter(m[0][1, 2], np.float32(2))  # one ulp: a different model
    return m


def _xs() -> dict[int, np.ndarray]:
    rng = np.random.default_rng(0)
    return {u: rng.integers(0, 2**32, D, dtype=np.uint64).astype(np.uint32) for u in range(1, N + 1)}


def _sum(xs: dict[int, np.ndarray], ids) -> np.ndarray:
    acc = np.zeros(D, np.uint32)
    for u in ids:
        acc = acc + xs[u]
    return acc


def _params(active: bool) -> SecAggParams:
    return SecAggParams(round_id=ROUND, t=4, d=D, active=active)


def _retag(msg, key: bytes) -> bytes:
    """What a lying server sends: its forged message with a valid channel MAC."""
    k = crypto.channel_mac_key(key, round_id=msg.round_id, client_id=msg.receiver, upstream=False)
    return dataclasses.replace(msg, auth=crypto.mac(k, msg.signing_payload())).to_bytes()


# ------------------------------------------------------------------ the digest


def test_digest_is_a_function_of_the_exact_arrays_and_the_round():
    assert model_digest(MODEL, round_id=ROUND) == model_digest([a.copy() for a in MODEL], round_id=ROUND)
    assert model_digest(_other_model(), round_id=ROUND) != model_digest(MODEL, round_id=ROUND)
    assert model_digest(MODEL, round_id=ROUND) != model_digest(MODEL, round_id=ROUND - 1)
    # order, dtype and shape are part of the serialisation
    assert model_fingerprint(MODEL[::-1]) != model_fingerprint(MODEL)
    assert model_fingerprint([MODEL[0].astype(np.float64), MODEL[1]]) != model_fingerprint(MODEL)
    assert model_fingerprint([MODEL[0].reshape(4, 3), MODEL[1]]) != model_fingerprint(MODEL)
    assert model_digest(MODEL, round_id=ROUND) == bind_model(model_fingerprint(MODEL), round_id=ROUND)


def test_digest_and_client_refuse_bad_input_by_name():
    with pytest.raises(SecAggConfigError, match="without parameters"):
        model_fingerprint([])
    with pytest.raises(SecAggConfigError, match="32 bytes"):
        bind_model(b"short", round_id=1)
    with pytest.raises(SecAggConfigError, match="round_id"):
        bind_model(bytes(32), round_id=-1)
    with pytest.raises(SecAggConfigError, match="model_digest must be 32 bytes"):
        SecAggClient(1, np.zeros(D, np.uint32), params=_params(False), channel_key=KEYS[1], model_digest=b"x" * 31)


# ------------------------------------------------------------------ wire format


def test_advertisement_carries_the_digest_and_old_versions_are_refused():
    digest = model_digest(MODEL, round_id=ROUND)
    m = AdvertiseKeys(round_id=ROUND, sender=2, receiver=SERVER_ID, c_pk=b"c" * 32, s_pk=b"s" * 32,
                      model_digest=digest)
    assert decode_message(m.to_bytes()) == m
    kb = KeyBroadcast(round_id=ROUND, sender=0, receiver=3, entries=(KeyEntry(2, b"c" * 32, b"s" * 32, b"", digest),))
    assert decode_message(kb.to_bytes()).entries[0].model_digest == digest
    old = bytearray(m.to_bytes())
    old[2] = 2  # a version-2 message (no digest field)
    with pytest.raises(WireVersionError, match="unsupported wire version 2, expected 3"):
        decode_message(bytes(old))
    with pytest.raises(WireFormatError, match="model_digest must be 0 or 32 bytes, got 5"):
        dataclasses.replace(m, model_digest=b"12345")


# ------------------------------------------------------------------ rounds


@pytest.mark.parametrize("active", [False, True])
def test_identical_models_leave_the_sum_unchanged(active):
    xs = _xs()
    digest = model_digest(MODEL, round_id=ROUND)
    res = run_secagg(xs, params=_params(active), graph=CommunicationGraph.complete(xs),
                     model_digests={u: digest for u in xs})
    assert res.survivors == tuple(range(1, N + 1)) and not res.client_aborts
    np.testing.assert_array_equal(res.sum, _sum(xs, xs))


@pytest.mark.parametrize("active", [False, True])
def test_an_equivocating_server_gets_a_model_mismatch_abort_not_a_sum(active):
    xs = _xs()
    ids = list(xs)
    graph = CommunicationGraph.harary(ids, k=4, rng=np.random.default_rng(0))  # SecAgg+: 4 neighbours each
    digests = {u: model_digest(_other_model() if u == 1 else MODEL, round_id=ROUND) for u in ids}
    with pytest.raises(ProtocolAbortError, match="model mismatch") as info:
        run_secagg(xs, params=SecAggParams(round_id=ROUND, t=3, d=D, active=active), graph=graph,
                   model_digests=digests)
    assert "client 1 advertised model digest" in info.value.reason
    # per-client models (LOKI): every client's neighbours disagree
    per_client = {u: model_digest([a + u for a in MODEL], round_id=ROUND) for u in ids}
    with pytest.raises(ProtocolAbortError, match="only 0 clients completed COLLECT_SHARES"):
        run_secagg(xs, params=SecAggParams(round_id=ROUND, t=3, d=D, active=active), graph=graph,
                   model_digests=per_client)


def _signed_broadcast(receiver: int, neighbours: dict[int, bytes], signing: dict[int, Ed25519PrivateKey],
                      digest_of: dict[int, bytes]) -> KeyBroadcast:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    entries = []
    for v in sorted(neighbours):
        c_pk, s_pk = crypto.public_bytes(X25519PrivateKey.generate()), crypto.public_bytes(X25519PrivateKey.generate())
        sig = signing[v].sign(advertise_payload(ROUND, v, c_pk, s_pk, digest_of[v]))
        entries.append(KeyEntry(v, c_pk, s_pk, sig, digest_of[v]))
    return KeyBroadcast(round_id=ROUND, sender=SERVER_ID, receiver=receiver, entries=tuple(entries))


def test_the_client_aborts_with_model_mismatch_before_sharing_any_secret():
    signing = {u: Ed25519PrivateKey.generate() for u in range(1, N + 1)}
    vks = {u: k.public_key() for u, k in signing.items()}
    mine = model_digest(MODEL, round_id=ROUND)
    c = SecAggClient(1, np.zeros(D, np.uint32), params=_params(True), signing_key=signing[1], verify_keys=vks,
                     channel_key=KEYS[1], model_digest=mine)
    adv = decode_message(c.advertise_keys())
    assert adv.model_digest == mine
    # the client signs its digest: the server checks the same payload
    vks[1].verify(adv.signature, advertise_payload(ROUND, 1, adv.c_pk, adv.s_pk, mine))
    digests = {v: mine for v in range(2, 6)} | {5: model_digest(_other_model(), round_id=ROUND)}
    kb = _signed_broadcast(1, {v: b"" for v in range(2, 6)}, signing, digests)
    with pytest.raises(ModelMismatchError, match="client 5 advertised model digest"):
        c.handle(_retag(kb, KEYS[1]))
    assert c.state is ClientState.ABORTED and c._b is None and c._own_shares is None  # no secret was shared


def test_a_digest_replayed_from_another_round_is_refused():
    signing = {u: Ed25519PrivateKey.generate() for u in range(1, N + 1)}
    vks = {u: k.public_key() for u, k in signing.items()}
    mine = model_digest(MODEL, round_id=ROUND)
    c = SecAggClient(1, np.zeros(D, np.uint32), params=_params(True), signing_key=signing[1], verify_keys=vks,
                     channel_key=KEYS[1], model_digest=mine)
    c.advertise_keys()
    stale = {v: mine for v in range(2, 6)} | {3: model_digest(MODEL, round_id=ROUND - 1)}  # same model, round 7
    with pytest.raises(ModelMismatchError, match="client 3 advertised"):
        c.handle(_retag(_signed_broadcast(1, dict.fromkeys(range(2, 6), b""), signing, stale), KEYS[1]))
    # in a whole round: a client that binds the previous round's digest is refused by its neighbours
    xs = _xs()
    digests = {u: model_digest(MODEL, round_id=ROUND - 1 if u == 3 else ROUND) for u in xs}
    with pytest.raises(ProtocolAbortError, match="model mismatch"):
        run_secagg(xs, params=_params(False), graph=CommunicationGraph.complete(xs), model_digests=digests)


def _tamper_advertisement(victim: int):
    def hook(stage, direction, u, data):
        if stage is Stage.ADVERTISE_KEYS and direction == Direction.UP and u == victim:
            b = bytearray(data)
            b[24 + 64 + 1] ^= 0x01  # first byte of the digest field, after c_pk, s_pk and its length
            return [bytes(b)]
        return [data]

    return hook


@pytest.mark.parametrize(("active", "reason"), [(False, "invalid MAC"), (True, "invalid signature")])
def test_a_digest_tampered_on_the_wire_drops_that_client_and_the_others_sum(active, reason):
    xs = _xs()
    digest = model_digest(MODEL, round_id=ROUND)
    res = run_secagg(xs, params=_params(active), graph=CommunicationGraph.complete(xs),
                     model_digests={u: digest for u in xs}, intercept=_tamper_advertisement(2),
                     channel_keys=KEYS)
    assert reason in res.rejected[2]
    assert res.survivors == (1, 3, 4, 5, 6)
    np.testing.assert_array_equal(res.sum, _sum(xs, res.survivors))


def _rewrite_relayed_digest(victim: int, about: int):
    def hook(stage, direction, u, data):
        if stage is Stage.ADVERTISE_KEYS and direction == Direction.DOWN and u == victim:
            msg = decode_message(data)
            entries = tuple(e._replace(model_digest=bytes(32)) if e.client_id == about else e for e in msg.entries)
            return [_retag(dataclasses.replace(msg, entries=entries), KEYS[u])]
        return [data]

    return hook


@pytest.mark.parametrize(
    ("active", "reason"),
    [
        (False, "model mismatch: client 4 advertised model digest 0000"),  # MAC mode: the server can forge it
        (True, "invalid signature on keys of client 4"),  # signed mode: it cannot
    ],
)
def test_a_server_that_rewrites_a_relayed_digest_loses_that_client(active, reason):
    xs = _xs()
    digest = model_digest(MODEL, round_id=ROUND)
    res = run_secagg(xs, params=_params(active), graph=CommunicationGraph.complete(xs),
                     model_digests={u: digest for u in xs}, intercept=_rewrite_relayed_digest(2, about=4),
                     channel_keys=KEYS)
    assert reason in res.client_aborts[2]
    assert res.survivors == (1, 3, 4, 5, 6)
    np.testing.assert_array_equal(res.sum, _sum(xs, res.survivors))


# ------------------------------------------------------------------ the snapshot


def test_the_client_snapshot_round_trips_the_digest():
    mine = model_digest(MODEL, round_id=ROUND)
    c = SecAggClient(2, np.arange(D, dtype=np.uint32), params=_params(False), channel_key=KEYS[2], model_digest=mine)
    c.advertise_keys()
    r = restore(snapshot(c))
    assert r.model_digest == mine
    theirs = model_digest(_other_model(), round_id=ROUND)
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    entries = tuple(
        KeyEntry(v, crypto.public_bytes(X25519PrivateKey.generate()), crypto.public_bytes(X25519PrivateKey.generate()),
                 b"", theirs)
        for v in (1, 3, 4, 5)
    )
    kb = _retag(KeyBroadcast(round_id=ROUND, sender=SERVER_ID, receiver=2, entries=entries), KEYS[2])
    for client in (c, r):  # the restored client refuses the other model exactly as the original does
        with pytest.raises(ModelMismatchError, match="client 1 advertised model digest"):
            client.handle(kb)
    unbound = SecAggClient(3, np.zeros(D, np.uint32), params=_params(False), channel_key=KEYS[3])
    assert restore(snapshot(unbound)).model_digest == b""


# ------------------------------------------------------------------ over Flower


def test_a_flower_serverapp_that_sends_one_node_another_model_gets_no_aggregate(caplog):
    pytest.importorskip("flwr", reason="the flower extra (flwr) is not installed")
    from flwr.app import ArrayRecord, ConfigRecord, RecordDict

    from tests.secure_agg.flower_grid import LocalGrid
    from tests.secure_agg.test_secagg_flower_messages import GLOBAL, _app, _check, _round, _strategy
    from tests.secure_agg.test_secagg_flower_messages import N as NODES

    grid = LocalGrid(_app(), NODES)
    arrays, metrics = _round(grid, _strategy())  # the same model to every node: the round is unchanged
    _check(arrays, range(NODES), metrics)
    strategy = _strategy()
    msgs = list(strategy.configure_train(2, ArrayRecord(GLOBAL), ConfigRecord(), grid))
    content = msgs[0].content  # the messages share one RecordDict: give node 0 its own, with another model
    msgs[0].content = RecordDict({**dict(content.items()), "arrays": ArrayRecord([GLOBAL[0] + 1.0])})
    with caplog.at_level("WARNING"):
        arrays, metrics = strategy.aggregate_train(2, grid.send_and_receive(msgs))
    assert arrays is None and metrics["nodes-aggregated"] == 0.0 and metrics["groups-aborted"] == 1.0
    # node 1000 is client 1: each other node refuses its digest
    mismatches = [r.getMessage() for r in caplog.records
                  if r.name == "secure_agg.flower_client" and "model mismatch: client 1 advertised" in r.getMessage()]
    assert len(mismatches) == NODES - 1
