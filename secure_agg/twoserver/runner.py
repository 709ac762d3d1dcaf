"""In-memory driver of one two-server round: every frame is real bytes, counted and timed.

A ``network`` hook sees each frame on its way (``channel`` is ``"client"``, ``"dealer"``
or ``"peer"``) and may return it, change it, or return ``None`` to withhold it: the
adversarial tests tamper, truncate, replay and withhold through it.

Examples
--------
>>> import numpy as np, torch
>>> from fl_core.geometry import Decision, GeometricRule, Needs
>>> from fl_core.aggregation import Aggregator
>>> class Mean(GeometricRule, Aggregator):
...     def geometry_needs(self): return Needs.NORMS
...     def decide(self, g, w, ctx): return Decision(coef=w.double() / w.sum(), kept=torch.ones(g.n, dtype=bool))
...     def _aggregate(self, u, w, ctx): raise NotImplementedError
>>> rows = np.array([[0.5, -1.0], [1.5, 3.0], [1.0, 1.0]])
>>> out, cost = TwoServerRound(bound=8.0, d=2, rule=Mean()).run(rows, np.ones(3), round_id=1)
>>> np.round(out.aggregate, 5).tolist(), out.accepted.tolist()
([1.0, 1.0], [True, True, True])
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fl_core.aggregation import Aggregator, RoundContext
from fl_core.errors import ConfigError
from fl_core.geometry import supports_geometry
from secure_agg.twoserver.client import ShareClient
from secure_agg.twoserver.dealer import Dealer
from secure_agg.twoserver.params import DEALER, SERVERS, Party, TwoServerParams
from secure_agg.twoserver.server import ServerOutcome, ShareServer, online_steps

__all__ = ["Network", "RoundCost", "TwoServerRound"]

#: ``network(channel, sender, receiver, frame) -> frame or None``.
Network = Callable[[str, int, int, bytes], bytes | None]


@dataclass
class RoundCost:
    """Seconds and bytes of one round, per role and channel."""

    client_seconds: list[float] = field(default_factory=list)
    server_online: list[float] = field(default_factory=lambda: [0.0, 0.0])
    server_offline: list[float] = field(default_factory=lambda: [0.0, 0.0])
    dealer_seconds: float = 0.0
    client_bytes: list[int] = field(default_factory=list)
    peer_bytes: list[int] = field(default_factory=lambda: [0, 0])
    dealer_bytes: list[int] = field(default_factory=lambda: [0, 0])


def _through(network: Network | None, channel: str, sender: int, receiver: int, frame: bytes) -> bytes | None:
    return frame if network is None else network(channel, sender, receiver, frame)


class TwoServerRound:
    """Parties of the protocol, kept across rounds (keys are long-lived), and a driver for one round.

    Parameters
    ----------
    bound : float
        Largest valid update norm (:class:`~secure_agg.twoserver.params.TwoServerParams`).
    d : int
        Update length.
    rule : Aggregator
        A geometric rule (:func:`fl_core.geometry.supports_geometry`).
    frac_bits : int, optional
        Fixed-point fractional bits (default: the most ``bound`` allows).
    seed : int
        Seed of the servers' noise generators (the protocol's keys and seeds come from the OS).
    rejected_are_byzantine : bool
        The rule decides with ``f`` lowered by the clients rejected for their norm (default;
        right when ``bound`` is above every honest norm). ``False`` keeps ``f``.
    """

    def __init__(self, *, bound: float, d: int, rule: Aggregator, frac_bits: int | None = None, seed: int = 0,
                 rejected_are_byzantine: bool = True) -> None:
        self.params = TwoServerParams.from_bound(d=d, bound=bound, frac_bits=frac_bits)
        if not supports_geometry(rule):
            raise ConfigError(f"{type(rule).__name__} cannot run under two-server sharing: it does not decide from "
                              "norms and inner products (fl_core.geometry.GeometricRule)")
        if not isinstance(rejected_are_byzantine, bool):
            raise ConfigError(f"rejected_are_byzantine must be a bool, got {rejected_are_byzantine!r}")
        self.rule, self.rejected_are_byzantine = rule, rejected_are_byzantine
        self.servers = (Party(SERVERS[0]), Party(SERVERS[1]))
        self.dealer = Dealer(party=Party(DEALER), server_publics=(self.servers[0].public, self.servers[1].public))
        self.clients: dict[int, Party] = {}
        self._noise = np.random.SeedSequence(seed)
        #: Both servers' outcomes of the latest round (they must agree; the tests check it).
        self.outcomes: tuple[ServerOutcome, ServerOutcome] | None = None

    def client(self, cid: int) -> ShareClient:
        """Client ``cid``'s role (its key is made on first use and registered with the servers)."""
        party = self.clients.setdefault(cid, Party(cid))
        pubs = (self.servers[0].public, self.servers[1].public)
        return ShareClient(party=party, server_publics=pubs, frac_bits=self.params.frac_bits)

    def run(self, rows: np.ndarray, weights: np.ndarray, *, round_id: int, client_ids: tuple[int, ...] | None = None,
            ctx: RoundContext | None = None, ring_rows: dict[int, np.ndarray] | None = None,
            network: Network | None = None) -> tuple[ServerOutcome, RoundCost]:
        """One round over ``rows`` ``(n, d)``; ``ring_rows`` replaces some clients' ring vectors (malicious input).

        Returns S0's outcome (S1's is identical; the tests check it) and the round's cost.
        Raises :class:`~secure_agg.errors.ProtocolAbortError` when the round cannot finish correctly.
        """
        ids = tuple(range(len(rows))) if client_ids is None else tuple(client_ids)
        cost = RoundCost()
        clients = {cid: self.client(cid) for cid in ids}
        servers = [self._server(k, round_id, ids, ctx) for k in range(2)]
        # offline: the dealer's triples for the sampled cohort
        frames = self.dealer.triples(round_id=round_id, ids=ids, d=self.params.d, tags=servers[0].tags)
        cost.dealer_seconds = self.dealer.seconds
        self.dealer.seconds = 0.0
        for k, frame in enumerate(frames):
            cost.dealer_bytes[k] = len(frame)
            got = _through(network, "dealer", DEALER, SERVERS[k], frame)
            if got is not None:
                servers[k].receive_triples(got)
        self._upload(clients, rows, weights, ring_rows or {}, servers, round_id, cost, network)
        self.outcomes = self._online(servers, cost, network)
        outcome = self.outcomes[0]
        for k in range(2):
            cost.server_online[k] = servers[k].online_seconds
            cost.server_offline[k] = servers[k].offline_seconds
        return outcome, cost

    def _server(self, k: int, round_id: int, ids: tuple[int, ...], ctx: RoundContext | None) -> ShareServer:
        noise = np.random.default_rng(self._noise.spawn(1)[0])
        return ShareServer(index=k, party=self.servers[k], peer_public=self.servers[1 - k].public,
                           dealer_public=self.dealer.party.public,
                           client_publics={c: self.clients[c].public for c in ids}, round_id=round_id,
                           params=self.params, rule=self.rule, ctx=ctx, noise=noise,
                           rejected_are_byzantine=self.rejected_are_byzantine)

    def _upload(self, clients: dict[int, ShareClient], rows: np.ndarray, weights: np.ndarray,
                ring_rows: dict[int, np.ndarray], servers: list[ShareServer], round_id: int, cost: RoundCost,
                network: Network | None) -> None:
        for i, (cid, client) in enumerate(clients.items()):
            start = time.perf_counter()
            if i in ring_rows:
                frames = client.share_ring(ring_rows[i], weight=float(weights[i]), round_id=round_id)
            else:
                frames = client.share(rows[i], weight=float(weights[i]), round_id=round_id)
            cost.client_seconds.append(time.perf_counter() - start)
            cost.client_bytes.append(sum(len(f) for f in frames))
            for k, frame in enumerate(frames):
                got = _through(network, "client", cid, SERVERS[k], frame)
                if got is not None:
                    servers[k].receive_client(cid, got)

    @staticmethod
    def _online(servers: list[ShareServer], cost: RoundCost,
                network: Network | None) -> tuple[ServerOutcome, ServerOutcome]:
        outcomes: list = [None, None]
        for _, send, receive in online_steps(servers[0].opening_steps):
            sent = [send(s) for s in servers]
            for k in range(2):
                cost.peer_bytes[k] += len(sent[k])
                got = _through(network, "peer", SERVERS[k], SERVERS[1 - k], sent[k])
                outcomes[1 - k] = receive(servers[1 - k], got if got is not None else b"")
        return outcomes[0], outcomes[1]
