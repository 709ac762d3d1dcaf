"""In-memory runner: drives the client and server roles through one round over bytes.

Every message crosses an in-memory "network" as its wire encoding, so the byte
counts are those of a real deployment. A dropout schedule ``{client: stage}`` makes
a client go silent before it sends its message of that stage (and forever after).
An optional ``intercept`` hook sees every message on the wire and may drop,
replace, tamper with or duplicate it (used by the tests for tampering, replay and
reordering).

Examples
--------
>>> import numpy as np
>>> from secure_agg.graph import CommunicationGraph
>>> from secure_agg.messages import Stage
>>> from secure_agg.params import SecAggParams
>>> xs = {u: np.full(3, u, np.uint32) for u in (1, 2, 3, 4)}
>>> r = run_secagg(xs, params=SecAggParams(round_id=0, t=3, d=3),
...                graph=CommunicationGraph.complete(xs), dropouts={2: Stage.MASKED_INPUT})
>>> r.sum.tolist(), r.survivors
([8, 8, 8], (1, 3, 4))
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secure_agg.client import SecAggClient
from secure_agg.crypto import CHANNEL_KEY_BYTES
from secure_agg.errors import ProtocolAbortError, SecAggConfigError
from secure_agg.graph import CommunicationGraph
from secure_agg.messages import Stage
from secure_agg.params import SecAggParams
from secure_agg.server import SecAggServer

__all__ = ["Direction", "Intercept", "RunResult", "run_secagg"]

logger = logging.getLogger(__name__)


class Direction:
    """Names of the two directions on the wire."""

    UP = "client_to_server"
    DOWN = "server_to_client"


Intercept = Callable[[Stage, str, int, bytes], "list[bytes]"]
"""``intercept(stage, direction, client, data) -> messages actually delivered``."""


@dataclass
class RunResult:
    """What one round produced and cost.

    Attributes
    ----------
    sum : numpy.ndarray
        ``(d,)`` ring words: the sum of the survivors' inputs mod ``2^b``.
    survivors : tuple of int
        ``U3``: the clients whose inputs are in the sum.
    sets : dict
        ``U1`` .. ``U5``.
    rejected : dict of int to str
        Clients the server excluded for a bad message, with the reason.
    client_aborts : dict of int to str
        Clients that aborted (bad server message), with the reason.
    bytes_sent : dict of str to dict of str to int
        ``bytes_sent[stage][direction]``: total bytes on the wire.
    server_seconds : float
        Time spent in the server role.
    client_seconds : dict of int to float
        Time spent in each client role.
    n_masks_removed : int
        Keystreams the server expanded while unmasking.
    """

    sum: np.ndarray
    survivors: tuple[int, ...]
    sets: dict[str, tuple[int, ...]]
    rejected: dict[int, str]
    client_aborts: dict[int, str]
    bytes_sent: dict[str, dict[str, int]]
    server_seconds: float
    client_seconds: dict[int, float] = field(default_factory=dict)
    n_masks_removed: int = 0

    def total_bytes(self, direction: str) -> int:
        """Total bytes sent in ``direction`` over all stages."""
        return sum(v.get(direction, 0) for v in self.bytes_sent.values())


def _stage(value: object, *, what: str, active: bool) -> Stage:
    """A dropout stage given as a :class:`Stage`, its name (any case) or its number."""
    valid = [s for s in Stage if active or s is not Stage.CONSISTENCY_CHECK]
    names = ", ".join(s.name for s in valid)
    stage: Stage | None = None
    if isinstance(value, Stage):
        stage = value
    elif isinstance(value, str):
        stage = Stage.__members__.get(value.strip().upper())
    elif isinstance(value, int | np.integer) and not isinstance(value, bool):
        stage = Stage(int(value)) if int(value) in {int(s) for s in Stage} else None
    if stage is None or stage not in valid:
        mode = "" if active else " (CONSISTENCY_CHECK exists only in the active setting)"
        raise SecAggConfigError(
            f"dropout stage {value!r} {what} is not a stage of this round; "
            f"valid: {names}{mode}"
        )
    return stage


class _Wire:
    """The in-memory network of one round: delivers each message through ``intercept`` and counts its bytes."""

    def __init__(self, intercept: Callable[[Any, str, int, bytes], list[bytes]] | None) -> None:
        self.intercept = intercept
        self.bytes_sent: dict[str, dict[str, int]] = defaultdict(lambda: {Direction.UP: 0, Direction.DOWN: 0})

    def send(self, stage: Enum, direction: str, u: int, data: bytes) -> list[bytes]:
        """The messages actually delivered when ``data`` goes to or from client ``u`` in ``stage``."""
        msgs = self.intercept(stage, direction, u, data) if self.intercept else [data]
        self.bytes_sent[stage.name.lower()][direction] += sum(len(m) for m in msgs)
        return msgs

    def totals(self) -> dict[str, dict[str, int]]:
        """``totals()[stage][direction]``: bytes on the wire so far."""
        return {k: dict(v) for k, v in self.bytes_sent.items()}


class _Stopwatch:
    """Seconds spent in the server role and in each client role (added up even when the call raises)."""

    def __init__(self) -> None:
        self.server_seconds = 0.0
        self.client_seconds: dict[int, float] = defaultdict(float)

    @contextmanager
    def server(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.server_seconds += time.perf_counter() - t0

    @contextmanager
    def client(self, u: int) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.client_seconds[u] += time.perf_counter() - t0


def _check_schedule(
    inputs: Mapping[int, np.ndarray],
    graph: CommunicationGraph,
    dropouts: Mapping[int, Stage | str | int] | None,
    *,
    active: bool,
) -> dict[int, Stage]:
    """The dropout schedule as ``{client: Stage}``, after checking the ids of inputs, graph and schedule."""
    if set(inputs) != set(graph.ids):
        raise SecAggConfigError(
            f"input ids {sorted(inputs)} differ from graph ids {sorted(graph.ids)}"
        )
    bad = [u for u in dropouts or {} if u not in inputs]
    if bad:
        raise SecAggConfigError(f"dropout schedule names unknown clients {bad}")
    return {u: _stage(s, what=f"of client {u!r}", active=active) for u, s in (dropouts or {}).items()}


def _roles(
    inputs: Mapping[int, np.ndarray],
    params: SecAggParams,
    graph: CommunicationGraph,
    channel_keys: Mapping[int, bytes] | None,
    model_digests: Mapping[int, bytes] | None = None,
) -> tuple[dict[int, SecAggClient], SecAggServer]:
    """The clients and the server of the round, with fresh channel keys (when none are given) and, in the
    active setting, fresh Ed25519 keys (a simulated PKI); client ``u`` binds ``model_digests[u]``."""
    digests = dict(model_digests or {})
    unknown = sorted(set(digests) - set(graph.ids))
    if unknown:
        raise SecAggConfigError(f"model_digests names clients {unknown} that are not in the graph")
    if params.authenticated and channel_keys is None:
        channel_keys = {u: os.urandom(CHANNEL_KEY_BYTES) for u in graph.ids}
    ckeys = dict(channel_keys or {})
    signing: dict[int, Ed25519PrivateKey] = {}
    if params.active:
        signing = {u: Ed25519PrivateKey.generate() for u in graph.ids}
    vks = {u: k.public_key() for u, k in signing.items()} if params.active else None
    clients = {
        u: SecAggClient(
            u,
            inputs[u],
            params=params,
            signing_key=signing.get(u),
            verify_keys=vks,
            channel_key=ckeys.get(u),
            model_digest=digests.get(u),
        )
        for u in graph.ids
    }
    server = SecAggServer(params=params, graph=graph, verify_keys=vks, channel_keys=ckeys or None)
    return clients, server


def _stages(*, active: bool) -> list[Stage]:
    """The client stages of a round, in order (CONSISTENCY_CHECK only in the active setting)."""
    stages = [Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT]
    if active:
        stages.append(Stage.CONSISTENCY_CHECK)
    stages.append(Stage.UNMASKING)
    return stages


@dataclass
class _SecAggRound:
    """The roles of one round on one wire, with who dropped out or aborted so far."""

    clients: dict[int, SecAggClient]
    server: SecAggServer
    dropouts: dict[int, Stage]
    wire: _Wire
    clock: _Stopwatch = field(default_factory=_Stopwatch)
    aborts: dict[int, str] = field(default_factory=dict)
    silent: set[int] = field(default_factory=set)

    def speaks(self, u: int, stage: Stage) -> bool:
        """Whether client ``u`` still takes part in ``stage``; it goes silent at its scheduled dropout."""
        if u in self.silent or u in self.aborts:
            return False
        if self.dropouts.get(u) == stage:
            self.silent.add(u)
            return False
        return True

    def upload(self, stage: Stage, u: int, data: bytes) -> None:
        """Client ``u``'s message of ``stage``, over the wire to the server."""
        for m in self.wire.send(stage, Direction.UP, u, data):
            with self.clock.server():
                self.server.receive(u, m)

    def advertise_keys(self) -> None:
        """The first stage: every client that speaks sends its public keys unprompted."""
        for u in self.server.graph.ids:
            if self.speaks(u, Stage.ADVERTISE_KEYS):
                with self.clock.client(u):
                    reply = self.clients[u].advertise_keys()
                self.upload(Stage.ADVERTISE_KEYS, u, reply)

    def respond(self, previous: Stage, stage: Stage, outbox: Mapping[int, bytes]) -> None:
        """A later stage: the server's messages closing ``previous`` go down, the clients' replies of ``stage``
        come up. A client the server left out of ``outbox`` sends nothing; one that rejects its message aborts."""
        for u in self.server.graph.ids:
            if not self.speaks(u, stage) or u not in outbox:
                continue
            for m in self.wire.send(previous, Direction.DOWN, u, outbox[u]):
                reply = self.deliver(u, m)
                if reply is not None:
                    self.upload(stage, u, reply)

    def deliver(self, u: int, message: bytes) -> bytes | None:
        """Client ``u`` handles a server message; its reply, or None if it aborted (the reason is recorded)."""
        with self.clock.client(u):
            try:
                return self.clients[u].handle(message)
            except ProtocolAbortError as e:
                self.aborts.setdefault(u, e.reason)
                return None

    def advance(self) -> dict[int, bytes]:
        """The server closes the stage; its messages for the next one, per client.

        A server abort is re-raised with the clients' own abort reasons appended
        (e.g. the model mismatches that emptied the round).
        """
        with self.clock.server():
            try:
                return self.server.advance()
            except ProtocolAbortError as e:
                if not self.aborts:
                    raise
                why = "; ".join(f"{u}: {r}" for u, r in sorted(self.aborts.items()))
                raise ProtocolAbortError(f"{e.reason} (client aborts: {why})") from e


