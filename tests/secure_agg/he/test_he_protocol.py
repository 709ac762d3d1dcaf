"""HE roles over the wire: correct sums, dropouts, key separation and rejection of bad input."""

from __future__ import annotations

from dataclasses import replace
from functools import cache

import numpy as np
import pytest
import tenseal as ts
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_agg.errors import ProtocolAbortError, WireFormatError
from secure_agg.he.errors import HEDecryptionError, HEOverflowError
from secure_agg.he.keys import KeyHolder, decrypt_chunks, load_server_context, load_vector
from secure_agg.he.messages import KEY_HOLDER_ID, EncryptedInput, HEStage, PublicContext
from secure_agg.he.packing import encode_update
from secure_agg.he.params import select_params
from secure_agg.he.runner import run_he
from secure_agg.he.server import HEServer
from secure_agg.runner import Direction


@cache
def _setup(scheme: str, d: int, n: int, w_bound: int, p: int = 16):
    params = select_params(d=d, n=n, clip=1.0, weight_bound=w_bound, precision_bits=p, scheme=scheme)
    return params, KeyHolder(params)


def _cohort(n: int, d: int, seed: int):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (n, d))
    w = {u: int(rng.integers(1, 50)) for u in range(1, n + 1)}
    return {u: X[u - 1] for u in w}, w


def _ref(xs, w, ids):
    return sum(w[u] * xs[u] for u in ids) / sum(w[u] for u in ids)


def test_server_context_cannot_decrypt() -> None:
    params, kh = _setup("bfv", 50, 3, 150)
    server_ctx = load_server_context(kh.public_context())
    assert not server_ctx.has_secret_key() and not server_ctx.is_private()
    ct = ts.bfv_vector(kh.context, list(range(51))).serialize()
    vec = load_vector(server_ctx, params, ct, 51)
    with pytest.raises(ValueError, match="secret"):
        vec.decrypt()
    with pytest.raises(HEDecryptionError, match="no secret key"):
        decrypt_chunks(server_ctx, params, [ct])
    assert load_vector(kh.context, params, ct, 51).decrypt() == list(range(51))


def test_public_context_holding_a_secret_key_is_refused() -> None:
    params, kh = _setup("ckks", 20, 3, 150)
    with pytest.raises(WireFormatError, match="secret key"):
        load_server_context(kh.client_context())
    srv = HEServer(params=params, round_id=0, client_ids=[1, 2, 3], allow_unauthenticated=True)
    leaky = kh.client_context()
    from secure_agg.he.keys import key_id

    msg = PublicContext(round_id=0, sender=KEY_HOLDER_ID, receiver=0, scheme="ckks", key_id=key_id(leaky),
                        context=leaky)
    with pytest.raises(WireFormatError, match="secret key"):
        srv.receive(KEY_HOLDER_ID, msg.to_bytes())


