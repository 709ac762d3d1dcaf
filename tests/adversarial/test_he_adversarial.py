"""Standing adversarial layer for HE aggregation: never a wrong aggregate, never an odd exception.

Hypothesis draws small rounds (n <= 4, d <= 6; TenSEAL is slow, so few trials) and
attacks on the wire: flip a bit of the public context, an input or the aggregate;
drop a message; deliver it twice or followed by an altered copy; deliver another
client's input on a client's channel; replay an input or aggregate of the previous
round; extreme updates (far beyond the clip, exact zeros) and zero weights. Every
round must end in the weighted mean of exactly the contributors it reports (none
of them rejected)
(BFV: the exact quantised sum; CKKS: within the documented error bound) or in
:class:`~secure_agg.errors.ProtocolAbortError`. Without authentication only
withholding and identical duplicates are drawn (that mode's threat model: a
network attacker can otherwise replace inputs, see :mod:`secure_agg.he.server`).

Trial counts: ``pytest tests/adversarial --hypothesis-show-statistics``.
"""

from __future__ import annotations

import dataclasses
from functools import cache

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from secure_agg.errors import ProtocolAbortError
from secure_agg.he.keys import KeyHolder
from secure_agg.he.messages import HEStage
from secure_agg.he.packing import encode_update
from secure_agg.he.params import select_params
from secure_agg.he.runner import run_he

SETTINGS = {
    "derandomize": True,
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow],
    "database": None,
}
N_MAX, D, W_MAX = 4, 6, 4 * 9
AUTH_KINDS = ["flip", "drop", "duplicate", "dup_altered", "other_channel", "replay_round"]
LOSSY_KINDS = ["drop", "duplicate"]


@cache
def _setup(scheme: str):
    params = select_params(d=D, n=N_MAX, clip=1.0, weight_bound=W_MAX, precision_bits=12, scheme=scheme)
    return params, KeyHolder(params)


@dataclasses.dataclass(frozen=True)
class Action:
    stage: HEStage
    client: int
    kind: str
    rnd: int


@st.composite
def rounds(draw, *, kinds: list[str]):
    n = draw(st.integers(2, N_MAX))
    ids = list(range(1, n + 1))
    style = draw(st.sampled_from(["random", "extreme", "zeros"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if style == "random":
        xs = {u: rng.uniform(-1, 1, D) for u in ids}
    elif style == "extreme":
        xs = {u: rng.choice([-1e38, 1e38, -1.0, 1.0, 0.0], D) for u in ids}
    else:
        xs = {u: np.zeros(D) for u in ids}
    weights = {u: draw(st.integers(0 if u > 1 else 1, 9)) for u in ids}
    # inputs are where the bookkeeping is: three times as likely as the other stages
    stages = [HEStage.SETUP, *[HEStage.ENCRYPTED_INPUT] * 3, HEStage.AGGREGATE]
    actions = [
        Action(
            stage=draw(st.sampled_from(stages)),
            client=draw(st.sampled_from(ids)),
            kind=draw(st.sampled_from(kinds)),
            rnd=draw(st.integers(0, 2**32)),
        )
        for _ in range(draw(st.integers(1, 2)))
    ]
    return xs, weights, actions


def _flip(data: bytes, rnd: int) -> bytes:
    b = bytearray(data)
    b[rnd % len(b)] ^= 1 << ((rnd >> 16) % 8)
    return bytes(b)


class Adversary:
    def __init__(self, actions: list[Action], previous: dict | None) -> None:
        self.pending = list(actions)
        self.previous = previous or {}
        self.log: dict[tuple[HEStage, int], bytes] = {}

    def __call__(self, stage: HEStage, direction: str, u: int, data: bytes) -> list[bytes]:
        self.log.setdefault((stage, u), data)
        out = [data]
        for a in list(self.pending):
            # the key holder's message has client id 2^32 - 1: SETUP actions match any client
            if a.stage is stage and (a.client == u or stage is HEStage.SETUP):
                self.pending.remove(a)
                out = self._apply(a, stage, u, data)
                event(f"applied {a.kind} at {stage.name}")
        return out

    def _apply(self, a: Action, stage: HEStage, u: int, data: bytes) -> list[bytes]:
        if a.kind == "flip":
            return [_flip(data, a.rnd)]
        if a.kind == "drop":
            return []
        if a.kind == "duplicate":
            return [data, data]
        if a.kind == "dup_altered":
            return [data, _flip(data, a.rnd)]
        if a.kind == "other_channel":
            other = [d for (s, v), d in self.log.items() if s is stage and v != u]
            return [other[a.rnd % len(other)]] if other else [data]
        if a.kind == "replay_round":
            old = self.previous.get((stage, u))
            return [old] if old is not None else [data]
        raise AssertionError(a.kind)


def _check(scheme: str, xs, weights, actions, *, authenticate: bool) -> None:
    params, kh = _setup(scheme)
    previous = None
    if any(a.kind == "replay_round" for a in actions):
        rec = Adversary([], None)
        run_he(xs, weights=weights, params=params, key_holder=kh, round_id=1, intercept=rec,
               authenticate=authenticate)
        previous = rec.log
    try:
        r = run_he(xs, weights=weights, params=params, key_holder=kh, round_id=2,
                   intercept=Adversary(actions, previous), authenticate=authenticate)
    except ProtocolAbortError:
        event("outcome: abort")
        return
    event("outcome: aggregate of the contributors")
    ids = r.survivors
    assert set(ids) <= set(xs) and len(ids) >= 2
    assert not set(r.rejected) & set(ids), "a rejected client in the aggregate"
    wsum = sum(weights[u] for u in ids)
    assert abs(r.weight_sum - wsum) < 0.5 if scheme == "ckks" else r.weight_sum == wsum, "a wrong total weight"
    clipped = {u: np.clip(xs[u], -1.0, 1.0) for u in ids}
    ref = sum(weights[u] * clipped[u] for u in ids) / wsum
    if scheme == "bfv":
        exact = sum(encode_update(params, xs[u], weight=weights[u]) for u in ids)
        got = np.rint(r.sum[:-1] * params.quant_scale).astype(np.int64)
        assert np.array_equal(got, exact[:-1]), "a wrong sum"
    assert np.abs(r.mean - ref).max() <= r.error_bound + 1e-12, "a wrong mean"


@settings(max_examples=30, **SETTINGS)
@given(case=rounds(kinds=AUTH_KINDS))
def test_bfv_authenticated_never_gives_a_wrong_aggregate(case) -> None:
    _check("bfv", *case, authenticate=True)


@settings(max_examples=15, **SETTINGS)
@given(case=rounds(kinds=AUTH_KINDS))
def test_ckks_authenticated_never_gives_a_wrong_aggregate(case) -> None:
    _check("ckks", *case, authenticate=True)


@settings(max_examples=15, **SETTINGS)
@given(case=rounds(kinds=LOSSY_KINDS))
def test_bfv_unauthenticated_lossy_network_never_gives_a_wrong_aggregate(case) -> None:
    _check("bfv", *case, authenticate=False)

