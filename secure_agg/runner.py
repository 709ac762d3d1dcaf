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

import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

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


def run_secagg(
    inputs: Mapping[int, np.ndarray],
    *,
    params: SecAggParams,
    graph: CommunicationGraph,
    dropouts: Mapping[int, Stage | str | int] | None = None,
    intercept: Intercept | None = None,
    channel_keys: Mapping[int, bytes] | None = None,
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
    if set(inputs) != set(graph.ids):
        raise SecAggConfigError(
            f"input ids {sorted(inputs)} differ from graph ids {sorted(graph.ids)}"
        )
    bad = [u for u in dropouts or {} if u not in inputs]
    if bad:
        raise SecAggConfigError(f"dropout schedule names unknown clients {bad}")
    dropouts = {
        u: _stage(s, what=f"of client {u!r}", active=params.active) for u, s in (dropouts or {}).items()
    }
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
        )
        for u in graph.ids
    }
    server = SecAggServer(params=params, graph=graph, verify_keys=vks, channel_keys=ckeys or None)
    nbytes: dict[str, dict[str, int]] = defaultdict(lambda: {Direction.UP: 0, Direction.DOWN: 0})
    ctime: dict[int, float] = defaultdict(float)
    stime = 0.0
    aborts: dict[int, str] = {}
    silent: set[int] = set()

    def wire(stage: Stage, direction: str, u: int, data: bytes) -> list[bytes]:
        msgs = intercept(stage, direction, u, data) if intercept else [data]
        nbytes[stage.name.lower()][direction] += sum(len(m) for m in msgs)
        return msgs

    def upload(stage: Stage, u: int, data: bytes) -> None:
        nonlocal stime
        for m in wire(stage, Direction.UP, u, data):
            t0 = time.perf_counter()
            server.receive(u, m)
            stime += time.perf_counter() - t0

    stages = [Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT]
    if params.active:
        stages.append(Stage.CONSISTENCY_CHECK)
    stages.append(Stage.UNMASKING)
    outbox: dict[int, bytes] = {}
    for i, stage in enumerate(stages):
        for u in graph.ids:
            if u in silent or u in aborts:
                continue
            if dropouts.get(u) == stage:
                silent.add(u)
                continue
            if i == 0:
                t0 = time.perf_counter()
                reply = clients[u].advertise_keys()
                ctime[u] += time.perf_counter() - t0
                upload(stage, u, reply)
                continue
            if u not in outbox:
                continue  # the server did not include u in this stage
            for m in wire(stages[i - 1], Direction.DOWN, u, outbox[u]):
                t0 = time.perf_counter()
                try:
                    reply = clients[u].handle(m)
                except ProtocolAbortError as e:
                    aborts.setdefault(u, e.reason)
                    reply = None
                finally:
                    ctime[u] += time.perf_counter() - t0
                if reply is not None:
                    upload(stage, u, reply)
        t0 = time.perf_counter()
        try:
            outbox = server.advance()
        finally:
            stime += time.perf_counter() - t0
    res = server.result()
    return RunResult(
        sum=res.sum,
        survivors=res.survivors,
        sets=res.sets,
        rejected=res.rejected,
        client_aborts=aborts,
        bytes_sent={k: dict(v) for k, v in nbytes.items()},
        server_seconds=stime,
        client_seconds=dict(ctime),
        n_masks_removed=res.n_masks_removed,
    )
