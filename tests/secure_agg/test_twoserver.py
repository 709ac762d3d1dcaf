"""Two-server secret-shared aggregation: ring arithmetic, equality with the plaintext rules, leakage, validation.

Oracles: Python integers for the ring products and truncation; the plaintext rule of
``defenses.robust`` on the accepted rows for every supported rule (within the
quantisation bound); the norm bound for which clients are accepted; a chi-square-free
statistical check (fixed seed) on FLAME's noise, which the two servers add in halves.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from defenses.robust import FLAME, NNM, CenteredClipping, Compose, FLTrust, Krum, Median, MultiKrum, NormBound
from fl_core.contracts import CompositionError
from fl_core.errors import ConfigError
from fl_core.pipeline import Pipeline, Round
from secure_agg.errors import ProtocolAbortError, RingOverflowError, SecAggConfigError
from secure_agg.registry import SECURE_PROTOCOLS
from secure_agg.twoserver import TwoServerAggregator, TwoServerParams, TwoServerRound
from secure_agg.twoserver.params import SERVERS
from secure_agg.twoserver.ring import encode, ring_matmul_t, truncate, validation_levels

SERVERS_0 = SERVERS[0]

U64 = np.uint64


def _int_gram(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([[sum(int(x) * int(y) for x, y in zip(ra, rb, strict=True)) % 2**64 for rb in b] for ra in a],
                    dtype=U64)


@pytest.mark.parametrize("d", [1, 7, 3000, 70_000])
def test_ring_matmul_equals_python_integers(d):
    rng = np.random.default_rng(d)
    a = rng.integers(0, 2**64, size=(3, d), dtype=U64, endpoint=False)
    b = rng.integers(0, 2**64, size=(2, d), dtype=U64, endpoint=False)
    cols = slice(0, min(d, 2000))  # the Python oracle on a slice; the limb split is per column
    assert np.array_equal(ring_matmul_t(a[:, cols], b[:, cols]), _int_gram(a[:, cols], b[:, cols]))
    assert np.array_equal(ring_matmul_t(a[:, cols]), _int_gram(a[:, cols], a[:, cols]))
    # the whole width against the sum of column blocks
    halves = ring_matmul_t(a[:, : d // 2], b[:, : d // 2]) + ring_matmul_t(a[:, d // 2 :], b[:, d // 2 :])
    assert np.array_equal(ring_matmul_t(a, b), halves)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(y=st.integers(-(2**63), 2**63 - 1), a=st.integers(0, 2**64 - 1), t=st.integers(1, 62))
def test_truncated_shares_add_to_the_floor_or_one_less(y, a, t):
    share0 = np.array([a], dtype=U64)
    share1 = np.array([y % 2**64], dtype=U64) - share0
    lifted = int(share0.view(np.int64)[0]) + int(share1.view(np.int64)[0])  # the client's effective value
    assert lifted % 2**64 == y % 2**64 and abs(lifted) < 2**64
    total = int(truncate(share0, t).view(np.int64)[0]) + int(truncate(share1, t).view(np.int64)[0])
    assert total in (lifted // 2**t, lifted // 2**t - 1)


@pytest.mark.parametrize("d", [1, 10, 1000, 10**4, 10**5, 10**6, 2**21])
def test_validation_levels_never_wrap(d):
    """Each level's worst-case squared norm (given the previous level passed) stays below 2^62."""
    cap = 2**30
    levels = validation_levels(d, 30)
    bound = 2.0**64 * math.sqrt(d)  # before any check: entries below 2^64
    for t in levels:
        assert (bound / 2**t + 2 * math.sqrt(d)) ** 2 < 2.0**62
        bound = cap + 2.0 ** (t + 2) * math.sqrt(d)
    assert bound**2 < 2.0**62  # the exact level (and the Gram diagonal) cannot wrap
    assert list(levels) == sorted(levels, reverse=True) and all(t > 0 for t in levels)


def test_params_refuse_bad_values():
    with pytest.raises(SecAggConfigError, match="bound"):
        TwoServerParams.from_bound(d=10, bound=float("nan"))
    with pytest.raises(SecAggConfigError, match="fractional bits"):
        TwoServerParams.from_bound(d=10, bound=2.0**25)
    with pytest.raises(SecAggConfigError, match="at most 2\\^30"):
        TwoServerParams(d=10, bound=4.0, frac_bits=30)
    with pytest.raises(RingOverflowError, match="does not fit"):
        encode(np.array([2.0**50]), 16)
    with pytest.raises(ConfigError, match="Median cannot run under two-server"):
        TwoServerAggregator(bound=1.0, rule=Median(f=1))
    with pytest.raises(ConfigError, match="bound must be"):
        TwoServerAggregator(bound=-1.0)
    with pytest.raises(ConfigError, match="Median cannot run under two-server"):
        TwoServerRound(bound=1.0, d=4, rule=Median(f=1))


