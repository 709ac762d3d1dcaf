"""The server side of one SecAgg+ round over Flower messages: every group's protocol, stage by stage.

Each stage is one ``grid.send_and_receive`` with one message per node still in the
round (all groups together) and a bounded wait. A node that does not answer in time,
answers with an error, aborts, or sends a message the protocol's server rejects is a
dropout of that stage: :class:`~secure_agg.server.SecAggServer` carries on with the
others and recovers what it needs from the survivors' shares, as SecAgg+ promises, or
aborts the group when fewer than ``t`` remain. A group's sum that does not decode to
values honest encodings can produce aborts that group too
(:class:`~secure_agg.errors.RingOverflowError`): a wrong sum is never returned.

The ServerApp derives each node's channel key from a fresh X25519 exchange per round
(:func:`~secure_agg.flower_wire.channel_key`); every protocol message is HMAC-tagged
under it, so a message altered between the node and the ServerApp (by the network, or
by the SuperLink that relays it) is rejected and its sender dropped.

Examples
--------
>>> import numpy as np
>>> g = plan_group(0, nodes=(11, 12, 13), weights=(1, 2, 1), protocol=_demo_protocol(), server_round=1, d=4,
...                rng=np.random.default_rng(0))
>>> g.u_of, g.params.d, g.params.t, g.enc.weight_bound
({11: 1, 12: 2, 13: 3}, 5, 2, 4)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from secure_agg import crypto
from secure_agg.aggregator import SecAggPlusAggregator
from secure_agg.errors import ProtocolAbortError, SecAggError
from secure_agg.flower_wire import MESSAGE_TYPE, RECORD, channel_key
from secure_agg.graph import CommunicationGraph
from secure_agg.grouped import GROUP_SPACE
from secure_agg.params import SecAggParams
from secure_agg.quantize import FixedPointEncoder
from secure_agg.server import SecAggServer

__all__ = ["GroupRun", "SecureRound", "plan_group"]

logger = logging.getLogger(__name__)


def _demo_protocol() -> SecAggPlusAggregator:
    return SecAggPlusAggregator(clip=1.0, gamma=0.0, delta=0.0)


@dataclass
class GroupRun:
    """One group's SecAgg+ instance in a round: its nodes, parameters, server and outcome."""

    g: int
    nodes: tuple[int, ...]
    weights: tuple[int, ...]
    params: SecAggParams
    graph: CommunicationGraph
    enc: FixedPointEncoder
    server: SecAggServer | None = None
    failed: str | None = None
    outbox: dict[int, bytes] = field(default_factory=dict)

    @property
    def u_of(self) -> dict[int, int]:
        """Node id -> protocol id ``u`` (1-based, in node-id order)."""
        return {node: i + 1 for i, node in enumerate(self.nodes)}

    def node_of(self, u: int) -> int:
        return self.nodes[u - 1]


def plan_group(g: int, *, nodes: tuple[int, ...], weights: tuple[int, ...], protocol: SecAggPlusAggregator,
               server_round: int, d: int, rng: np.random.Generator) -> GroupRun:
    """The parameters of group ``g``: ids ``1..m``, ``(k, t)`` and graph for ``m`` nodes, the ring encoder."""
    ids = list(range(1, len(nodes) + 1))
    graph, t = protocol._graph(ids, rng)
    params = SecAggParams(round_id=server_round * GROUP_SPACE + g, t=t, d=d + 1, ring_bits=protocol.ring_bits)
    enc = FixedPointEncoder(clip=protocol.clip, ring_bits=protocol.ring_bits, weight_bound=max(1, sum(weights)))
    return GroupRun(g, nodes, weights, params, graph, enc)


