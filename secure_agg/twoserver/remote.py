"""S0's side of a round whose S1 and dealer are other processes (:mod:`secure_agg.twoserver.service`).

:class:`RemoteParty` is a sealed link to S1 or the dealer; :class:`RemoteRound` runs one
round with S0 in this process: it sets the round up on S1 (S1 checks that the spec
matches its own configuration), asks the dealer for triples (S1's are relayed sealed),
relays each client's sealed share to S1, then drives the online steps
(:func:`~secure_agg.twoserver.server.online_steps`) over the link. Before the aggregate
is opened both servers' decision digests must agree. Any failure -- a refused spec, a
closed or timed-out link, a bad record, S1 or the dealer reporting an error -- raises
:class:`~secure_agg.errors.ProtocolAbortError`: the round has no aggregate, never a wrong one.

Examples
--------
See :mod:`secure_agg.twoserver.service` and ``tests/secure_agg/test_twoserver_remote.py``.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fl_core.aggregation import Aggregator
from secure_agg.errors import ProtocolAbortError
from secure_agg.twoserver.link import Link, LinkError
from secure_agg.twoserver.params import DEALER, SERVERS, Party, TwoServerParams
from secure_agg.twoserver.server import MISSING_SHARE, ServerOutcome, ShareServer, decision_digest, online_steps
from secure_agg.twoserver.service import round_context

__all__ = ["RemoteCost", "RemoteParty", "RemoteRound"]

logger = logging.getLogger(__name__)


class RemoteParty:
    """A sealed link from S0 to the party ``ident`` at ``address`` (connected on first use).

    Parameters
    ----------
    address : (str, int)
        The party's host and port.
    own : Party
        S0's long-term key.
    ident : int
        The party's id (``SERVERS[1]`` or ``DEALER``).
    public : bytes, optional
        The party's X25519 public key; when given (pinned), another key is refused.
    timeout_s : float
        Longest wait for one answer.
    """

    def __init__(self, address: tuple[str, int], *, own: Party, ident: int, public: bytes | None = None,
                 timeout_s: float = 300.0) -> None:
        if ident not in (SERVERS[1], DEALER):
            raise ValueError(f"a remote party is S1 ({SERVERS[1]:#x}) or the dealer ({DEALER:#x}), got {ident:#x}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.address, self.own, self.ident, self.pinned = (str(address[0]), int(address[1])), own, ident, public
        self.timeout_s = float(timeout_s)
        self._link: Link | None = None
        self.bytes_sent = self.bytes_received = 0

    @property
    def public(self) -> bytes:
        """The party's public key (connects to learn it when it is not pinned)."""
        return self.pinned if self.pinned is not None else self._open().peer_public

    def _open(self) -> Link:
        if self._link is None:
            try:
                sock = socket.create_connection(self.address, timeout=self.timeout_s)
            except OSError as e:
                raise LinkError(f"cannot reach party {self.ident:#x} at {self.address}: {e}") from e
            self._link = Link.connect(sock, self.own, peer_ident=self.ident, peer_public=self.pinned,
                                      timeout_s=self.timeout_s)
        return self._link

    def call(self, kind: str, header: dict[str, Any] | None = None,
             blobs: list[bytes] | tuple[bytes, ...] = ()) -> tuple[dict[str, Any], list[bytes]]:
        """One request and its answer; an error answer or a broken link raises (and drops the link)."""
        try:
            link = self._open()
            sent, got = link.bytes_sent, link.bytes_received
            link.send(kind, header, blobs)
            answer, info, out = link.recv()
            self.bytes_sent += link.bytes_sent - sent
            self.bytes_received += link.bytes_received - got
        except LinkError:
            self.close()
            raise
        if answer == "error":
            self.close()
            raise ProtocolAbortError(f"party {self.ident:#x} aborted {kind!r}: {info.get('reason')}")
        return info, out

    def triples(self, *, round_id: int, ids: tuple[int, ...], d: int, tags: tuple[int, ...],
                server_publics: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
        """The dealer's frames for S0 and S1."""
        _, frames = self.call("triples", {"round_id": round_id, "ids": list(ids), "d": d, "tags": list(tags),
                                          "server_publics": [p.hex() for p in server_publics]})
        if len(frames) != 2:
            raise ProtocolAbortError(f"the dealer answered {len(frames)} frames, expected 2")
        return frames[0], frames[1]

    def close(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None


@dataclass
class RemoteCost:
    """Seconds and bytes of one remote round, seen from S0."""

    s0_online: float = 0.0
    s0_offline: float = 0.0
    seconds: float = 0.0
    bytes_to_s1: int = 0
    bytes_from_s1: int = 0
    bytes_from_dealer: int = 0
    client_bytes: list[int] = field(default_factory=list)


class RemoteRound:
    """S0 here, S1 and the dealer behind links: one round at a time.

    Parameters
    ----------
    params : TwoServerParams
        Fixed point and validation (S1 checks its own are the same).
    rule : Aggregator
        The geometric rule (S1 checks it runs the same, by ``repr``).
    party : Party
        S0's long-term key (ident ``SERVERS[0]``).
    s1, dealer : RemoteParty
        The links.
    rejected_are_byzantine : bool
        As :class:`~secure_agg.twoserver.aggregator.TwoServerAggregator`.
    noise : np.random.Generator
        S0's generator of its half of the rule's noise.
    """

    def __init__(self, *, params: TwoServerParams, rule: Aggregator, party: Party, s1: RemoteParty,
                 dealer: RemoteParty, rejected_are_byzantine: bool, noise: np.random.Generator) -> None:
        if party.ident != SERVERS[0]:
            raise ValueError(f"S0's party must have ident {SERVERS[0]:#x}, got {party.ident:#x}")
        self.params, self.rule, self.party, self.s1, self.dealer = params, rule, party, s1, dealer
        self.rejected_are_byzantine, self.noise = rejected_are_byzantine, noise

    def run(self, *, round_id: int, spec: dict[str, Any], client_publics: dict[int, bytes],
            frames: dict[int, tuple[bytes, bytes]], global_params: np.ndarray) -> tuple[ServerOutcome, RemoteCost]:
        """One round over the clients in ``client_publics`` (protocol ids; ``frames`` may miss some).

        ``spec`` carries the rule's context: ``round_idx``, ``weights`` (per sampled id, in
        id order) and ``generator_seed``; both servers build the same context from it.
        """
        start, cost = time.perf_counter(), RemoteCost()
        sent0, got0 = self.s1.bytes_sent, self.s1.bytes_received
        ids = tuple(sorted(client_publics))
        spec = {**spec, "ids": list(ids)}
        ctx = round_context(spec, global_params)
        refs = self.rule.references(self.params.d, ctx).double().cpu().numpy()  # type: ignore[attr-defined]
        s0 = ShareServer(index=0, party=self.party, peer_public=self.s1.public, dealer_public=self.dealer.public,
                         client_publics=client_publics, round_id=round_id, params=self.params, rule=self.rule,
                         ctx=ctx, noise=self.noise, rejected_are_byzantine=self.rejected_are_byzantine,
                         references=refs)
        self._setup_s1(round_id, spec, client_publics, global_params, refs)
        got_dealer = self.dealer.bytes_received
        f0, f1 = self.dealer.triples(round_id=round_id, ids=ids, d=self.params.d, tags=s0.tags,
                                     server_publics=(self.party.public, self.s1.public))
        cost.bytes_from_dealer = self.dealer.bytes_received - got_dealer
        s0.receive_triples(f0)
        self.s1.call("triples", blobs=[f1])
        for cid in ids:
            if cid in frames:
                s0.receive_client(cid, frames[cid][0])
                self.s1.call("client", {"id": cid}, [frames[cid][1]])
                cost.client_bytes.append(len(frames[cid][0]) + len(frames[cid][1]))
        outcome = self._online(s0)
        cost.s0_online, cost.s0_offline = s0.online_seconds, s0.offline_seconds
        cost.bytes_to_s1 = self.s1.bytes_sent - sent0
        cost.bytes_from_s1 = self.s1.bytes_received - got0
        cost.seconds = time.perf_counter() - start
        return outcome, cost

    def _setup_s1(self, round_id: int, spec: dict[str, Any], publics: dict[int, bytes], global_params: np.ndarray,
                  refs: np.ndarray) -> None:
        ids = sorted(publics)
        header = {**spec, "round_id": round_id, "d": self.params.d, "bound": self.params.bound,
                  "frac_bits": self.params.frac_bits, "rule": repr(self.rule),
                  "rejected_are_byzantine": self.rejected_are_byzantine, "dealer_public": self.dealer.public.hex(),
                  "client_publics": [publics[i].hex() for i in ids]}
        glob = np.ascontiguousarray(global_params, dtype=np.float32).tobytes()
        self.s1.call("round", header, [glob, np.ascontiguousarray(refs, dtype=np.float64).tobytes()])

    def _online(self, s0: ShareServer) -> ServerOutcome:
        outcome: Any = None
        for name, send, receive in online_steps(s0.opening_steps):
            mine = send(s0)
            info, frames = self.s1.call("step", {"name": name}, [bytes(mine)])
            if len(frames) != 1:
                raise ProtocolAbortError(f"S1 answered step {name!r} with {len(frames)} frames")
            outcome = receive(s0, frames[0])
            if name == "geometry":
                own = decision_digest(s0.decision, s0.cohort, s0.accepted)
                if info.get("decision") != own:
                    raise ProtocolAbortError("S0 and S1 took different decisions on the same opened values "
                                             "(different rule state or context): the aggregate is not opened")
            if name == "aggregate":  # S1's reasons for the clients it refused (S0 only saw them missing)
                for cid, why in info.get("dropped", {}).items():
                    if outcome.dropped.get(int(cid), MISSING_SHARE) == MISSING_SHARE:
                        outcome.dropped[int(cid)] = f"S1: {why}"
        return outcome
