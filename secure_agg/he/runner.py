"""In-memory runner of one HE aggregation round, over real wire bytes.

Same shape as :func:`secure_agg.runner.run_secagg`: every message crosses an
in-memory network as its wire encoding (so byte counts are real), a dropout
schedule ``{client: stage}`` silences a client before its message of that stage,
and an ``intercept`` hook may drop, replace or tamper with any message. The result
is a :class:`~secure_agg.runner.RunResult` (the type SecAgg's runner returns) with
the decrypted weighted mean added.

Stages: ``SETUP`` (key holder -> server: public context), ``ENCRYPTED_INPUT``
(client -> server), ``AGGREGATE`` (server -> every contributor: the ciphertext
sum, counted once per receiver). A client dropping at ``ENCRYPTED_INPUT`` is not
in the sum; one dropping at ``AGGREGATE`` is in it but does not fetch the result.

Examples
--------
>>> import numpy as np
>>> from secure_agg.he.keys import KeyHolder
>>> from secure_agg.he.params import select_params
>>> p = select_params(d=4, n=3, clip=1.0, weight_bound=6, precision_bits=12)
>>> xs = {u: np.full(4, 0.1 * u) for u in (1, 2, 3)}
>>> r = run_he(xs, weights={1: 1, 2: 2, 3: 3}, params=p, key_holder=KeyHolder(p),
...            dropouts={2: HEStage.ENCRYPTED_INPUT})
>>> r.survivors, np.round(r.mean, 3).tolist(), r.weight_sum
((1, 3), [0.25, 0.25, 0.25, 0.25], 4.0)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secure_agg.errors import ProtocolAbortError, SecAggConfigError, SecAggError
from secure_agg.he.client import HEClient, HEClientResult, open_aggregate
from secure_agg.he.keys import KeyHolder
from secure_agg.he.messages import KEY_HOLDER_ID, HEStage, PublicContext
from secure_agg.he.params import HEParams
from secure_agg.he.server import HEServer
from secure_agg.runner import Direction, RunResult, _Stopwatch, _Wire

__all__ = ["HEIntercept", "HERunResult", "run_he"]

logger = logging.getLogger(__name__)

HEIntercept = Callable[[HEStage, str, int, bytes], "list[bytes]"]
"""``intercept(stage, direction, client, data) -> messages actually delivered``."""


@dataclass
class HERunResult(RunResult):
    """:class:`~secure_agg.runner.RunResult` of an HE round, plus the decrypted result.

    ``sum`` is the decoded float64 vector ``[sum_i (w_i/W) x_i ..., sum_i w_i]`` of
    the survivors; ``sets`` holds ``"U1"`` (clients) and ``"U3"`` (contributors);
    ``n_masks_removed`` is 0.

    Attributes
    ----------
    mean : numpy.ndarray
        ``(d,)`` weighted mean of the survivors' clipped updates.
    weight_sum : float
        Their total example count.
    error_bound : float
        :meth:`HEParams.mean_error_bound` for this sum.
    decrypt_seconds : float
        Time to decrypt and decode the aggregate at one client.
    encrypt_seconds : dict of int to float
        Time each client spent encoding and encrypting.
    """

    mean: np.ndarray | None = None
    weight_sum: float = 0.0
    error_bound: float = 0.0
    decrypt_seconds: float = 0.0
    encrypt_seconds: dict[int, float] | None = None


def _he_stage(value: object, *, client: int) -> HEStage:
    """A dropout stage given as an :class:`HEStage`, its name (any case) or its number."""
    stage: HEStage | None = None
    if isinstance(value, HEStage):
        stage = value
    elif isinstance(value, str):
        stage = HEStage.__members__.get(value.strip().upper())
    elif isinstance(value, int | np.integer) and not isinstance(value, bool):
        stage = HEStage(int(value)) if int(value) in {int(s) for s in HEStage} else None
    if stage is None or stage is HEStage.SETUP:
        raise SecAggConfigError(
            f"dropout stage {value!r} of client {client} is not a client stage; valid: "
            f"{HEStage.ENCRYPTED_INPUT.name}, {HEStage.AGGREGATE.name}"
        )
    return stage


def _check_schedule(
    inputs: Mapping[int, np.ndarray],
    weights: Mapping[int, float],
    params: HEParams,
    key_holder: KeyHolder,
    dropouts: Mapping[int, HEStage | str | int] | None,
) -> dict[int, HEStage]:
    """The dropout schedule as ``{client: HEStage}``, after checking ids, the key holder and ``n_max``."""
    if set(inputs) != set(weights):
        raise SecAggConfigError(f"input ids {sorted(inputs)} differ from weight ids {sorted(weights)}")
    if not key_holder.compatible(params):
        raise SecAggConfigError("the key holder's context does not match params")
    if len(inputs) > params.n_max:
        raise SecAggConfigError(f"{len(inputs)} clients exceed params.n_max={params.n_max}")
    bad = [u for u in dropouts or {} if u not in inputs]
    if bad:
        raise SecAggConfigError(f"dropout schedule names unknown clients {bad}")
    return {u: _he_stage(s, client=u) for u, s in (dropouts or {}).items()}


@dataclass
class _HERound:
    """The key holder, the server and the wire of one round, with what the clients did so far."""

    params: HEParams
    round_id: int
    key_holder: KeyHolder
    public_context: bytes
    server: HEServer
    server_key: Ed25519PublicKey | None
    dropouts: dict[int, HEStage]
    wire: _Wire
    clock: _Stopwatch = field(default_factory=_Stopwatch)
    clients: dict[int, HEClient] = field(default_factory=dict)
    encrypt_seconds: dict[int, float] = field(default_factory=dict)
    aborts: dict[int, str] = field(default_factory=dict)

    def send_public_context(self) -> None:
        """``SETUP``: the key holder's public context goes to the server; a refusal aborts the round."""
        setup = PublicContext(round_id=self.round_id, sender=KEY_HOLDER_ID, receiver=0, scheme=self.params.scheme,
                              key_id=self.key_holder.key_id, context=self.public_context).to_bytes()
        for m in self.wire.send(HEStage.SETUP, Direction.UP, KEY_HOLDER_ID, setup):
            try:
                with self.clock.server():
                    self.server.receive(KEY_HOLDER_ID, m)
            except SecAggError as e:  # no usable public key: the round cannot run
                raise ProtocolAbortError(f"the server refused the key holder's public context: {e}") from None

    def send_inputs(
        self,
        inputs: Mapping[int, np.ndarray],
        weights: Mapping[int, float],
        signing: Mapping[int, Ed25519PrivateKey],
    ) -> None:
        """``ENCRYPTED_INPUT``: every client not scheduled to drop encrypts its weighted update and uploads it."""
        secret = self.key_holder.client_context()
        for u in sorted(inputs):
            if self.dropouts.get(u) == HEStage.ENCRYPTED_INPUT:
                continue
            with self.clock.client(u):
                self.clients[u] = HEClient(u, inputs[u], weight=weights[u], params=self.params, context=secret,
                                           round_id=self.round_id, signing_key=signing.get(u),
                                           public_context=self.public_context, server_key=self.server_key)
                data = self.clients[u].encrypt_input()
            self.encrypt_seconds[u] = self.clock.client_seconds[u]
            for m in self.wire.send(HEStage.ENCRYPTED_INPUT, Direction.UP, u, data):
                with self.clock.server():
                    self.server.receive(u, m)

    def advance(self) -> dict[int, bytes]:
        """The server sums the inputs; the aggregate message for each contributor."""
        with self.clock.server():
            return self.server.advance()

    def fetch_aggregate(self, outbox: Mapping[int, bytes], *, decrypt_all: bool) -> tuple[HEClientResult | None, float]:
        """``AGGREGATE``: the sum goes to every contributor still there; the first (or, with ``decrypt_all``,
        every) receiver verifies and decrypts it. Returns the first opened result, or None if no client
        opened one, and the seconds of the last successful decryption."""
        opened: HEClientResult | None = None
        dec_s = 0.0
        for u, data in outbox.items():
            if self.dropouts.get(u) == HEStage.AGGREGATE:
                continue
            for m in self.wire.send(HEStage.AGGREGATE, Direction.DOWN, u, data):
                if opened is not None and not decrypt_all:
                    continue
                dt = self._decrypt(u, m)
                if dt is not None:
                    dec_s = dt
                    opened = opened or self.clients[u].result
        return opened, dec_s

    def _decrypt(self, u: int, message: bytes) -> float | None:
        """Seconds client ``u`` took to verify and decrypt ``message``; None if it rejected it (recorded)."""
        t0 = time.perf_counter()
        try:
            self.clients[u].handle(message)
        except ProtocolAbortError as e:
            self.aborts.setdefault(u, e.reason)
            return None
        finally:
            dt = time.perf_counter() - t0
            self.clock.client_seconds[u] += dt
        return dt

    def open_at_key_holder(self, aggregate: bytes) -> tuple[HEClientResult, float]:
        """No client received the sum: the key holder opens it (a client-side check failure aborts instead)."""
        if self.aborts:
            raise ProtocolAbortError(f"every client rejected the aggregate: {self.aborts}")
        t0 = time.perf_counter()
        opened = open_aggregate(self.key_holder.context, self.params, aggregate, key_id=self.key_holder.key_id,
                                round_id=self.round_id, server_key=self.server_key)
        return opened, time.perf_counter() - t0


