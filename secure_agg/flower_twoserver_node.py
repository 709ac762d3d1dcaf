"""The node side of a two-server round over Flower: one reply with two sealed shares.

:func:`secure_agg.flower_client.train_reply` calls :func:`two_server_reply` when the
train config carries :data:`~secure_agg.flower_wire.TWO_SERVER_FLAG`. The node splits
its update (after the pipeline's client transforms) into S0's share, a 32-byte seed, and
S1's share, a ring vector (:class:`~secure_agg.twoserver.client.ShareClient`), each
sealed under a key the node agrees this round with that server's X25519 key. Both go up
in the train reply; the ServerApp (S0) opens the seed and relays S1's share, which it
cannot read, to S1. Nothing else leaves the node; there are no further messages.

A node may pin both servers' keys in its node config:
:data:`~secure_agg.flower_wire.PIN_KEY` (S0, the ServerApp) and
:data:`~secure_agg.flower_wire.PIN_S1_KEY` (S1). Without the S1 pin a ServerApp that
lies about S1's key could read the node's update, so deployments should pin it.

Examples
--------
>>> from secure_agg.twoserver.params import Party, SERVERS
>>> s0, s1 = Party(SERVERS[0]), Party(SERVERS[1])
>>> cfg = ConfigRecord({TWO_SERVER_FLAG: True, "server-round": 1, S0_KEY: s0.public, S1_KEY: s1.public,
...                     FRAC_BITS_KEY: 24, NODES_KEY: np.array([5, 9], "<u8").tobytes()})
>>> ctx = Context(run_id=1, node_id=9, node_config={}, state=RecordDict(), run_config={})
>>> rec = share_record(cfg, ctx, np.zeros(1000), 3)
>>> len(rec["public"]), len(rec["to-s0"]), len(rec["to-s1"])  # key, sealed seed, sealed 1000 ring words
(32, 106, 8075)
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from secure_agg.flower_wire import (
    FRAC_BITS_KEY,
    NODES_KEY,
    PIN_KEY,
    PIN_S1_KEY,
    S0_KEY,
    S1_KEY,
    TWO_SERVER_FLAG,
    TWO_SERVER_RECORD,
)
from secure_agg.twoserver.client import ShareClient
from secure_agg.twoserver.params import Party

__all__ = ["protocol_id", "share_record", "two_server_reply"]


def protocol_id(nodes: bytes, node_id: int) -> int:
    """The node's id in the protocol: its index in the round's sorted list of sampled node ids.

    Examples
    --------
    >>> protocol_id(np.array([3, 2**64 - 5], "<u8").tobytes(), 2**64 - 5)
    1
    >>> protocol_id(np.array([3], "<u8").tobytes(), 4)
    Traceback (most recent call last):
    ...
    ValueError: node 4 is not in this round's cohort of 1 nodes
    """
    ids = np.frombuffer(nodes, dtype="<u8")
    hits = np.flatnonzero(ids == np.uint64(node_id))
    if len(hits) != 1 or len(nodes) % 8:
        raise ValueError(f"node {node_id} is not in this round's cohort of {len(ids)} nodes")
    return int(hits[0])


def _pinned(context: Context, key: str, got: bytes, who: str) -> None:
    pin = context.node_config.get(key)
    if pin and bytes.fromhex(str(pin)) != got:
        raise ValueError(f"{who}'s key {got.hex()[:16]}... is not the one this node pins ({key})")


def two_server_reply(msg: Message, context: Context, update: np.ndarray, num_examples: float,
                     metrics: dict[str, float]) -> Message:
    """The train reply of a two-server round: the weight and the two sealed shares of ``update``.

    Raises
    ------
    ValueError
        If the config misses a field, the node is not in the cohort, a pinned key differs or
        the update holds NaN or Inf
        (Flower then sends an error reply and the ServerApp drops the node).
    """
    record = share_record(msg.content.config_records["config"], context, update, num_examples)
    out = MetricRecord({"num-examples": num_examples, **metrics})
    return Message(content=RecordDict({"metrics": out, TWO_SERVER_RECORD: record}), reply_to=msg)


def share_record(config: ConfigRecord, context: Context, update: np.ndarray, num_examples: float) -> ConfigRecord:
    """The node's round key and its two sealed shares of ``update``, as the reply's ConfigRecord."""
    if not config.get(TWO_SERVER_FLAG, False):
        raise ValueError(f"not a two-server round (no {TWO_SERVER_FLAG} in the train config)")
    s0, s1 = bytes(config[S0_KEY]), bytes(config[S1_KEY])
    _pinned(context, PIN_KEY, s0, "the ServerApp (S0)")
    _pinned(context, PIN_S1_KEY, s1, "S1")
    update = np.asarray(update, dtype=np.float64)
    if not np.isfinite(update).all():  # an encoding of NaN is undefined: refuse instead of sending garbage
        raise ValueError("the update contains NaN or Inf: nothing to share")
    party = Party(protocol_id(bytes(config[NODES_KEY]), int(context.node_id)))
    client = ShareClient(party=party, server_publics=(s0, s1), frac_bits=int(config[FRAC_BITS_KEY]))
    to_s0, to_s1 = client.share(update, weight=float(num_examples),
                                round_id=int(config["server-round"]))
    return ConfigRecord({"public": party.public, "to-s0": bytes(to_s0), "to-s1": bytes(to_s1)})
