"""Robust aggregation under two-server secret sharing, with Flower nodes as the clients.

The ``ServerApp`` is server S0; S1 and the dealer are processes of other operators
(:mod:`secure_agg.twoserver.service`), reached over sealed links. A round is one Flower
train round: each node trains, runs the pipeline's client transforms, and replies with
its weight, its round key and two sealed shares of its update
(:mod:`secure_agg.flower_twoserver_node`); S0 keeps the seed sealed to it, relays the
vector sealed to S1, and the servers run the protocol (norm validation, the rule's inner
products with Beaver triples, the rule's linear combination: :mod:`secure_agg.twoserver`).
The pipeline's server half (central DP, ledger, server optimiser) then runs on the opened
aggregate, as in :class:`~secure_agg.flower_server.SecureAggregationStrategy`::

    pipeline = Pipeline(secure=TwoServerAggregator(bound=2.0), rule=Krum(f=2))
    strategy = TwoServerStrategy(pipeline, s1=("10.0.0.2", 7461), dealer=("10.0.0.3", 7462),
                                 s1_public=S1_KEY, dealer_public=DEALER_KEY)

**What each party learns** is the protocol's list (:mod:`secure_agg.twoserver`): per node
its squared norm (and the inner products the rule declares), the aggregate, and which
nodes were absent or rejected; never a node's update. Flower's SuperLink relays only
sealed shares. **Threat model**: the protocol's (S0, S1, dealer semi-honest and not
colluding; nodes fully malicious); the network and the SuperLink may drop, replay or alter
messages, which drops that node (a sealed share that fails authentication) or aborts
the round (a link record that does), never a wrong aggregate. Nodes should pin S1's key
(:data:`~secure_agg.flower_wire.PIN_S1_KEY`); S0 should pin S1's and the dealer's
(``s1_public``, ``dealer_public``), and S1 S0's (``PartyService(peer_public=...)``).

Examples
--------
>>> from fl_core.pipeline import Pipeline
>>> from secure_agg.twoserver import TwoServerAggregator
>>> s = TwoServerStrategy(Pipeline(secure=TwoServerAggregator(bound=2.0)), s1=("127.0.0.1", 1),
...                       dealer=("127.0.0.1", 2))
>>> len(s.public), s.rounds_aborted
(32, {})
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fl_core.aggregation import AggregationResult
from fl_core.errors import ConfigError
from fl_core.flower import PipelineStrategy, _Layout
from fl_core.pipeline import Pipeline, Round
from fl_core.rng import Stream, numpy_generator
from secure_agg.errors import ProtocolAbortError
from secure_agg.flower_wire import FRAC_BITS_KEY, NODES_KEY, S0_KEY, S1_KEY, TWO_SERVER_FLAG, TWO_SERVER_RECORD
from secure_agg.twoserver.aggregator import TwoServerAggregator
from secure_agg.twoserver.params import DEALER, SERVERS, Party, TwoServerParams
from secure_agg.twoserver.remote import RemoteParty, RemoteRound

__all__ = ["TwoServerStrategy"]

logger = logging.getLogger(__name__)

_Reply = tuple[bytes, bytes, bytes]  # the node's round key, its share for S0, its share for S1


class TwoServerStrategy(PipelineStrategy):
    """A pipeline whose ``secure`` slot is :class:`~secure_agg.twoserver.TwoServerAggregator`, over Flower.

    Parameters
    ----------
    pipeline : Pipeline
        ``secure=TwoServerAggregator(bound=...)`` with its rule (``rule=`` of the pipeline);
        no attack slot (an attacker is a node).
    s1, dealer : (str, int)
        Addresses of S1's and the dealer's services.
    s1_public, dealer_public : bytes, optional
        Their X25519 public keys, pinned (recommended); otherwise learned when connecting.
    party : Party, optional
        S0's long-term key (ident ``SERVERS[0]``); a fresh one by default (see :attr:`public`).
    link_timeout_s : float
        Longest wait for one answer from S1 or the dealer; past it the round aborts.
    noise_seed : int, optional
        Seed of S0's half of the rule's noise; default: OS entropy.
    **kwargs
        As :class:`~fl_core.flower.PipelineStrategy`.
    """

    def __init__(self, pipeline: Pipeline, *, s1: tuple[str, int], dealer: tuple[str, int],
                 s1_public: bytes | None = None, dealer_public: bytes | None = None, party: Party | None = None,
                 link_timeout_s: float = 300.0, noise_seed: int | None = None, **kwargs: object) -> None:
        super().__init__(pipeline, **kwargs)  # type: ignore[arg-type]
        if not (isinstance(link_timeout_s, int | float) and 0 < link_timeout_s < math.inf):
            raise ConfigError(f"link_timeout_s must be a finite number > 0, got link_timeout_s={link_timeout_s!r}")
        self.party = Party(SERVERS[0]) if party is None else party
        if self.party.ident != SERVERS[0]:
            raise ConfigError(f"S0's party must have ident {SERVERS[0]:#x}, got {self.party.ident:#x}")
        self.s1 = RemoteParty(s1, own=self.party, ident=SERVERS[1], public=s1_public, timeout_s=link_timeout_s)
        self.dealer = RemoteParty(dealer, own=self.party, ident=DEALER, public=dealer_public,
                                  timeout_s=link_timeout_s)
        self._noise = np.random.default_rng(noise_seed)
        #: Server round -> why its protocol aborted.
        self.rounds_aborted: dict[int, str] = {}

    @property
    def public(self) -> bytes:
        """S0's X25519 public key (for S1's and the nodes' pins)."""
        return self.party.public

    def close(self) -> None:
        """Close the links to S1 and the dealer (the next round opens new ones)."""
        self.s1.close()
        self.dealer.close()

    def start(self, *args: object, **kwargs: object) -> object:
        """Flower's ``Strategy.start``; the links are closed when it returns or raises."""
        try:
            return super().start(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            self.close()

    @property
    def protocol(self) -> TwoServerAggregator:
        return self.pipeline.aggregator  # type: ignore[return-value]

    def _check_protocol(self, pipeline: Pipeline) -> None:
        if not isinstance(pipeline.aggregator, TwoServerAggregator):
            raise ConfigError(f"TwoServerStrategy runs TwoServerAggregator over Flower messages, got "
                              f"secure={type(pipeline.aggregator).__name__}")
        if pipeline.attack is not None:
            raise ConfigError("a pipeline with an attack slot: over Flower an attacker is a node and changes its own "
                              "update in its ClientApp")

    # ------------------------------------------------------------------ train round
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """The plain strategy's sampling, with the servers' keys, the fixed point and the cohort in the config."""
        layout = _Layout.of(arrays)
        params = self._params(int(layout.flat.numel()))
        try:
            s1_public = self.s1.public
        except ProtocolAbortError as e:
            raise ConfigError(f"round {server_round}: S1 is unreachable, no two-server round: {e}") from e
        config.update({TWO_SERVER_FLAG: True, S0_KEY: self.party.public, S1_KEY: s1_public,
                       FRAC_BITS_KEY: params.frac_bits})
        msgs = list(super().configure_train(server_round, arrays, config, grid))
        sampled = sorted(self._rounds[server_round][1])
        self.pipeline.check_cohort_size(len(sampled))
        nodes = np.array(sampled, dtype="<u8").tobytes()
        for m in msgs:  # one config record is shared by every message
            m.content.config_records[self.configrecord_key][NODES_KEY] = nodes
        return msgs

    def _params(self, d: int) -> TwoServerParams:
        return TwoServerParams.from_bound(d=d, bound=self.protocol.bound, frac_bits=self.protocol.frac_bits)

    def _check(self, msg: Message, layout: _Layout, sampled: frozenset[int]) -> tuple[_Reply, float] | str:
        """A valid reply of a two-server round: sampled, no error, no arrays, one weight, the share record."""
        if (why := self._origin_problem(msg, sampled)) is not None:
            return why
        if msg.content.array_records:
            return "the node sent arrays in the clear in a two-server round"
        w = self._weight(msg)
        if isinstance(w, str):
            return w
        if not (math.isfinite(w) and w > 0):
            return f"weight {self.weighted_by_key}={w} is not a finite number > 0"
        rec = msg.content.config_records.get(TWO_SERVER_RECORD)
        if rec is None or sorted(rec.keys()) != ["public", "to-s0", "to-s1"]:
            return f"no ConfigRecord '{TWO_SERVER_RECORD}' with public, to-s0, to-s1"
        parts = tuple(rec[k] for k in ("public", "to-s0", "to-s1"))
        if not all(isinstance(p, bytes) for p in parts) or len(parts[0]) != 32:
            return "the share record's fields are not bytes (a 32-byte key and two frames)"
        return parts, w  # type: ignore[return-value]

    # ------------------------------------------------------------------ the protocol
    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Run the two-server protocol on the valid replies, then the pipeline's server half."""
        replies = list(replies)
        ids, shares, weights = self._collect(server_round, replies)
        layout, sampled = self._rounds[server_round]
        d = int(layout.flat.numel())
        metrics = {"nodes-trained": float(len(ids)), "nodes-dropped-train": float(len(self.dropped))}
        if not ids:
            logger.warning("round %d: no valid reply, the global model is unchanged", server_round)
            return None, MetricRecord(metrics)
        order = sorted(sampled)
        pid = {node: i for i, node in enumerate(order)}
        got = dict(zip(ids, zip(shares, weights, strict=True), strict=True))
        publics = {pid[n]: got[n][0][0] for n in ids}
        frames = {pid[n]: (got[n][0][1], got[n][0][2]) for n in ids}
        gen = numpy_generator(self.pipeline.seed, Stream.PLUGIN, server_round)
        spec = {"round_idx": server_round - 1, "generator_seed": int(gen.integers(2**62)),
                "weights": [float(got[n][1]) for n in sorted(ids)]}
        rnd = RemoteRound(params=self._params(d), rule=self.protocol.rule, party=self.party, s1=self.s1,
                          dealer=self.dealer, rejected_are_byzantine=self.protocol.rejected_are_byzantine,
                          noise=self._noise)
        try:
            outcome, cost = rnd.run(round_id=server_round, spec=spec, client_publics=publics, frames=frames,
                                    global_params=layout.flat.numpy())
        except ProtocolAbortError as e:
            logger.warning("round %d: the two-server protocol aborted, the global model is unchanged: %s",
                           server_round, e)
            self.rounds_aborted[server_round] = str(e)
            return None, MetricRecord({**metrics, "aborted": 1.0})
        return self._finish(server_round, layout, order, outcome, cost, metrics, replies, ids)

    def _finish(self, server_round, layout, order, outcome, cost, metrics, replies, ids):  # type: ignore[no-untyped-def]
        node = {i: n for i, n in enumerate(order)}
        for pid_, why in outcome.dropped.items():
            self.dropped[node[pid_]] = why
        accepted = [node[c] for c, ok in zip(outcome.cohort, outcome.accepted, strict=True) if ok]
        kept = [n for n, k in zip(accepted, outcome.decision.kept.tolist(), strict=True) if k]
        result = AggregationResult(aggregate=torch.from_numpy(outcome.aggregate).to(torch.float32),
                                   kept=torch.ones(len(kept), dtype=torch.bool),
                                   metrics={k: float(v) for k, v in outcome.decision.metrics.items()})
        d = int(layout.flat.numel())
        out = self.pipeline.finish(result, Round(server_round - 1, tuple(sorted(kept)), layout.flat),
                                   bound=self.pipeline.client_bound(d), n=len(accepted))
        metrics.update({k: float(v) for k, v in out.metrics.items()
                        if isinstance(v, int | float) and math.isfinite(float(v))})
        metrics.update({"nodes-aggregated": float(len(kept)), "nodes-rejected": float(len(outcome.rejected)),
                        "nodes-dropped": float(len(self.dropped)), "s0-online-seconds": cost.s0_online,
                        "secure-seconds": cost.seconds, "s0-to-s1-bytes": float(cost.bytes_to_s1),
                        "s1-to-s0-bytes": float(cost.bytes_from_s1),
                        "node-upload-bytes": float(np.mean(cost.client_bytes)) if cost.client_bytes else 0.0})
        trained = set(ids)
        valid = [m.content for m in replies if not m.has_error() and int(m.metadata.src_node_id) in trained]
        client = self.train_metrics_aggr_fn(valid, self.weighted_by_key) if valid else MetricRecord()
        return layout.unflatten(out.params), MetricRecord({**dict(client), **metrics})