def _fltrust(g0):
    rule = FLTrust()
    rule.set_server_update(torch.as_tensor(g0, dtype=torch.float32))
    return rule


RULES = {
    "norm_bound": lambda g0: NormBound(M=0.8),
    "norm_bound_reject": lambda g0: NormBound(M=1.1, reject=True),
    "krum": lambda g0: Krum(f=2),
    "multi_krum": lambda g0: MultiKrum(f=2),
    "fltrust": _fltrust,
    "centered_clipping": lambda g0: CenteredClipping(tau=0.5),
    "centered_clipping_L3": lambda g0: CenteredClipping(tau=0.5, L=3),
    "flame": lambda g0: FLAME(f=2, lam=0.0, generator=torch.Generator().manual_seed(0)),
    "nnm_krum": lambda g0: Compose(NNM(f=2), Krum(f=2)),
    "nnm_multi_krum": lambda g0: Compose(NNM(f=2), MultiKrum(f=2)),
}


def _cohort(seed: int, n: int = 12, d: int = 64, bound: float = 4.0):
    """Honest rows of norm about 1, a sign-flipped pair, a scaled row inside the bound, and one beyond it."""
    g = torch.Generator().manual_seed(seed)
    X = 1.0 + torch.randn(n, d, generator=g) / math.sqrt(d)
    X = X / X.norm(dim=1, keepdim=True) * (0.8 + 0.4 * torch.rand(n, 1, generator=g))
    X[0] = -3.0 * X[1]  # a Byzantine row inside the bound
    X[1] = -X[2]
    X[3] = X[3] * (bound * 3)  # beyond the bound: must be rejected, never aggregated
    return X, torch.randn(d, generator=g).abs() / math.sqrt(d) + X[4:].mean(0)


@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_the_plaintext_rule_on_the_accepted_clients(name, seed):
    X, g0 = _cohort(seed)
    bound = 4.0
    proto = TwoServerRound(bound=bound, d=X.shape[1], rule=RULES[name](g0))
    out, _ = proto.run(X.double().numpy(), np.ones(len(X)), round_id=seed)
    s0, s1 = proto.outcomes
    assert np.array_equal(s0.aggregate, s1.aggregate) and np.array_equal(s0.accepted, s1.accepted)
    expected_accept = (X.double().norm(dim=1) <= bound).numpy()
    assert np.array_equal(out.accepted, expected_accept)
    assert out.rejected == {3: out.rejected[3]} and len(out.rejected) == 1
    acc = torch.from_numpy(out.accepted)
    rule = RULES[name](g0).excluding(len(out.rejected))  # the rejected client counts among f
    plain = rule.aggregate(X[acc].double(), torch.ones(int(acc.sum()), dtype=torch.float64))
    # quantisation: F fractional bits per entry and 24 bits per coefficient (norms ~1, at most 12 rows)
    assert np.allclose(out.aggregate, plain.aggregate.numpy(), atol=2e-6, rtol=0)
    if not name.startswith("nnm"):  # NNM can make mixed rows identical: Krum's tie then has equal aggregates
        assert torch.equal(out.decision.kept, plain.kept)


def test_flame_noise_is_added_in_halves_with_the_right_variance():
    X, _ = _cohort(5, d=20_000)
    rule = FLAME(f=2, lam=0.01)
    proto = TwoServerRound(bound=4.0, d=X.shape[1], rule=rule, seed=3)
    out, _ = proto.run(X.double().numpy(), np.ones(len(X)), round_id=1)
    sigma = out.decision.noise_std
    assert sigma == pytest.approx(0.01 * out.decision.metrics["S_t"]) and sigma > 0
    acc = torch.from_numpy(out.accepted)
    noiseless = (out.decision.coef[: int(acc.sum())] @ X[acc].double()).numpy()
    resid = out.aggregate - noiseless
    # 20,000 draws of N(0, sigma^2): the sample std is within 3% of sigma (about 6 standard errors)
    assert abs(resid.std() / sigma - 1) < 0.03 and abs(resid.mean()) < 4 * sigma / math.sqrt(len(resid))