@dataclass
class SecureRound:
    """Drive the groups of one round through ``setup``, ``keys``, ``shares``, ``unmask`` over ``grid``.

    Attributes
    ----------
    dropped : dict of int to str
        Node id -> the stage and reason it left the round.
    bytes_up, bytes_down : int
        Protocol bytes (payloads and keys) from the nodes and to them.
    """

    grid: Grid
    server_round: int
    groups: list[GroupRun]
    timeout_s: float
    dropped: dict[int, str] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    seconds: float = 0.0

    def run(self) -> None:
        """Run every group to its sum or its abort (``GroupRun.failed``)."""
        t0 = time.perf_counter()
        key = X25519PrivateKey.generate()
        self._setup(key)
        for stage in ("keys", "shares", "unmask"):
            self._stage(stage)
        for grp in self.groups:
            if grp.failed is None and grp.server is not None:
                try:
                    grp.server.result()
                except ProtocolAbortError as e:
                    grp.failed = str(e)
        self.seconds = time.perf_counter() - t0

    # ------------------------------------------------------------------ transport
    def _exchange(self, stage: str, out: Mapping[int, tuple[GroupRun, dict]]) -> dict[int, ConfigRecord]:
        """Send ``out[node]`` to each node; the valid answers by node (the rest are dropouts of ``stage``)."""
        msgs = []
        for node, (grp, fields) in out.items():
            rec = ConfigRecord({"stage": stage, "server-round": self.server_round, "group": grp.g, **fields})
            self.bytes_down += sum(len(v) for v in fields.values() if isinstance(v, bytes))
            msgs.append(Message(content=RecordDict({RECORD: rec}), dst_node_id=node, message_type=MESSAGE_TYPE))
        replies = list(self.grid.send_and_receive(msgs, timeout=self.timeout_s)) if msgs else []
        got: dict[int, ConfigRecord] = {}
        for r in replies:
            node = int(r.metadata.src_node_id)
            why = self._why_invalid(r, node, out, got)
            if why is not None:
                self._drop(node, stage, why)
                got.pop(node, None)
                continue
            got[node] = r.content.config_records[RECORD]
            self.bytes_up += sum(len(v) for v in got[node].values() if isinstance(v, bytes))
        for node in out:
            if node not in got and node not in self.dropped:
                self._drop(node, stage, f"no answer within {self.timeout_s:g} s")
        return got

    def _why_invalid(self, r: Message, node: int, out: Mapping, got: Mapping) -> str | None:
        if node not in out:
            return "answered a stage it was not asked in"
        if node in got:
            return "answered twice in one stage"
        if r.has_error():
            return f"error: {r.error.reason}"
        rec = r.content.config_records.get(RECORD)
        if rec is None:
            return f"answer without the '{RECORD}' record"
        if "abort" in rec:
            return f"the node aborted: {rec['abort']}"
        if not isinstance(rec.get("payload"), bytes):
            return "answer without a protocol payload"
        return None

    def _drop(self, node: int, stage: str, why: str) -> None:
        self.dropped.setdefault(node, f"{stage}: {why}")
        logger.warning("round %d: node %d dropped in %s: %s", self.server_round, node, stage, why)

    # ------------------------------------------------------------------ stages
    def _setup(self, key: X25519PrivateKey) -> None:
        pk = crypto.public_bytes(key)
        out = {}
        for grp in self.groups:
            p = grp.params
            for node, w in zip(grp.nodes, grp.weights, strict=True):
                out[node] = (grp, {"u": grp.u_of[node], "t": p.t, "d": p.d, "ring-bits": p.ring_bits,
                                   "round-id": p.round_id, "clip": grp.enc.clip, "weight-bound": grp.enc.weight_bound,
                                   "weight": int(w), "server-pk": pk})
        got = self._exchange("setup", out)
        run_id = int(self.grid.run.run_id)
        for grp in self.groups:
            keys = {}
            for node, u in grp.u_of.items():
                rec = got.get(node)
                try:
                    crypto.check_public_key(bytes(rec["client-pk"]), what=f"node {node}'s channel key")
                    keys[u] = channel_key(key, bytes(rec["client-pk"]), run_id=run_id,
                                          round_id=grp.params.round_id, node_id=node)
                except (TypeError, KeyError, ValueError, SecAggError) as e:
                    if rec is not None:
                        self._drop(node, "setup", f"bad channel key: {e}")
                    keys[u] = os.urandom(crypto.CHANNEL_KEY_BYTES)  # absent: nothing verifies under it
            grp.server = SecAggServer(params=grp.params, graph=grp.graph, channel_keys=keys)
            self._deliver(grp, got)

    def _stage(self, stage: str) -> None:
        out = {}
        for grp in self.groups:
            if grp.failed is None:
                out.update({grp.node_of(u): (grp, {"payload": m}) for u, m in grp.outbox.items()})
        got = self._exchange(stage, out)
        for grp in self.groups:
            if grp.failed is None:
                self._deliver(grp, got)

    def _deliver(self, grp: GroupRun, got: Mapping[int, ConfigRecord]) -> None:
        """Hand the group's answers to its server and close the stage (the next outbox, or the abort)."""
        assert grp.server is not None
        for node, u in grp.u_of.items():
            if node in got and node not in self.dropped and not grp.server.receive(u, bytes(got[node]["payload"])):
                self._drop(node, grp.server.state.name.lower(), grp.server.rejected.get(u, "rejected"))
        try:
            grp.outbox = grp.server.advance()
        except ProtocolAbortError as e:
            grp.failed, grp.outbox = str(e), {}
            logger.warning("round %d: group %d aborted: %s", self.server_round, grp.g, e)


def survivors(grp: GroupRun) -> Iterable[int]:
    """The node ids whose inputs are in the group's sum."""
    assert grp.server is not None
    return [grp.node_of(u) for u in grp.server.result().survivors]
