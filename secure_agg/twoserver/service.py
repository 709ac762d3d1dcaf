"""S1 and the dealer as their own processes: a TCP service S0 drives over a sealed link.

In a deployment the three roles of the two-server protocol belong to three operators:
S0 (in the Flower ``ServerApp``, :mod:`secure_agg.flower_twoserver`), S1 and the dealer.
:class:`PartyService` runs S1 (:class:`S1Role`) or the dealer (:class:`DealerRole`)
behind a :class:`~secure_agg.twoserver.link.Link` on ``127.0.0.1`` by default; S0 is the
hub, so S1 and the dealer never talk to each other and every frame for S1 that S0
relays (a client's share, the dealer's triples) is sealed to S1, unreadable by S0.

**S1 decides for itself.** Its operator configures the rule, the norm bound, the fixed
point and whether rejected clients count toward ``f``; a round whose spec from S0 differs
is refused with a :class:`~secure_agg.errors.ProtocolAbortError` naming the difference.
Before the aggregate is opened S1 reports a digest of its decision (cohort, accepted
clients, coefficients, noise); S0 aborts when it differs from its own, so the servers
never combine shares of two different aggregates. S1's half of FLAME's noise comes from
its own OS entropy unless a seed is given (tests).

Start one from the command line (``python -m secure_agg.twoserver.serve --help``) or in
code::

    service = PartyService(S1Role(party=Party(SERVERS[1]), bound=2.0, rule=Krum(f=2)), port=7461)
    service.serve()

Examples
--------
>>> import threading
>>> from secure_agg.twoserver.params import DEALER, Party
>>> service = PartyService(DealerRole(party=Party(DEALER)))
>>> service.address[0]
'127.0.0.1'
>>> t = threading.Thread(target=service.serve, kwargs={"max_connections": 1}); t.start()
>>> from secure_agg.twoserver.remote import RemoteParty
>>> from secure_agg.twoserver.params import SERVERS
>>> dealer = RemoteParty(service.address, own=Party(SERVERS[0]), ident=DEALER, timeout_s=10.0)
>>> s1 = Party(SERVERS[1])
>>> f0, f1 = dealer.triples(round_id=1, ids=(0, 1), d=8, tags=(0,), server_publics=(dealer.own.public, s1.public))
>>> len(f0), len(f1)
(159, 143)
>>> dealer.close(); t.join(); service.close()
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

import numpy as np
import torch

from fl_core.aggregation import Aggregator, RoundContext
from fl_core.errors import ConfigError, FlsecError
from fl_core.geometry import supports_geometry
from secure_agg.errors import ProtocolAbortError
from secure_agg.twoserver.dealer import Dealer
from secure_agg.twoserver.link import Link, LinkError
from secure_agg.twoserver.params import DEALER, SERVERS, Party, TwoServerParams
from secure_agg.twoserver.server import ShareServer, decision_digest, online_steps

__all__ = ["DealerRole", "PartyService", "Reply", "S1Role", "round_context"]

logger = logging.getLogger(__name__)

#: ``(kind, header, blobs)`` a role answers a record with.
Reply = tuple[str, dict[str, Any], list[bytes]]


def round_context(spec: dict[str, Any], global_params: np.ndarray) -> RoundContext:
    """The rule's :class:`RoundContext` built identically by both servers from the round's spec.

    Examples
    --------
    >>> ctx = round_context({"round_idx": 3, "ids": [0, 1], "weights": [2.0, 1.0], "generator_seed": 7},
    ...                     np.zeros(4, np.float32))
    >>> ctx.round_idx, ctx.client_ids, ctx.weights.tolist()
    (3, (0, 1), [2.0, 1.0])
    """
    gen = torch.Generator().manual_seed(int(spec["generator_seed"]))
    return RoundContext(int(spec["round_idx"]), tuple(int(i) for i in spec["ids"]),
                        torch.tensor(spec["weights"], dtype=torch.float32),
                        torch.from_numpy(np.asarray(global_params, dtype=np.float32).copy()), gen)


class S1Role:
    """Server S1, configured by its own operator.

    Parameters
    ----------
    party : Party
        S1's long-term X25519 key (ident ``SERVERS[1]``).
    bound : float
        Largest valid update norm.
    rule : Aggregator
        The geometric rule S1 agrees to run (:func:`fl_core.geometry.supports_geometry`).
    frac_bits : int, optional
        Fixed-point fractional bits (default: the most ``bound`` allows).
    rejected_are_byzantine : bool
        As :class:`~secure_agg.twoserver.aggregator.TwoServerAggregator`.
    noise_seed : int, optional
        Seed of S1's half of the rule's noise; default: OS entropy (S0 must not know it).
    """

    ident = SERVERS[1]

    def __init__(self, *, party: Party, bound: float, rule: Aggregator, frac_bits: int | None = None,
                 rejected_are_byzantine: bool = True, noise_seed: int | None = None) -> None:
        if party.ident != SERVERS[1]:
            raise ConfigError(f"S1's party must have ident {SERVERS[1]:#x}, got {party.ident:#x}")
        if not supports_geometry(rule):
            raise ConfigError(f"{type(rule).__name__} cannot run under two-server sharing (not a geometric rule)")
        TwoServerParams.from_bound(d=1, bound=bound, frac_bits=frac_bits)
        self.party, self.bound, self.rule, self.frac_bits = party, float(bound), rule, frac_bits
        self.rejected_are_byzantine = bool(rejected_are_byzantine)
        self._noise = np.random.default_rng(noise_seed)
        self.server: ShareServer | None = None
        self._steps: list = []

    def _check_spec(self, spec: dict[str, Any], params: TwoServerParams) -> None:
        mine = {"bound": self.bound, "frac_bits": params.frac_bits, "rule": repr(self.rule),
                "rejected_are_byzantine": self.rejected_are_byzantine}
        for key, value in mine.items():
            if spec.get(key) != value:
                raise ProtocolAbortError(f"S1 refuses the round: S0 has {key}={spec.get(key)!r}, S1 is configured "
                                         f"with {key}={value!r}")

    def handle(self, kind: str, header: dict[str, Any], blobs: list[bytes], peer_public: bytes) -> Reply:
        if kind == "round":
            return self._round(header, blobs, peer_public)
        if self.server is None:
            raise ProtocolAbortError(f"S1: {kind!r} before a round was set up")
        if kind == "triples":
            self.server.receive_triples(blobs[0])
            return "ok", {}, []
        if kind == "client":
            self.server.receive_client(int(header["id"]), blobs[0])
            return "ok", {}, []
        if kind == "step":
            return self._step(str(header["name"]), blobs[0])
        raise ProtocolAbortError(f"S1: unknown request {kind!r}")

    def _round(self, spec: dict[str, Any], blobs: list[bytes], peer_public: bytes) -> Reply:
        self.server = None
        params = TwoServerParams.from_bound(d=int(spec["d"]), bound=self.bound, frac_bits=self.frac_bits)
        self._check_spec(spec, params)
        glob = np.frombuffer(blobs[0], dtype=np.float32)
        refs = np.frombuffer(blobs[1], dtype=np.float64)
        if glob.shape != (params.d,) or refs.size % params.d:
            raise ProtocolAbortError(f"S1: global parameters of {glob.size} and references of {refs.size} values "
                                     f"for d={params.d}")
        publics = {int(i): bytes.fromhex(h) for i, h in zip(spec["ids"], spec["client_publics"], strict=True)}
        self.server = ShareServer(index=1, party=self.party, peer_public=peer_public,
                                  dealer_public=bytes.fromhex(spec["dealer_public"]), client_publics=publics,
                                  round_id=int(spec["round_id"]), params=params, rule=self.rule,
                                  ctx=round_context(spec, glob), noise=self._noise,
                                  rejected_are_byzantine=self.rejected_are_byzantine,
                                  references=refs.reshape(-1, params.d))
        self._steps = online_steps(self.server.opening_steps)
        return "ok", {"tags": list(self.server.tags)}, []

    def _step(self, name: str, frame: bytes) -> Reply:
        server = self.server
        assert server is not None
        if not self._steps or self._steps[0][0] != name:
            expected = self._steps[0][0] if self._steps else "nothing"
            raise ProtocolAbortError(f"S1: step {name!r} out of order (expected {expected})")
        _, send, receive = self._steps.pop(0)
        out = send(server)
        result = receive(server, frame)
        info: dict[str, Any] = {}
        if name == "geometry":
            info["decision"] = decision_digest(server.decision, server.cohort, server.accepted)
        if name == "aggregate":
            observe = getattr(self.rule, "observe", None)
            if callable(observe):
                observe(torch.from_numpy(result.aggregate))  # type: ignore[union-attr]
            info["dropped"] = {str(k): v for k, v in result.dropped.items()}  # type: ignore[union-attr]
            self.server = None
        return "step", info, [out]


class DealerRole:
    """The dealer: triples for the servers whose keys S0 names (semi-honest, sees no data)."""

    ident = DEALER

    def __init__(self, *, party: Party) -> None:
        if party.ident != DEALER:
            raise ConfigError(f"the dealer's party must have ident {DEALER:#x}, got {party.ident:#x}")
        self.dealer = Dealer(party=party, server_publics=None)
        self.party = party

    def handle(self, kind: str, header: dict[str, Any], blobs: list[bytes], peer_public: bytes) -> Reply:
        if kind != "triples":
            raise ProtocolAbortError(f"dealer: unknown request {kind!r}")
        publics = tuple(bytes.fromhex(h) for h in header["server_publics"])
        if len(publics) != 2 or publics[0] != peer_public:
            raise ProtocolAbortError("dealer: S0's key in the request is not the key of the link it came on")
        self.dealer.server_publics = publics  # type: ignore[assignment]
        frames = self.dealer.triples(round_id=int(header["round_id"]), ids=tuple(int(i) for i in header["ids"]),
                                     d=int(header["d"]), tags=tuple(int(t) for t in header["tags"]))
        return "triples", {}, [bytes(f) for f in frames]


class PartyService:
    """A TCP service for one role: each connection in its own thread, requests answered one at a time.

    A new round on any connection replaces S1's unfinished one, so a stale connection
    (an S0 that restarted) never blocks the next.

    Parameters
    ----------
    role : S1Role or DealerRole
        What this process is.
    host, port : str, int
        Where to listen (default ``127.0.0.1`` and a free port: see :attr:`address`).
    peer_public : bytes, optional
        S0's X25519 public key; when given, any other initiator is refused.
    timeout_s : float
        Longest wait for one record from S0 before the connection is dropped.
    """

    def __init__(self, role: S1Role | DealerRole, *, host: str = "127.0.0.1", port: int = 0,
                 peer_public: bytes | None = None, timeout_s: float = 300.0) -> None:
        if not timeout_s > 0:
            raise ConfigError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.role, self.peer_public, self.timeout_s = role, peer_public, float(timeout_s)
        self._sock = socket.create_server((host, port))
        self._closed = threading.Event()
        self._lock = threading.Lock()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    @property
    def public(self) -> bytes:
        return self.role.party.public

    def serve(self, *, max_connections: int | None = None) -> None:
        """Answer S0's connections until :meth:`close` (or ``max_connections`` sessions have ended)."""
        sessions: list[threading.Thread] = []
        while not self._closed.is_set() and (max_connections is None or len(sessions) < max_connections):
            try:
                conn, _ = self._sock.accept()
            except OSError:
                break
            t = threading.Thread(target=self._serve_one, args=(conn,), daemon=True)
            t.start()
            sessions.append(t)
        for t in sessions if max_connections is not None else ():
            t.join()

    def _serve_one(self, conn: socket.socket) -> None:
        with conn:
            self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        try:
            link = Link.accept(conn, self.role.party, peer_public=self.peer_public, timeout_s=self.timeout_s)
        except LinkError as e:
            logger.warning("refused a connection: %s", e)
            return
        while True:
            try:
                kind, header, blobs = link.recv()
            except LinkError as e:
                logger.info("link closed: %s", e)
                return
            with self._lock:
                try:
                    reply = self.role.handle(kind, header, blobs, link.peer_public)
                except (FlsecError, KeyError, ValueError, IndexError, TypeError) as e:
                    logger.warning("%s failed: %s", kind, e)
                    if isinstance(self.role, S1Role):
                        self.role.server = None
                    reply = ("error", {"reason": f"{type(e).__name__}: {e}"}, [])
            try:
                link.send(*reply)
            except LinkError as e:
                logger.info("link closed: %s", e)
                return

    def close(self) -> None:
        self._closed.set()
        try:
            self._sock.close()
        except OSError:
            pass