@pytest.mark.parametrize(("name", "per_client"), [("norm_bound", 0), ("fltrust", 1), ("krum", None)])
def test_servers_open_only_what_the_rule_needs(name, per_client):
    X, g0 = _cohort(7)
    proto = TwoServerRound(bound=4.0, d=X.shape[1], rule=RULES[name](g0))
    out, _ = proto.run(X.double().numpy(), np.ones(len(X)), round_id=1)
    m = int(out.accepted.sum())
    assert set(out.opened) == {"level_norms2", "geometry", "aggregate"}
    assert out.opened["level_norms2"].shape == (len(proto.params.levels) + 1, len(X))
    # inner products only for the accepted clients: m per reference, or m * m for the Gram matrix
    assert out.opened["geometry"].size == (m * m if per_client is None else m * per_client)


@pytest.mark.parametrize("entry", [2**32, 2**31, 3 * 2**40, 2**62, 2**63])
def test_a_vector_whose_squares_wrap_is_rejected(entry):
    """Entries whose squares sum to 0 mod 2^64 (2^32, or four of 2^31) would pass a naive ring norm check."""
    d, n = 8, 5
    rng = np.random.default_rng(0)
    rows = rng.normal(0, 0.1, size=(n, d))
    evil = np.zeros(d, dtype=U64)
    evil[:4] = U64(entry)
    assert int((evil * evil).sum(dtype=U64)) % 2**64 == 0 or entry == 3 * 2**40
    proto = TwoServerRound(bound=1.0, d=d, rule=NormBound(M=1.0))
    out, _ = proto.run(rows, np.ones(n), round_id=1, ring_rows={0: evil})
    assert out.accepted.tolist() == [False, True, True, True, True]
    assert np.allclose(out.aggregate, rows[1:].mean(0), atol=1e-6)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**16), bound=st.sampled_from([0.5, 1.0, 3.0]), scale=st.floats(0.05, 5.0))
def test_accepted_exactly_when_the_norm_is_within_the_bound(seed, bound, scale):
    rng = np.random.default_rng(seed)
    rows = rng.normal(0, scale, size=(6, 40)) / math.sqrt(40)
    norms = np.linalg.norm(rows, axis=1)
    margin = np.abs(norms - bound) > 1e-5 * bound  # leave out rows at the bound within quantisation
    proto = TwoServerRound(bound=bound, d=40, rule=NormBound(M=bound / 2))
    try:
        out, _ = proto.run(rows, np.ones(6), round_id=1)
    except Exception as e:  # every row over the bound: a specific abort
        assert "no client passed validation" in str(e) and not (norms <= bound).any()
        return
    assert np.array_equal(out.accepted[margin], (norms <= bound)[margin])


def test_pipeline_accepts_geometric_rules_and_refuses_coordinate_wise_ones():
    X, _ = _cohort(0)
    n, d = X.shape
    pipe = Pipeline(secure=TwoServerAggregator(bound=4.0), rule=MultiKrum(f=2))
    out = pipe(X, torch.ones(n), Round(0, tuple(range(n)), torch.zeros(d)))
    acc = (X.norm(dim=1) <= 4.0)
    assert torch.allclose(out.delta, MultiKrum(f=1)(X[acc]), atol=2e-6)  # the rejected row counts among f
    assert out.rows_seen is None and out.metrics["rejected"] == 1.0
    with pytest.raises(CompositionError, match="Median"):
        Pipeline(secure=TwoServerAggregator(bound=4.0), rule=Median(f=2))
    assert "krum" in SECURE_PROTOCOLS.get("two_server").robust_rules


def test_centered_clipping_keeps_its_reference_across_rounds():
    X, _ = _cohort(0)
    secure, plain = CenteredClipping(tau=0.5), CenteredClipping(tau=0.5)
    agg = TwoServerAggregator(bound=4.0, rule=secure)
    acc = X.norm(dim=1) <= 4.0
    for _ in range(3):
        got, want = agg(X), plain(X[acc])
        assert torch.allclose(got, want, atol=5e-6)
    assert torch.allclose(secure.reference.float(), plain.reference.float(), atol=5e-6)