def run_he(
    inputs: Mapping[int, np.ndarray],
    *,
    weights: Mapping[int, float],
    params: HEParams,
    key_holder: KeyHolder,
    round_id: int = 0,
    dropouts: Mapping[int, HEStage | str | int] | None = None,
    intercept: HEIntercept | None = None,
    authenticate: bool = True,
    decrypt_all: bool = False,
    min_clients: int = 2,
) -> HERunResult:
    """Run one HE aggregation round in memory.

    Parameters
    ----------
    inputs : Mapping[int, numpy.ndarray]
        Client id -> ``(d,)`` float update.
    weights : Mapping[int, float]
        Client id -> integer example count (sum at most ``params.weight_bound``).
    params : HEParams
        Agreed parameters (``params.n_max >= len(inputs)``).
    key_holder : KeyHolder
        Holder of the secret key; its context must match ``params``.
    round_id : int
        Round id bound into every message.
    dropouts : Mapping[int, HEStage | str | int], optional
        Client -> the stage before whose message it goes silent (an :class:`HEStage`,
        its name such as ``"ENCRYPTED_INPUT"``, or its number).
    intercept : callable, optional
        Network adversary hook, see :data:`HEIntercept`.
    authenticate : bool
        Clients sign their inputs with Ed25519 (simulated PKI) and the server
        verifies; the server signs the aggregate and the clients verify (default).
        ``False``: unauthenticated inputs and aggregate (see the threat model in
        :mod:`secure_agg.he.server`).
    decrypt_all : bool
        Every receiving client decrypts (``False``: only the first one does, the
        others do the identical work; the key holder decrypts if none receives).
    min_clients : int
        Fewest contributors for which the server releases the sum.

    Raises
    ------
    ProtocolAbortError
        If the server aborts (too few contributors, no valid public context) or
        the aggregate is bad.
    """
    schedule = _check_schedule(inputs, weights, params, key_holder, dropouts)
    ids = sorted(inputs)
    signing = {u: Ed25519PrivateKey.generate() for u in ids} if authenticate else {}
    server_sk = Ed25519PrivateKey.generate() if authenticate else None
    server = HEServer(params=params, round_id=round_id, client_ids=ids, min_clients=min_clients,
                      verify_keys={u: k.public_key() for u, k in signing.items()} if authenticate else None,
                      allow_unauthenticated=not authenticate, signing_key=server_sk)
    rnd = _HERound(params=params, round_id=round_id, key_holder=key_holder,
                   public_context=key_holder.public_context(), server=server,
                   server_key=server_sk.public_key() if server_sk is not None else None, dropouts=schedule,
                   wire=_Wire(intercept))
    rnd.send_public_context()
    rnd.send_inputs(inputs, weights, signing)
    outbox = rnd.advance()
    res = server.result()
    opened, dec_s = rnd.fetch_aggregate(outbox, decrypt_all=decrypt_all)
    if opened is None:
        opened, dec_s = rnd.open_at_key_holder(res.aggregate)
    contributors = opened.contributors
    return HERunResult(
        sum=opened.decoded_sum,
        survivors=contributors,
        sets={"U1": tuple(ids), "U3": contributors},
        rejected=dict(res.rejected),
        client_aborts=rnd.aborts,
        bytes_sent=rnd.wire.totals(),
        server_seconds=rnd.clock.server_seconds,
        client_seconds=dict(rnd.clock.client_seconds),
        mean=opened.mean,
        weight_sum=opened.weight_sum,
        error_bound=params.mean_error_bound(len(contributors), opened.weight_sum),
        decrypt_seconds=dec_s,
        encrypt_seconds=rnd.encrypt_seconds,
    )
