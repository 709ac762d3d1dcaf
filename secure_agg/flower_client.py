"""The node side of SecAgg+ over Flower messages: keep the update on the node, answer the protocol's stages.

In a ``ClientApp``::

    app = ClientApp()
    add_secagg(app)                        # answers the protocol's messages

    @app.train()
    def train(msg, context):
        local = my_training(msg.content["arrays"].to_numpy_ndarrays())
        return train_reply(msg, context, local, num_examples=600)

:func:`train_reply` replies with the trained arrays in a plain round; in a two-server
round (:mod:`secure_agg.flower_twoserver`) with two sealed shares of the update
(:mod:`secure_agg.flower_twoserver_node`); in a SecAgg+ round
(the strategy sets :data:`~secure_agg.flower_wire.CONFIG_FLAG` in the train config) it
computes the update ``local - global``, applies the pipeline's client transforms (clip,
local DP) on the node, keeps it in ``context.state`` and replies with the example count
only. The update then leaves the node only inside SecAgg+'s masked input
(:class:`~secure_agg.client.SecAggClient`), encoded in fixed point
(:class:`~secure_agg.quantize.FixedPointEncoder`) with the parameters the ServerApp
sends in the ``setup`` stage.

The node binds the model it was sent: :func:`train_reply` keeps the fingerprint of
the global arrays of the train message (:func:`~secure_agg.client.model_fingerprint`),
and the ``setup`` stage advertises its digest for the protocol round
(:func:`~secure_agg.client.bind_model`) in ``AdvertiseKeys``; the node aborts if a
neighbour advertises another (a ServerApp that sent nodes different models). Over
Flower the advertisements carry the channel MAC, not a signature (the active
setting is not used here), so this stops a network attacker and a stale model,
not a malicious ServerApp, which holds the channel keys (see :mod:`secure_agg.client`).

Between messages the protocol state (secret keys, shares) lives in ``context.state`` as
a :func:`~secure_agg.client_state.snapshot`; it never leaves the node, and it is erased
when the node's part of the round ends (done or aborted). The channel key is a fresh
X25519 exchange with the ServerApp's key each round; a node whose config has
:data:`~secure_agg.flower_wire.PIN_KEY` accepts no other ServerApp key.

Examples
--------
>>> from flwr.clientapp import ClientApp
>>> app = ClientApp()
>>> add_secagg(app)
>>> sorted(k for k in app._registered_funcs if "secagg" in k)
['train.flsec_secagg']
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from secure_agg import crypto
from secure_agg.client import ClientState, SecAggClient, bind_model, model_fingerprint
from secure_agg.client_state import restore, snapshot
from secure_agg.errors import ProtocolAbortError, SecAggError
from secure_agg.flower_wire import (
    ACTION,
    CONFIG_FLAG,
    PIN_KEY,
    RECORD,
    STAGES,
    STATE_KEY,
    TWO_SERVER_FLAG,
    channel_key,
)
from secure_agg.params import SecAggParams
from secure_agg.quantize import FixedPointEncoder

if TYPE_CHECKING:
    from fl_core.pipeline import Pipeline

__all__ = ["add_secagg", "handle_secagg", "train_reply"]

logger = logging.getLogger(__name__)


def train_reply(msg: Message, context: Context, arrays: Sequence[np.ndarray], num_examples: int, *,
                pipeline: Pipeline | None = None, metrics: dict[str, float] | None = None) -> Message:
    """The reply to a train message: the arrays in a plain round; in a secure round, the weight only.

    Parameters
    ----------
    msg, context : flwr Message, Context
        The train message and the node's context.
    arrays : sequence of numpy.ndarray
        The locally trained model, in the order of the global model's ``ArrayRecord``.
    num_examples : int
        The node's weight (an integer example count in a secure round).
    pipeline : Pipeline, optional
        Its client transforms (clip, local DP) run here, on this node's update, in a
        secure round (the same pipeline the ServerApp's strategy holds).
    metrics : dict, optional
        Further metrics for the reply.
    """
    config = msg.content.config_records.get("config", ConfigRecord())
    out = MetricRecord({"num-examples": num_examples, **(metrics or {})})
    two_server = bool(config.get(TWO_SERVER_FLAG, False))
    if not (config.get(CONFIG_FLAG, False) or two_server):
        return Message(content=RecordDict({"arrays": ArrayRecord([np.asarray(a) for a in arrays]), "metrics": out}),
                       reply_to=msg)
    glob = [a.numpy() for a in msg.content["arrays"].values()]
    if len(glob) != len(arrays) or any(np.shape(a) != g.shape for a, g in zip(arrays, glob, strict=False)):
        raise ValueError(f"trained arrays {[np.shape(a) for a in arrays]} do not match the global model's "
                         f"{[g.shape for g in glob]}")
    update = np.concatenate([(np.asarray(a, np.float64) - g.astype(np.float64)).ravel()
                             for a, g in zip(arrays, glob, strict=True)])
    server_round = int(config["server-round"])
    if pipeline is not None:  # PyTorch only here: the protocol's messages never load it
        import torch

        from fl_core.pipeline import Round

        flat = torch.from_numpy(np.concatenate([g.astype(np.float32).ravel() for g in glob]))
        info = Round(server_round - 1, (int(context.node_id),), flat)
        update = pipeline.client_side_for(int(context.node_id), torch.from_numpy(update.astype(np.float32)),
                                          info).double().numpy()
    if two_server:  # one reply with the two sealed shares: secure_agg.flower_twoserver_node
        from secure_agg.flower_twoserver_node import two_server_reply

        return two_server_reply(msg, context, update, num_examples, metrics or {})
    context.state[STATE_KEY] = ConfigRecord({"kind": "update", "server-round": server_round,
                                             "weight": int(num_examples), "update": update.tobytes(),
                                             "model-fingerprint": model_fingerprint(glob)})
    return Message(content=RecordDict({"metrics": out}), reply_to=msg)


def _answer(msg: Message, **fields: object) -> Message:
    return Message(content=RecordDict({RECORD: ConfigRecord(fields)}), reply_to=msg)


def _kept(context: Context) -> ConfigRecord | None:
    """What this node keeps between messages (its update, then its protocol snapshot), if anything."""
    return context.state.config_records[STATE_KEY] if STATE_KEY in context.state else None


def _forget(context: Context) -> None:
    if STATE_KEY in context.state:
        del context.state[STATE_KEY]


def _abort(msg: Message, context: Context, reason: str) -> Message:
    _forget(context)
    logger.warning("node %d aborts the secure round: %s", context.node_id, reason)
    return _answer(msg, abort=reason)


def _setup(msg: Message, context: Context, f: ConfigRecord) -> Message:
    kept = _kept(context)
    rnd = int(f["server-round"])
    if kept is None or kept.get("kind") != "update" or int(kept["server-round"]) != rnd:
        return _abort(msg, context, f"no update kept for round {rnd} (setup replayed, or no train message)")
    if int(f["weight"]) != int(kept["weight"]):
        return _abort(msg, context, f"the server encodes weight {f['weight']}, this node reported {kept['weight']}")
    pin = context.node_config.get(PIN_KEY)
    server_pk = bytes(f["server-pk"])
    if pin and bytes.fromhex(str(pin)) != server_pk:
        return _abort(msg, context, "the ServerApp's key is not the one this node pins")
    update = np.frombuffer(bytes(kept["update"]), dtype=np.float64)
    params = SecAggParams(round_id=int(f["round-id"]), t=int(f["t"]), d=int(f["d"]), ring_bits=int(f["ring-bits"]))
    if params.d != update.size + 1:
        return _abort(msg, context, f"the server asks for d={params.d}, this node's update has {update.size} + 1")
    enc = FixedPointEncoder(clip=float(f["clip"]), ring_bits=params.ring_bits, weight_bound=int(f["weight-bound"]))
    rng = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))  # rounding noise, not key material
    y = enc.encode(update, weight=int(kept["weight"]), rng=rng)
    crypto.check_public_key(server_pk, what="the ServerApp's channel key")
    own = X25519PrivateKey.generate()
    key = channel_key(own, server_pk, run_id=context.run_id, round_id=params.round_id, node_id=context.node_id)
    digest = bind_model(bytes(kept["model-fingerprint"]), round_id=params.round_id)
    client = SecAggClient(int(f["u"]), y, params=params, channel_key=key, model_digest=digest)
    payload = client.advertise_keys()
    context.state[STATE_KEY] = ConfigRecord({"kind": "protocol", "server-round": rnd, "snapshot": snapshot(client)})
    return _answer(msg, payload=payload, **{"client-pk": crypto.public_bytes(own)})


def _step(msg: Message, context: Context, f: ConfigRecord) -> Message:
    kept = _kept(context)
    if kept is None or kept.get("kind") != "protocol" or int(kept["server-round"]) != int(f["server-round"]):
        return _abort(msg, context, f"stage {f['stage']!r} of round {f['server-round']} without a setup")
    client = restore(bytes(kept["snapshot"]))
    try:
        payload = client.handle(bytes(f["payload"]))
    except ProtocolAbortError as e:
        return _abort(msg, context, str(e))
    if client.state is ClientState.DONE:
        _forget(context)
    else:
        context.state[STATE_KEY] = ConfigRecord({"kind": "protocol", "server-round": int(kept["server-round"]),
                                                 "snapshot": snapshot(client)})
    return _answer(msg, payload=payload)


def handle_secagg(msg: Message, context: Context) -> Message:
    """Answer one protocol message (registered by :func:`add_secagg` for ``train.flsec_secagg``).

    A malformed or out-of-order message, or one the protocol rejects, makes the node
    abort its part of the round: it erases its state and answers ``{"abort": reason}``.
    """
    f = msg.content.config_records.get(RECORD)
    stage = None if f is None else f.get("stage")
    if stage not in STAGES:
        return _abort(msg, context, f"not a protocol message (stage {stage!r}; expected one of {STAGES})")
    try:
        return _setup(msg, context, f) if stage == "setup" else _step(msg, context, f)
    except (KeyError, TypeError, ValueError, SecAggError) as e:
        return _abort(msg, context, f"bad {stage} message: {type(e).__name__}: {e}")


def add_secagg(app: ClientApp) -> None:
    """Register :func:`handle_secagg` on ``app`` for the protocol's messages."""
    app.train(ACTION)(handle_secagg)