@settings(max_examples=6, deadline=None)
@given(n=st.integers(2, 6), d=st.integers(1, 5000), seed=st.integers(0, 2**16), scheme=st.sampled_from(["bfv", "ckks"]))
def test_sum_matches_weighted_mean_for_any_d(n: int, d: int, seed: int, scheme: str) -> None:
    xs, w = _cohort(n, d, seed)
    params = select_params(d=d, n=n, clip=1.0, weight_bound=sum(w.values()), precision_bits=16, scheme=scheme)
    kh = KeyHolder(params)
    r = run_he(xs, weights=w, params=params, key_holder=kh)
    assert r.survivors == tuple(range(1, n + 1)) and r.weight_sum == pytest.approx(sum(w.values()))
    err = np.abs(r.mean - _ref(xs, w, r.survivors)).max()
    assert err <= r.error_bound <= 2**-16
    assert params.n_ciphertexts == -(-(d + 1) // params.slots)


def test_bfv_sum_is_exact_in_the_integers() -> None:
    n, d = 5, 3000  # d + 1 not a multiple of the 2048 slots
    params, kh = _setup("bfv", d, n, 5 * 49)
    xs, w = _cohort(n, d, 1)
    r = run_he(xs, weights=w, params=params, key_holder=kh)
    exact = sum(encode_update(params, xs[u], weight=w[u]) for u in w)
    assert np.array_equal(np.rint(r.sum[:-1] * params.quant_scale).astype(np.int64), exact[:-1])
    assert r.sum[-1] == sum(w.values())


def test_ckks_error_within_the_documented_bound() -> None:
    n, d = 8, 2500
    xs, w = _cohort(n, d, 2)
    params, kh = _setup("ckks", d, n, sum(w.values()), 20)
    r = run_he(xs, weights=w, params=params, key_holder=kh)
    err = np.abs(r.mean - _ref(xs, w, r.survivors)).max()
    assert 0 < err <= r.error_bound <= 2**-20


@pytest.mark.parametrize("scheme", ["bfv", "ckks"])
def test_dropouts_are_simply_not_in_the_sum(scheme: str) -> None:
    n, d = 6, 700
    params, kh = _setup(scheme, d, n, 6 * 49)
    xs, w = _cohort(n, d, 3)
    r = run_he(xs, weights=w, params=params, key_holder=kh,
               dropouts={2: HEStage.ENCRYPTED_INPUT, 5: HEStage.ENCRYPTED_INPUT, 6: HEStage.AGGREGATE})
    assert r.survivors == (1, 3, 4, 6)
    assert np.abs(r.mean - _ref(xs, w, r.survivors)).max() <= r.error_bound
    down = r.bytes_sent["aggregate"][Direction.DOWN]  # clients 1, 3, 4 fetch it; 6 dropped before
    assert down % 3 == 0 and down // 3 > 4 * d
    alone = dict.fromkeys(range(2, 7), HEStage.ENCRYPTED_INPUT)
    with pytest.raises(ProtocolAbortError, match="min_clients"):
        run_he(xs, weights=w, params=params, key_holder=kh, dropouts=alone)


def test_weight_or_cohort_beyond_the_bounds_raises() -> None:
    params, kh = _setup("bfv", 10, 3, 30)
    xs, _ = _cohort(3, 10, 4)
    with pytest.raises(HEOverflowError, match="weight bound"):
        run_he(xs, weights={1: 31, 2: 1, 3: 1}, params=params, key_holder=kh)
    xs4, w4 = _cohort(4, 10, 4)
    with pytest.raises(ValueError, match="n_max"):
        run_he(xs4, weights=dict.fromkeys(w4, 1), params=params, key_holder=kh)


def _tamper(target: int, how: str):
    def intercept(stage, direction, u, data):
        if stage is not HEStage.ENCRYPTED_INPUT or u != target:
            return [data]
        if how == "truncate":
            return [data[:-100]]
        if how == "flip":
            b = bytearray(data)
            b[len(b) // 2] ^= 0x5A
            return [bytes(b)]
        msg = EncryptedInput.from_bytes(data)
        if how == "longer":  # one more ciphertext than declared
            longer = (*msg.ciphertexts, msg.ciphertexts[0])
            return [replace(msg, n_values=msg.n_values + 1, ciphertexts=longer).to_bytes()]
        if how == "round":
            return [replace(msg, round_id=msg.round_id + 1).to_bytes()]
        if how == "swap_chunk":  # a full ciphertext where the short last chunk belongs
            return [replace(msg, ciphertexts=(msg.ciphertexts[0],) * len(msg.ciphertexts)).to_bytes()]
        raise AssertionError(how)

    return intercept


@pytest.mark.parametrize("how", ["truncate", "flip", "longer", "round", "swap_chunk"])
def test_bad_input_rejects_that_client_only(how: str) -> None:
    n, d = 4, 2500
    params, kh = _setup("bfv", d, n, 4 * 49)
    xs, w = _cohort(n, d, 5)
    r = run_he(xs, weights=w, params=params, key_holder=kh, intercept=_tamper(2, how))
    assert 2 in r.rejected and r.survivors == (1, 3, 4)
    assert np.abs(r.mean - _ref(xs, w, r.survivors)).max() <= r.error_bound


def test_ciphertexts_under_another_key_are_rejected() -> None:
    n, d = 3, 100
    params, kh = _setup("ckks", d, n, 3 * 49)
    other = KeyHolder(params)  # same parameters, different secret key
    xs, w = _cohort(n, d, 6)
    foreign = {}

    def intercept(stage, direction, u, data):
        if stage is HEStage.ENCRYPTED_INPUT and u == 3:
            from secure_agg.he.client import HEClient

            c = HEClient(3, xs[3], weight=w[3], params=params, context=other.client_context(), round_id=0)
            foreign["honest_label"] = c.encrypt_input()
            return [foreign["honest_label"]]
        return [data]

    r = run_he(xs, weights=w, params=params, key_holder=kh, intercept=intercept, authenticate=False)
    assert "key_id" in r.rejected[3] and r.survivors == (1, 2)

    def relabel(stage, direction, u, data):  # foreign ciphertext with the right key_id: caught at decryption
        if stage is HEStage.ENCRYPTED_INPUT and u == 3:
            m = EncryptedInput.from_bytes(foreign["honest_label"])
            return [replace(m, key_id=kh.key_id).to_bytes()]
        return [data]

    # unauthenticated inputs: only the honest bounds at decryption catch it
    with pytest.raises(ProtocolAbortError, match=r"bound|weight"):
        run_he(xs, weights=w, params=params, key_holder=kh, intercept=relabel, authenticate=False)
    # authenticated (the default): the unsigned forgery rejects client 3, the others are summed
    r = run_he(xs, weights=w, params=params, key_holder=kh, intercept=relabel)
    assert "unsigned" in r.rejected[3] and r.survivors == (1, 2)


def test_signed_inputs_reject_forgeries() -> None:
    n, d = 3, 50
    params, kh = _setup("bfv", d, n, 3 * 49)
    xs, w = _cohort(n, d, 7)

    def forge(stage, direction, u, data):
        if stage is HEStage.ENCRYPTED_INPUT and u == 1:
            m = EncryptedInput.from_bytes(data)
            other = EncryptedInput.from_bytes(data)
            return [replace(m, ciphertexts=other.ciphertexts[::-1], auth=m.auth).to_bytes()] if len(
                m.ciphertexts) > 1 else [replace(m, round_id=m.round_id, auth=bytes(64)).to_bytes()]
        return [data]

    r = run_he(xs, weights=w, params=params, key_holder=kh, authenticate=True, intercept=forge)
    assert "signature" in r.rejected[1] and r.survivors == (2, 3)
    ok = run_he(xs, weights=w, params=params, key_holder=kh, authenticate=True)
    assert ok.survivors == (1, 2, 3) and not ok.rejected