def test_client_ids_in_any_order_and_gaps():
    """Sampled ids unsorted and sparse: rows, masks and triples stay aligned."""
    X, _ = _cohort(4)
    ids = (907, 3, 55, 12, 8, 600, 41, 77, 5, 19, 2, 1000)
    proto = TwoServerRound(bound=4.0, d=X.shape[1], rule=MultiKrum(f=2))
    out, _ = proto.run(X.double().numpy(), np.ones(len(X)), round_id=9, client_ids=ids)
    order = np.argsort(ids)  # the cohort is in id order
    assert out.cohort == tuple(sorted(ids)) and set(out.rejected) == {ids[3]}
    Xs = X[torch.from_numpy(order)]
    acc = torch.from_numpy(out.accepted)
    assert np.allclose(out.aggregate, MultiKrum(f=1)(Xs[acc].double()).numpy(), atol=2e-6)  # f less the rejected


def test_pipeline_state_keeps_the_rule_state_under_two_server():
    X, _ = _cohort(0)
    n, d = X.shape
    make = lambda: Pipeline(secure=TwoServerAggregator(bound=4.0), rule=CenteredClipping(tau=0.5))
    a = make()
    for r in range(2):
        a(X, torch.ones(n), Round(r, tuple(range(n)), torch.zeros(d)))
    b = make()
    b.load_state_dict(a.state_dict())
    out_a = a(X, torch.ones(n), Round(2, tuple(range(n)), torch.zeros(d)))
    out_b = b(X, torch.ones(n), Round(2, tuple(range(n)), torch.zeros(d)))
    assert torch.allclose(out_a.delta, out_b.delta, atol=1e-6)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**16), n=st.integers(9, 13), name=st.sampled_from(sorted(RULES)),
       absent=st.sets(st.integers(0, 12), max_size=2), scale=st.sampled_from([0.0, 2.0, 50.0]))
