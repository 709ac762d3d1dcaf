"""Standing adversarial layer for SecAgg / SecAgg+: never a wrong sum, never a leaked input.

Hypothesis draws small rounds (n <= 6, d <= 6) and a plan of attacks on the wire:

* tamper -- flip a random bit of a random message, anywhere or inside its body
  (network attacker);
* withhold -- drop a whole message, or one entry of a list inside it (a relay
  entry, a broadcast key, a survivor, a signature, an unmasking share), either as
  the network (the MAC no longer verifies) or as a lying server / malicious client
  that re-tags what it forged with the channel key it holds (also: a malicious
  client's altered unmasking share or low-order public key);
* replay -- a message of the same client from the previous round (same channel
  keys), or from another stage of this round;
* equivocate -- the server tells some clients that a survivor dropped;
* duplicate -- a message twice, or followed by an altered copy;
* extreme values -- inputs of all-zero or all-ones ring words, in rings of 12 to 64 bits.

Every round must end in one of two ways: the exact sum of the inputs of the
survivors it reports, or :class:`~secure_agg.errors.ProtocolAbortError`. Any other
exception fails the test. In every round, the honest clients together never reveal
``t`` shares of both secrets of one client (what a lying server would need to
unmask an input). Without channel authentication only withholding is drawn (the
documented threat model of that mode: a lossy, not a tampering, network).

Trial counts: ``pytest tests/adversarial --hypothesis-show-statistics`` reports the
examples each test ran (``max_examples`` below; ``derandomize=True`` makes them
the same on every run).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from secure_agg import crypto
from secure_agg.errors import ProtocolAbortError
from secure_agg.graph import CommunicationGraph
from secure_agg.messages import (
    AdvertiseKeys,
    KeyBroadcast,
    MaskedInput,
    ShareKeys,
    ShareKind,
    ShareRelay,
    SignatureBroadcast,
    Stage,
    SurvivorList,
    UnmaskShares,
    decode_message,
)
from secure_agg.params import SecAggParams
from secure_agg.quantize import ring_dtype
from secure_agg.runner import Direction, run_secagg

SETTINGS = {
    "derandomize": True,
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow],
    "database": None,
}

_LISTS = {
    KeyBroadcast: "entries",
    ShareRelay: "ciphertexts",
    SurvivorList: "survivors",
    SignatureBroadcast: "signatures",
    ShareKeys: "ciphertexts",
    UnmaskShares: "shares",
    MaskedInput: "masked_with",
}

NETWORK_KINDS = ["flip", "flip_body", "drop", "drop_entry", "duplicate", "dup_altered", "replay_round", "replay_stage"]
INSIDER_KINDS = ["forge_drop_entry", "forge_share", "bad_key"]  # a lying server / malicious client re-tags
LOSSY_KINDS = ["drop", "drop_entry"]  # without channel authentication


@dataclasses.dataclass(frozen=True)
class Action:
    """One attack: on the first message of ``stage``/``direction`` to or from ``client``."""

    stage: Stage
    direction: str
    client: int
    kind: str
    rnd: int


@dataclasses.dataclass
class Round:
    n: int
    d: int
    bits: int
    t: int
    active: bool
    authenticated: bool
    graph: CommunicationGraph
    xs: dict[int, np.ndarray]
    keys: dict[int, bytes]
    actions: list[Action]


def _stages(active: bool) -> list[Stage]:
    return [s for s in Stage if active or s is not Stage.CONSISTENCY_CHECK]


@st.composite
def rounds(draw, *, kinds: list[str], authenticated: bool | None = None) -> Round:
    n = draw(st.integers(3, 6))
    d = draw(st.integers(1, 6))
    bits = draw(st.sampled_from([12, 32, 64]))
    active = draw(st.booleans())
    auth = draw(st.booleans()) if authenticated is None else authenticated
    ids = list(range(1, n + 1))
    sparse = n >= 6 and draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    graph = CommunicationGraph.harary(ids, k=2, rng=rng) if sparse else CommunicationGraph.complete(ids)
    t = draw(st.integers((graph.k + 1) // 2 + 1, graph.k + 1))
    dt = ring_dtype(bits)
    top = (1 << bits) - 1
    style = draw(st.sampled_from(["random", "zeros", "ones", "mixed"]))
    xs = {}
    for u in ids:
        if style == "zeros" or (style == "mixed" and u % 2):
            xs[u] = np.zeros(d, dt)
        elif style == "ones" or style == "mixed":
            xs[u] = np.full(d, top, dt)
        else:
            xs[u] = (rng.integers(0, 2**63, d, dtype=np.uint64) & np.uint64(top)).astype(dt)
    n_actions = draw(st.integers(1, 3))
    actions = [
        Action(
            stage=draw(st.sampled_from(_stages(active))),
            direction=draw(st.sampled_from([Direction.UP, Direction.DOWN])),
            client=draw(st.sampled_from(ids)),
            kind=draw(st.sampled_from(kinds)),
            rnd=draw(st.integers(0, 2**32)),
        )
        for _ in range(n_actions)
    ]
    keys = {u: bytes([u, seed & 0xFF, (seed >> 8) & 0xFF]) * 10 + b"ck" for u in ids}
    return Round(n, d, bits, t, active, auth, graph, xs, keys, actions)


def _params(r: Round, round_id: int) -> SecAggParams:
    return SecAggParams(
        round_id=round_id, t=r.t, d=r.d, ring_bits=r.bits, active=r.active,
        authenticated=r.authenticated,
    )


def _retag(r: Round, msg, *, upstream: bool) -> bytes:
    """What an insider (lying server, malicious client) sends: its forgery with a valid MAC."""
    if not r.authenticated:
        return msg.to_bytes()
    client = msg.sender if upstream else msg.receiver
    key = crypto.channel_mac_key(r.keys[client], round_id=msg.round_id, client_id=client, upstream=upstream)
    return dataclasses.replace(msg, auth=crypto.mac(key, msg.signing_payload())).to_bytes()


def _flip(data: bytes, rnd: int) -> bytes:
    if not data:
        return b"\x01"
    b = bytearray(data)
    b[rnd % len(b)] ^= 1 << ((rnd >> 16) % 8)
    return bytes(b)


def _drop_entry(msg, rnd: int):
    field = _LISTS.get(type(msg))
    if field is None or not getattr(msg, field):
        return None
    items = list(getattr(msg, field))
    del items[rnd % len(items)]
    return dataclasses.replace(msg, **{field: tuple(items)})


def _forge_share(msg, rnd: int):
    if not isinstance(msg, UnmaskShares) or not msg.shares:
        return None
    items = list(msg.shares)
    i = rnd % len(items)
    owner, kind, share = items[i]
    limbs = np.frombuffer(share, "<u4").copy()
    limbs[(rnd >> 8) % limbs.size] = (int(limbs[(rnd >> 8) % limbs.size]) + 1 + (rnd >> 12)) % (2**31 - 1)
    items[i] = (owner, kind, limbs.astype("<u4").tobytes())
    return dataclasses.replace(msg, shares=tuple(items))


class Adversary:
    """The intercept hook: applies each action once, records the honest unmasking shares."""

    def __init__(self, r: Round, previous: dict | None) -> None:
        self.r = r
        self.previous = previous or {}
        self.pending = list(r.actions)
        self.seen: dict[tuple[int, str], list[bytes]] = defaultdict(list)
        self.log: dict[tuple[Stage, str, int], bytes] = {}
        self.revealed: dict[int, dict[ShareKind, set[int]]] = defaultdict(lambda: defaultdict(set))

    def __call__(self, stage: Stage, direction: str, u: int, data: bytes) -> list[bytes]:
        self.log.setdefault((stage, direction, u), data)
        if stage is Stage.UNMASKING and direction == Direction.UP:
            for owner, kind, _ in decode_message(data).shares:  # what the honest client reveals
                self.revealed[owner][kind].add(u)
        out = [data]
        for a in list(self.pending):
            if (a.stage, a.direction, a.client) == (stage, direction, u):
                self.pending.remove(a)
                out = self._apply(a, out[0] if out else data)
                event(f"applied {a.kind}")
        self.seen[(u, direction)].append(data)
        return out

    def _apply(self, a: Action, data: bytes) -> list[bytes]:
        r, up = self.r, a.direction == Direction.UP
        if a.kind == "flip":
            return [_flip(data, a.rnd)]
        if a.kind == "flip_body":  # inside the body: keys, shares, masked vectors, lists
            body_len = int.from_bytes(data[20:24], "little")
            if body_len == 0:
                return [_flip(data, a.rnd)]
            b = bytearray(data)
            b[24 + a.rnd % body_len] ^= 1 << ((a.rnd >> 16) % 8)
            return [bytes(b)]
        if a.kind == "drop":
            return []
        if a.kind == "duplicate":
            return [data, data]
        if a.kind == "dup_altered":
            return [data, _flip(data, a.rnd)]
        if a.kind == "replay_round":
            old = self.previous.get((a.stage, a.direction, a.client))
            return [old] if old is not None else [data]
        if a.kind == "replay_stage":
            earlier = self.seen[(a.client, a.direction)]
            return [earlier[a.rnd % len(earlier)]] if earlier else [data]
        msg = decode_message(data)
        if a.kind == "drop_entry":
            forged = _drop_entry(msg, a.rnd)
            return [forged.to_bytes()] if forged is not None else [data]
        if a.kind == "forge_drop_entry":
            if up and r.active:  # a client's signature cannot be forged; drop instead
                return []
            forged = _drop_entry(msg, a.rnd)
            return [_retag(r, forged, upstream=up)] if forged is not None else [data]
        if a.kind == "bad_key":  # a malicious client advertises a low-order X25519 point
            if not isinstance(msg, AdvertiseKeys) or r.active:
                return [data]
            bad = (bytes(32), (1).to_bytes(32, "little"))[(a.rnd >> 1) % 2]
            forged = dataclasses.replace(msg, **{("s_pk", "c_pk")[a.rnd % 2]: bad})
            return [_retag(r, forged, upstream=True)]
        if a.kind == "forge_share":
            forged = _forge_share(msg, a.rnd)
            if forged is None or r.active:
                return [data]
            return [_retag(r, forged, upstream=True)]
        raise AssertionError(a.kind)


def _plain_sum(r: Round, ids) -> np.ndarray:
    acc = np.zeros(r.d, dtype=ring_dtype(r.bits))
    for u in ids:
        acc = acc + r.xs[u]
    if r.bits < 8 * acc.dtype.itemsize:
        acc &= acc.dtype.type((1 << r.bits) - 1)
    return acc


def _check_round(r: Round) -> None:
    graph = r.graph
    previous = None
    if any(a.kind == "replay_round" for a in r.actions):
        recorder = Adversary(dataclasses.replace(r, actions=[]), None)
        run_secagg(r.xs, params=_params(r, 6), graph=graph, intercept=recorder, channel_keys=r.keys)
        previous = recorder.log
    adv = Adversary(r, previous)
    try:
        res = run_secagg(
            r.xs, params=_params(r, 7), graph=graph, intercept=adv,
            channel_keys=r.keys if r.authenticated else None,
        )
    except ProtocolAbortError:
        event("outcome: abort")
    else:
        event("outcome: sum of the survivors")
        assert set(res.survivors) <= set(graph.ids)
        assert np.array_equal(res.sum, _plain_sum(r, res.survivors)), "a wrong sum"
    for owner, kinds in adv.revealed.items():  # never t shares of both secrets of one client
        assert not (
            len(kinds[ShareKind.SELF_MASK]) >= r.t and len(kinds[ShareKind.MASK_KEY]) >= r.t
        ), f"both secrets of client {owner} revealed"


@settings(max_examples=250, **SETTINGS)
@given(r=rounds(kinds=NETWORK_KINDS, authenticated=True))
def test_network_attacker_never_causes_a_wrong_sum(r: Round) -> None:
    _check_round(r)


@settings(max_examples=100, **SETTINGS)
@given(r=rounds(kinds=[*INSIDER_KINDS, "drop"], authenticated=True))
def test_lying_server_or_malicious_client_never_causes_a_wrong_sum(r: Round) -> None:
    _check_round(r)


@settings(max_examples=100, **SETTINGS)
@given(r=rounds(kinds=[*LOSSY_KINDS, "forge_drop_entry"], authenticated=False))
def test_lossy_network_without_macs_never_causes_a_wrong_sum(r: Round) -> None:
    """The view-consistency check alone (no MACs): withheld relay entries and messages."""
    _check_round(r)


@settings(max_examples=60, **SETTINGS)
@given(
    n=st.integers(4, 6),
    active=st.booleans(),
    victim_and_split=st.integers(0, 2**16),
)
def test_equivocating_server_never_unmasks_an_input(n: int, active: bool, victim_and_split: int) -> None:
    """The server tells a random subset that a survivor dropped (with valid MACs)."""
    ids = list(range(1, n + 1))
    graph = CommunicationGraph.complete(ids)
    t = n // 2 + 1
    victim = ids[victim_and_split % n]
    told = {u for u in ids if (victim_and_split >> (8 + u)) & 1 and u != victim}
    xs = {u: np.full(2, u, np.uint32) for u in ids}
    keys = {u: bytes([u]) * 32 for u in ids}
    r = Round(n, 2, 32, t, active, True, graph, xs, keys, [])
    adv = Adversary(r, None)

    def hook(stage: Stage, direction: str, u: int, data: bytes) -> list[bytes]:
        out = adv(stage, direction, u, data)
        if stage is Stage.MASKED_INPUT and direction == Direction.DOWN and u in told:
            msg = decode_message(data)
            lie = dataclasses.replace(msg, survivors=tuple(v for v in msg.survivors if v != victim))
            event("equivocated")
            return [_retag(r, lie, upstream=False)]
        return out

    params = SecAggParams(round_id=7, t=t, d=2, active=active)
    try:
        res = run_secagg(xs, params=params, graph=graph, intercept=hook, channel_keys=keys)
    except ProtocolAbortError:
        event("outcome: abort")
    else:
        event("outcome: sum of the survivors")
        assert np.array_equal(res.sum, _plain_sum(r, res.survivors))
    kinds = adv.revealed[victim]
    assert not (len(kinds[ShareKind.SELF_MASK]) >= t and len(kinds[ShareKind.MASK_KEY]) >= t)


def test_the_threshold_bound_is_what_stops_the_equivocation() -> None:
    """With an insecure t=2 of 4 (explicit flag) the same lie hands the server both secrets of 2."""
    ids = [1, 2, 3, 4]
    xs = {u: np.full(2, u, np.uint32) for u in ids}
    keys = {u: bytes([u]) * 32 for u in ids}
    r = Round(4, 2, 32, 2, False, True, CommunicationGraph.complete(ids), xs, keys, [])
    adv = Adversary(r, None)

    def hook(stage: Stage, direction: str, u: int, data: bytes) -> list[bytes]:
        adv(stage, direction, u, data)
        if stage is Stage.MASKED_INPUT and direction == Direction.DOWN and u in (3, 4):
            lie = dataclasses.replace(decode_message(data), survivors=(1, 3, 4))  # "2 dropped"
            return [_retag(r, lie, upstream=False)]
        return [data]

    params = SecAggParams(round_id=7, t=2, d=2, allow_insecure_threshold=True)
    try:
        run_secagg(xs, params=params, graph=r.graph, intercept=hook, channel_keys=keys)
    except ProtocolAbortError:
        pass
    kinds = adv.revealed[2]
    assert kinds[ShareKind.SELF_MASK] == {1, 2} and kinds[ShareKind.MASK_KEY] == {3, 4}
