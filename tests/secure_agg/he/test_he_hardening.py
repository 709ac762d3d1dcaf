"""Issue 13 (hardening) for HE aggregation: bookkeeping of rejected senders, authentication."""

from __future__ import annotations

from dataclasses import replace
from functools import cache

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secure_agg.errors import ProtocolAbortError, SecAggConfigError
from secure_agg.he.aggregator import BFVAggregator, CKKSAggregator
from secure_agg.he.client import HEClient, open_aggregate
from secure_agg.he.errors import HEConfigError
from secure_agg.he.keys import KeyHolder
from secure_agg.he.messages import KEY_HOLDER_ID, EncryptedAggregate, HEStage, PublicContext
from secure_agg.he.params import select_params
from secure_agg.he.runner import run_he
from secure_agg.he.server import HEServer

N, D = 3, 20


@cache
def _setup():
    params = select_params(d=D, n=N + 1, clip=1.0, weight_bound=4 * 10, precision_bits=12, scheme="bfv")
    return params, KeyHolder(params)


def _round(*, authenticated: bool = True):
    """A server after setup, and one client factory per id (fresh encryption each call)."""
    params, kh = _setup()
    sks = {u: Ed25519PrivateKey.generate() for u in range(1, N + 1)}
    server = HEServer(
        params=params, round_id=5, client_ids=range(1, N + 1),
        verify_keys={u: k.public_key() for u, k in sks.items()} if authenticated else None,
        allow_unauthenticated=not authenticated,
    )
    public = kh.public_context()
    server.receive(KEY_HOLDER_ID, PublicContext(round_id=5, sender=KEY_HOLDER_ID, receiver=0, scheme="bfv",
                                                key_id=kh.key_id, context=public).to_bytes())

    def client(u: int, x: np.ndarray) -> bytes:
        c = HEClient(u, x, weight=1, params=params, context=kh.client_context(), round_id=5,
                     signing_key=sks[u] if authenticated else None, public_context=public)
        return c.encrypt_input()

    return params, kh, server, client


def _open(params, kh, data: bytes):
    return open_aggregate(kh.context, params, data, key_id=kh.key_id, round_id=5)


@pytest.mark.parametrize("authenticated", [True, False])
def test_second_different_input_takes_the_sender_out_of_the_sum(authenticated: bool) -> None:
    params, kh, server, client = _round(authenticated=authenticated)
    xs = {u: np.full(D, 0.1 * u) for u in range(1, N + 1)}
    for u in range(1, N + 1):
        assert server.receive(u, client(u, xs[u]))
    assert not server.receive(2, client(2, np.full(D, -0.9)))  # a second, different input
    assert "second, different input" in server.rejected[2]
    out = server.advance()
    res = _open(params, kh, out[1])
    assert res.contributors == (1, 3) and 2 not in out
    assert np.allclose(res.mean, 0.2, atol=1e-3) and res.weight_sum == 2


def test_bad_message_after_acceptance_takes_the_sender_out_and_keeps_it_out() -> None:
    params, kh, server, client = _round()
    xs = {u: np.full(D, 0.1 * u) for u in range(1, N + 1)}
    for u in range(1, N + 1):
        server.receive(u, client(u, xs[u]))
    assert not server.receive(3, b"HE garbage")
    assert not server.receive(3, client(3, xs[3]))  # rejected clients stay out
    res = _open(params, kh, server.advance()[1])
    assert res.contributors == (1, 2) and np.allclose(res.mean, 0.15, atol=1e-3)
    assert not server.receive(1, client(1, xs[1]))  # after the round: ignored, result unchanged
    assert server.result().contributors == (1, 2)


def test_all_accepted_inputs_rejected_aborts() -> None:
    _, _, server, client = _round()
    server.receive(1, client(1, np.zeros(D)))
    server.receive(1, client(1, np.ones(D)))
    with pytest.raises(ProtocolAbortError, match="min_clients"):
        server.advance()


def test_server_needs_verify_keys_unless_explicitly_unauthenticated() -> None:
    params, _ = _setup()
    with pytest.raises(SecAggConfigError, match="authenticated by default"):
        HEServer(params=params, round_id=0, client_ids=[1, 2])


@pytest.mark.parametrize("attack", ["flip", "replay_old_round", "unsigned"])
def test_tampered_or_replayed_aggregate_is_refused_by_the_clients(attack: str) -> None:
    params, kh = _setup()
    xs = {u: np.full(D, 0.1 * u) for u in range(1, N + 1)}
    w = dict.fromkeys(xs, 1)
    old: dict = {}

    def keep(stage, direction, u, data):
        if stage is HEStage.AGGREGATE:
            old.setdefault("agg", data)
        return [data]

    run_he(xs, weights=w, params=params, key_holder=kh, round_id=4, intercept=keep)

    def hook(stage, direction, u, data):
        if stage is not HEStage.AGGREGATE:
            return [data]
        if attack == "flip":
            b = bytearray(data)
            b[len(b) // 2] ^= 1
            return [bytes(b)]
        if attack == "replay_old_round":  # last round's sum, header edited to this round
            return [replace(EncryptedAggregate.from_bytes(old["agg"]), round_id=5).to_bytes()]
        return [replace(EncryptedAggregate.from_bytes(data), auth=b"").to_bytes()]

    with pytest.raises(ProtocolAbortError, match="every client rejected"):
        run_he(xs, weights=w, params=params, key_holder=kh, round_id=5, intercept=hook)


def test_dropout_stage_by_name() -> None:
    params, kh = _setup()
    xs = {u: np.full(D, 0.1 * u) for u in range(1, N + 1)}
    r = run_he(xs, weights=dict.fromkeys(xs, 1), params=params, key_holder=kh, dropouts={2: "encrypted_input"})
    assert r.survivors == (1, 3)
    with pytest.raises(SecAggConfigError, match=r"'SETUPX'.*ENCRYPTED_INPUT, AGGREGATE"):
        run_he(xs, weights=dict.fromkeys(xs, 1), params=params, key_holder=kh, dropouts={2: "SETUPX"})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"precision_bits": 0}, "precision_bits"),
        ({"precision_bits": 60}, "precision_bits"),
        ({"security_bits": 100}, "security_bits"),
        ({"min_clients": 0}, "min_clients"),
        ({"min_clients": 2.5}, "min_clients"),
        ({"clip": float("nan")}, "clip"),
        ({"dropout_rate": 1.0}, "dropout_rate"),
    ],
)
@pytest.mark.parametrize("cls", [BFVAggregator, CKKSAggregator])
def test_he_aggregator_validates_at_construction(cls, kwargs, match) -> None:
    with pytest.raises(HEConfigError, match=match):
        cls(**{"clip": 1.0, **kwargs})


def test_he_aggregator_accepts_numpy_scalars_and_refuses_fractional_weights() -> None:
    agg = BFVAggregator(clip=np.float32(1.0), precision_bits=np.int64(12), security_bits=np.int32(128),
                        min_clients=np.int64(2))
    out = agg(torch.tensor([[0.5], [0.25]]))
    assert abs(out.item() - 0.375) < 2**-10
    with pytest.raises(HEConfigError, match=r"10000000\.5"):
        agg.aggregate(torch.zeros(2, 1), torch.tensor([1.0, 10000000.5], dtype=torch.float64))