def run_secagg(
    inputs: Mapping[int, np.ndarray],
    *,
    params: SecAggParams,
    graph: CommunicationGraph,
    dropouts: Mapping[int, Stage | str | int] | None = None,
    intercept: Intercept | None = None,
    channel_keys: Mapping[int, bytes] | None = None,
    model_digests: Mapping[int, bytes] | None = None,
) -> RunResult:
    """Run one SecAgg(+) round in memory.

    Parameters
    ----------
    inputs : Mapping[int, numpy.ndarray]
        Client id -> ``(d,)`` ring words (``params.dtype``); ids must match ``graph``.
    params : SecAggParams
        Round parameters (``params.active`` creates Ed25519 keys for a simulated PKI).
    graph : CommunicationGraph
        Communication graph (complete: SecAgg; Harary: SecAgg+).
    dropouts : Mapping[int, Stage | str | int], optional
        Client -> the stage before whose message it goes silent (a :class:`Stage`,
        its name such as ``"MASKED_INPUT"``, or its number).
    intercept : callable, optional
        Network adversary hook, see :data:`Intercept`.
    channel_keys : Mapping[int, bytes], optional
        The clients' 32-byte channel keys (authenticated channels); fresh random
        keys when omitted. A test that plays a lying server passes them to re-tag
        the messages it forges.

    Raises
    ------
    ProtocolAbortError
        If the server aborts (too few clients, unverifiable reconstruction).
    SecAggConfigError
        For ids that differ from the graph's or an unknown dropout stage.
    """
    schedule = _check_schedule(inputs, graph, dropouts, active=params.active)
    clients, server = _roles(inputs, params, graph, channel_keys, model_digests)
    rnd = _SecAggRound(clients=clients, server=server, dropouts=schedule, wire=_Wire(intercept))
    rnd.advertise_keys()
    outbox = rnd.advance()
    for previous, stage in itertools.pairwise(_stages(active=params.active)):
        rnd.respond(previous, stage, outbox)
        outbox = rnd.advance()
    res = server.result()
    return RunResult(
        sum=res.sum,
        survivors=res.survivors,
        sets=res.sets,
        rejected=res.rejected,
        client_aborts=rnd.aborts,
        bytes_sent=rnd.wire.totals(),
        server_seconds=rnd.clock.server_seconds,
        client_seconds=dict(rnd.clock.client_seconds),
        n_masks_removed=res.n_masks_removed,
    )