def test_random_cohorts_with_outliers_and_dropouts_match_the_plaintext_rule(seed, n, name, absent, scale):
    """Dropped clients (frame withheld at one server) and outliers of any scale: the rule on who is left."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 32, generator=g) / 8 + 0.3
    X[n - 1] = X[n - 1] * (1 + scale)  # an outlier: inside the bound, or far beyond it
    g0 = X[: n - 1].mean(0)
    absent = {c for c in absent if c < n}
    if len(absent) and n - len(absent) < 9:
        absent = set()

    def withhold(channel, sender, receiver, frame):
        return None if channel == "client" and sender in absent and receiver == SERVERS_0 else frame

    proto = TwoServerRound(bound=4.0, d=32, rule=RULES[name](g0))
    try:
        out, _ = proto.run(X.double().numpy(), np.ones(n), round_id=1, network=withhold)
    except ProtocolAbortError as e:  # too few accepted clients for the rule: a specific abort
        assert "cannot run" in str(e)
        return
    present = np.array([c not in absent for c in range(n)])
    assert set(out.dropped) == absent
    accepted = np.zeros(n, dtype=bool)
    accepted[list(out.cohort)] = out.accepted
    assert np.array_equal(accepted, present & (X.double().norm(dim=1) <= 4.0).numpy())
    rows = X[torch.from_numpy(accepted)].double()
    plain = RULES[name](g0).excluding(len(out.rejected)).aggregate(rows, torch.ones(len(rows), dtype=torch.float64))
    assert np.allclose(out.aggregate, plain.aggregate.numpy(), atol=2e-6)


def _two_far_outliers(n: int = 7, d: int = 16):
    g = torch.Generator().manual_seed(11)
    X = torch.randn(n, d, generator=g) / 8 + 0.2
    X[:2] *= 100.0  # both far over the bound: provably Byzantine
    return X


@pytest.mark.parametrize("make", [lambda: Krum(f=2), lambda: Compose(NNM(f=2), MultiKrum(f=2))])
def test_clients_rejected_for_their_norm_count_among_f(make):
    """Krum(f=2) needs n > 2f + 2 = 6; with 2 of 7 rejected, 5 remain and at most f - 2 = 0 attackers among them."""
    X = _two_far_outliers()
    out, _ = TwoServerRound(bound=4.0, d=16, rule=make()).run(X.double().numpy(), np.ones(7), round_id=1)
    assert sorted(out.rejected) == [0, 1]
    plain = make().excluding(2).aggregate(X[2:].double(), torch.ones(5, dtype=torch.float64))
    assert np.allclose(out.aggregate, plain.aggregate.numpy(), atol=2e-6)
    with pytest.raises(ProtocolAbortError, match="cannot run on the 5 accepted clients"):
        TwoServerRound(bound=4.0, d=16, rule=make(), rejected_are_byzantine=False).run(
            X.double().numpy(), np.ones(7), round_id=1)


def test_excluding_lowers_f_on_a_copy_that_shares_the_rule_state():
    cc = CenteredClipping(f=2, tau=0.5)
    fewer = cc.excluding(1)
    assert (fewer.f, cc.f, cc.excluding(5).f, cc.excluding(0) is cc) == (1, 2, 0, True)
    cc.observe(torch.ones(3, dtype=torch.float64))
    assert cc.excluding(1)._v is cc._v  # the reference the copy decides from is the rule's current one
    nested = Compose(NNM(f=2), Krum(f=2)).excluding(1)
    assert [s.f for s in (*nested.pre, nested.rule)] == [1, 1]
    with pytest.raises(ConfigError, match="removed must be >= 0"):
        Krum(f=1).excluding(-1)
    with pytest.raises(ConfigError, match="rejected_are_byzantine"):
        TwoServerAggregator(bound=1.0, rejected_are_byzantine=1)


def test_unseal_into_a_reused_buffer_parses_views_of_it_and_falls_back_when_too_small():
    from secure_agg.twoserver.messages import Openings, seal, unseal

    key, E = bytes(range(32)), np.arange(12, dtype=np.uint64).reshape(1, 3, 4)
    frame = seal(Openings(tags=(5,), stack=E), key, round_id=1, sender=1, receiver=2, seq=0)
    kw = dict(round_id=1, sender=1, receiver=2, seq=0)
    buf = np.zeros(4096, dtype=np.uint8)
    msg = unseal(frame, key, Openings, into=buf, **kw)
    assert np.array_equal(msg.stack, E) and np.shares_memory(msg.stack, buf)
    small = unseal(frame, key, Openings, into=np.zeros(8, dtype=np.uint8), **kw)
    assert np.array_equal(small.stack, E) and not np.shares_memory(small.stack, buf)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**16), d=st.sampled_from([1, 7, 2048, 2049, 5000]), at_bound=st.booleans())
def test_opened_gram_and_norms_are_the_exact_integer_ones(seed, d, at_bound):
    """The Gram triple is computed modulo 2^62 (three limbs): every opened entry is still the exact integer."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(6, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    X *= rng.uniform(0.2, 1.0, size=(6, 1)) * 4.0
    if at_bound:  # an antiparallel pair at the bound: the largest norms, the most negative inner product
        X[0] = X[0] / np.linalg.norm(X[0]) * 3.999
        X[1] = -X[0]
    proto = TwoServerRound(bound=4.0, d=d, rule=Krum(f=1))
    out, _ = proto.run(X, np.ones(6), round_id=1)
    assert out.accepted.all()
    Y = encode(X, proto.params.frac_bits)
    exact = ring_matmul_t(Y).view(np.int64)  # below 2^63 in magnitude: the ring value is the integer
    assert np.array_equal(out.opened["geometry"].reshape(6, 6), exact)
    assert np.array_equal(out.opened["level_norms2"][-1], np.diagonal(exact))


def test_openings_stream_block_by_block_and_the_result_is_exact_across_blocks():
    """d over two column blocks: one Openings frame per triple and block, and the exact Gram and Krum's choice."""
    from secure_agg.twoserver.ring import BLOCK

    d, n = 2 * BLOCK + 3, 5
    rng = np.random.default_rng(3)
    X = rng.normal(size=(n, d)) / np.sqrt(d)
    X[0] *= 3.0
    frames = []

    def count(channel, sender, receiver, frame):
        if channel == "peer" and sender == SERVERS[0]:
            frames.append(len(frame))
        return frame

    proto = TwoServerRound(bound=4.0, d=d, rule=Krum(f=1))
    out, _ = proto.run(X, np.ones(n), round_id=1, network=count)
    triples = len(proto.params.levels) + 1
    assert len(frames) == 1 + 3 * triples + 3  # survivors, 3 blocks per triple, validation, geometry, aggregate
    assert max(frames) < 8 * n * BLOCK + 200  # no frame carries more than one block
    exact = ring_matmul_t(encode(X, proto.params.frac_bits)).view(np.int64)
    assert np.array_equal(out.opened["geometry"].reshape(n, n), exact)
    assert np.allclose(out.aggregate, Krum(f=1)(torch.from_numpy(X)).numpy(), atol=2e-6)
