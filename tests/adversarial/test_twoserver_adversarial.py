"""Standing adversarial layer for the two-server protocol: the correct aggregate of the others, or a specific abort.

A network hook (:data:`secure_agg.twoserver.runner.Network`) sees every frame. Hypothesis
draws small cohorts and a plan of faults on the client frames (flip a bit, truncate,
withhold at one server, replay a frame of the previous round, redirect one client's
frame as another's, send two frames, declare different weights to the two servers) and
malicious ring inputs (entries whose squares wrap, huge values); every round must end
with exactly the faulted clients dropped, the over-bound clients rejected, and the
aggregate equal to the plaintext mean of the rest, or with a specific abort. Faults on
the frames between the servers or from the dealer always abort
(:class:`~secure_agg.errors.ProtocolAbortError`), never a wrong aggregate.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from defenses.robust import Krum
from secure_agg.errors import MessageRejectedError, ProtocolAbortError
from secure_agg.twoserver import TwoServerRound
from secure_agg.twoserver.aggregator import GeometricMean
from secure_agg.twoserver.params import SERVERS
from secure_agg.twoserver.server import Stage

D, BOUND = 16, 2.0
FAULTS = ("flip", "truncate", "withhold_s0", "withhold_s1", "replay", "redirect", "duplicate", "weight")


def _rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 0.2, size=(n, D))


class Plan:
    """A network hook applying one fault per targeted client; remembers the previous round's frames."""

    def __init__(self, faults: dict[int, str], old: dict[tuple[int, int], bytes], rng: np.random.Generator,
                 proto: TwoServerRound) -> None:
        self.faults, self.old, self.rng, self.proto = faults, old, rng, proto
        self.seen: dict[tuple[int, int], bytes] = {}

    def __call__(self, channel: str, sender: int, receiver: int, frame: bytes) -> bytes | None:
        if channel != "client":
            return frame
        k = SERVERS.index(receiver)
        self.seen[(sender, k)] = frame
        fault = self.faults.get(sender)
        if fault == "flip":
            b = bytearray(frame)
            b[int(self.rng.integers(len(b)))] ^= 1 << int(self.rng.integers(8))
            return bytes(b)
        if fault == "truncate":
            return frame[: int(self.rng.integers(len(frame)))]
        if fault == f"withhold_s{k}":
            return None
        if fault == "replay":
            return self.old[(sender, k)]
        if fault == "redirect":  # another client's frame of this round, delivered as this one's
            other = min(c for c, j in self.old if j == k and c != sender)
            return self.seen.get((other, k), self.old[(other, k)])
        return frame


def _deliver_extra(proto: TwoServerRound, faults: dict[int, str]):
    """Faults that need a second frame from the client itself: duplicates and weight equivocation."""
    original = proto._upload

    def upload(clients, rows, weights, ring_rows, servers, round_id, cost, network):
        original(clients, rows, weights, ring_rows, servers, round_id, cost, network)
        for cid, fault in faults.items():
            if fault == "duplicate":
                frames = clients[cid].share(rows[cid], weight=float(weights[cid]), round_id=round_id)
                servers[0].receive_client(cid, frames[0])
            if fault == "weight":  # a fresh sharing with another weight, S1's frame replaced before agreement
                frames = clients[cid].share(rows[cid], weight=float(weights[cid]) + 1.0, round_id=round_id)
                servers[1]._inputs.pop(cid, None)
                servers[1].receive_client(cid, frames[1])
    proto._upload = upload


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(4, 7), seed=st.integers(0, 2**16),
       plan=st.dictionaries(st.integers(0, 6), st.sampled_from(FAULTS), max_size=3),
       evil=st.dictionaries(st.integers(0, 6), st.sampled_from(["wrap", "huge", "edge"]), max_size=2))
def test_faulty_clients_are_dropped_and_the_rest_aggregated_correctly(n, seed, plan, evil):
    rows = _rows(n, seed)
    weights = np.arange(1, n + 1, dtype=np.float64)
    faults = {c: f for c, f in plan.items() if c < n}
    ring_rows = {}
    for c, kind in evil.items():
        if c >= n or c in faults:
            continue
        v = np.zeros(D, dtype=np.uint64)
        if kind == "wrap":
            v[:4] = np.uint64(2**31)  # squares sum to 2^64 = 0 in the ring
        elif kind == "huge":
            rows[c] = 3e38
        else:
            v[:] = np.uint64(2**64 - 1)  # -1 everywhere: a tiny valid vector (norm 4 ring units)
        if kind != "huge":
            ring_rows[c] = v
    proto = TwoServerRound(bound=BOUND, d=D, rule=GeometricMean())
    old_plan = Plan({}, {}, np.random.default_rng(0), proto)
    proto.run(rows, weights, round_id=1, network=old_plan)  # the previous round: frames to replay
    _deliver_extra(proto, {c: f for c, f in faults.items() if f in ("duplicate", "weight")})
    hook = Plan(faults, old_plan.seen, np.random.default_rng(seed), proto)
    dropped_expected = set(faults)
    valid_rows = rows.copy()
    for c, v in ring_rows.items():
        valid_rows[c] = v.view(np.int64) / 2.0**proto.params.frac_bits
    within = np.linalg.norm(valid_rows, axis=1) <= BOUND
    within[[c for c, k in evil.items() if c < n and k == "wrap"]] = False
    survivors = [c for c in range(n) if c not in dropped_expected and within[c]]
    try:
        out, _ = proto.run(rows, weights, round_id=2, ring_rows=ring_rows, network=hook)
    except ProtocolAbortError as e:
        assert not survivors and "no client passed validation" in str(e)
        return
    s0, s1 = proto.outcomes
    assert np.array_equal(s0.aggregate, s1.aggregate)
    assert set(out.dropped) | set(out.rejected) == set(range(n)) - set(survivors)
    assert set(out.dropped) == dropped_expected  # a faulted client is dropped, never rejected or aggregated
    expected = weights[survivors] @ valid_rows[survivors] / weights[survivors].sum()
    assert np.allclose(out.aggregate, expected, atol=1e-6)


@pytest.mark.parametrize("step", range(5))
@pytest.mark.parametrize("fault", ["flip", "truncate", "withhold", "replay"])
def test_a_fault_between_the_servers_aborts(step, fault):
    rows = _rows(6, 0)
    proto = TwoServerRound(bound=BOUND, d=D, rule=Krum(f=1))
    frames = []

    def record(channel, sender, receiver, frame):
        if channel == "peer":
            frames.append(frame)
        return frame

    proto.run(rows, np.ones(6), round_id=1, network=record)
    count = {"n": 0}

    def hook(channel, sender, receiver, frame):
        if channel != "peer" or sender != SERVERS[0]:
            return frame
        i = count["n"]
        count["n"] += 1
        if i != step:
            return frame
        if fault == "flip":
            return frame[:-1] + bytes([frame[-1] ^ 1])
        if fault == "truncate":
            return frame[: len(frame) // 2]
        if fault == "withhold":
            return None
        return frames[2 * step]  # S0's frame of the same step in round 1

    with pytest.raises(ProtocolAbortError, match="other server's"):
        proto.run(rows, np.ones(6), round_id=2, network=hook)


@pytest.mark.parametrize("fault", ["flip", "withhold_s1"])
def test_a_fault_from_the_dealer_aborts(fault):
    proto = TwoServerRound(bound=BOUND, d=D, rule=Krum(f=1))

    def hook(channel, sender, receiver, frame):
        if channel != "dealer" or receiver != SERVERS[1]:
            return frame
        return None if fault == "withhold_s1" else frame[:40] + bytes([frame[40] ^ 4]) + frame[41:]

    with pytest.raises(ProtocolAbortError, match=r"dealer|triples"):
        proto.run(_rows(6, 1), np.ones(6), round_id=1, network=hook)


def test_calls_out_of_order_are_refused():
    proto = TwoServerRound(bound=BOUND, d=D, rule=GeometricMean())
    proto.client(0), proto.client(1)
    server = proto._server(0, 1, (0, 1), None)
    assert server.stage is Stage.COLLECT
    with pytest.raises(MessageRejectedError, match="stage COLLECT"):
        server.openings_frame()
    with pytest.raises(ProtocolAbortError, match="no triples"):
        server.survivors_frame()
    with pytest.raises(MessageRejectedError, match="not sampled"):
        server.receive_client(99, b"x" * 100)


def test_krum_under_two_server_ignores_a_wrapping_client_and_a_3e38_client():
    rows = _rows(9, 3)
    rows[1] = 3e38
    evil = np.zeros(D, dtype=np.uint64)
    evil[0] = np.uint64(2**32)
    proto = TwoServerRound(bound=BOUND, d=D, rule=Krum(f=2))
    out, _ = proto.run(rows, np.ones(9), round_id=1, ring_rows={0: evil})
    assert set(out.rejected) == {0, 1}
    # both rejected clients are among the f = 2 attackers: Krum decides with f = 0 on the other 7
    assert np.allclose(out.aggregate, Krum(f=0)(torch.from_numpy(rows[2:])).numpy(), atol=1e-6)
    # counted as honest absentees instead, 5 accepted clients no longer satisfy n > 2f + 2: a specific abort
    strict = TwoServerRound(bound=BOUND, d=D, rule=Krum(f=2), rejected_are_byzantine=False)
    with pytest.raises(ProtocolAbortError, match="Krum needs n > 2f \\+ 2, got n=5"):
        strict.run(rows[:7], np.ones(7), round_id=2, ring_rows={0: evil})


def test_bad_input_to_the_stage_and_the_geometric_rules_is_refused_or_handled():
    """NaN rows, a wrong weight shape, a wrong flag type: specific errors; a 1e38 row through decide: outvoted."""
    from defenses.robust import MultiKrum, NormBound
    from fl_core.errors import ConfigError, InvalidUpdateError
    from fl_core.geometry import Geometry, apply_decision
    from secure_agg.twoserver import TwoServerAggregator

    agg = TwoServerAggregator(bound=BOUND, rule=Krum(f=1))
    rows = torch.from_numpy(_rows(6, 2)).float()
    bad = rows.clone()
    bad[2, 3] = float("nan")
    with pytest.raises(InvalidUpdateError):
        agg.aggregate(bad)
    with pytest.raises(InvalidUpdateError):
        agg.aggregate(rows, torch.ones(5))
    with pytest.raises(ConfigError, match="reject must be a bool"):
        NormBound(M=1.0, reject="yes")
    huge = rows.clone()
    huge[0] = 1e38
    for rule in (Krum(f=1), MultiKrum(f=1), NormBound(M=1.0)):
        dec = rule.decide(Geometry.of(huge, needs=rule.geometry_needs()), torch.ones(6), None)
        out = apply_decision(dec, huge, None)
        assert torch.isfinite(out).all() and float(out.abs().max()) < 10.0
