"""A small Flower app for the simulation test: logistic regression on synthetic data, two sign-flipping nodes.

Module-level so that Ray's workers import the ``ClientApp`` by reference.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from defenses.dp import L2Clip
from fl_core.pipeline import Pipeline
from secure_agg.flower_client import add_secagg, handle_secagg, train_reply
from secure_agg.flower_wire import ACTION, RECORD

FEATURES, CLASSES, PER_NODE, MALICIOUS, BOOST = 20, 2, 200, (0, 1), 5.0
_W = np.random.default_rng(1234).normal(size=(CLASSES, FEATURES))


def data(partition: int, n: int = PER_NODE) -> tuple[np.ndarray, np.ndarray]:
    """The partition's examples: Gaussian inputs labelled by a fixed linear teacher."""
    rng = np.random.default_rng(10_000 + partition)
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    return x, (x @ _W.T).argmax(axis=1)


def local_train(arrays: list[np.ndarray], partition: int, lr: float = 0.5, steps: int = 20) -> list[np.ndarray]:
    """Full-batch gradient steps of softmax regression; malicious partitions send ``g - BOOST * delta``."""
    w, b = (a.astype(np.float64).copy() for a in arrays)
    x, y = data(partition)
    onehot = np.eye(CLASSES)[y]
    for _ in range(steps):
        z = x @ w.T + b
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        w -= lr * (p - onehot).T @ x / len(x)
        b -= lr * (p - onehot).mean(axis=0)
    new = [w, b]
    if partition in MALICIOUS:
        new = [a0 - BOOST * (a1 - a0) for a0, a1 in zip(arrays, new, strict=True)]
    return [a.astype(np.float32) for a in new]


class Recording:
    """Strategy mixin: per round, which partition each node holds and the round's metrics and drops."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.partition: dict[int, int] = {}
        self.log: dict[int, dict] = {}

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        for m in replies:
            if not m.has_error():
                self.partition[int(m.metadata.src_node_id)] = int(m.content["metrics"]["partition-id"])
        arrays, metrics = super().aggregate_train(server_round, replies)
        self.log[server_round] = {"dropped": dict(self.dropped), "metrics": dict(metrics),
                                  "aborted": dict(getattr(self, "aborted", {}))}
        return arrays, metrics


def initial_arrays() -> list[np.ndarray]:
    """The all-zero model: weight ``(CLASSES, FEATURES)`` and bias ``(CLASSES,)``."""
    return [np.zeros((CLASSES, FEATURES), np.float32), np.zeros(CLASSES, np.float32)]


def accuracy(arrays: list[np.ndarray]) -> float:
    x, y = data(999, n=2000)
    return float(((x @ arrays[0].T + arrays[1]).argmax(axis=1) == y).mean())


app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    partition = int(context.node_config["partition-id"])
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    new = local_train(arrays, partition)
    content = RecordDict({"arrays": ArrayRecord(new), "metrics": MetricRecord({"num-examples": PER_NODE})})
    return Message(content=content, reply_to=msg)


# --------------------------------------------------------------------------- secure rounds (flsec's SecAgg+)
#: (server round, stage) -> partitions whose node fails there: a SecAgg+ dropout mid-round.
FAILS = {(2, "shares"): (3, 4), (3, "unmask"): (5,)}


#: The honest nodes' client transform in a secure round (an attacker skips it).
HONEST_CLIENT = Pipeline(client=[L2Clip(clip_norm=5.0)])


def _secure_train(msg: Message, context: Context) -> Message:
    partition = int(context.node_config["partition-id"])
    new = local_train(msg.content["arrays"].to_numpy_ndarrays(), partition)
    pipeline = None if partition in MALICIOUS else HONEST_CLIENT
    return train_reply(msg, context, new, PER_NODE, pipeline=pipeline, metrics={"partition-id": partition})


def _failing_secagg(msg: Message, context: Context) -> Message:
    rec = msg.content.config_records[RECORD]
    if int(context.node_config["partition-id"]) in FAILS.get((int(rec["server-round"]), str(rec["stage"])), ()):
        raise RuntimeError(f"node fails in stage {rec['stage']}")  # Flower answers with an error message
    return handle_secagg(msg, context)


#: Trains, keeps its update and answers the protocol; fails where FAILS says.
secure_app = ClientApp()
secure_app.train()(_secure_train)
secure_app.train(ACTION)(_failing_secagg)

#: The same without failures.
steady_app = ClientApp()
steady_app.train()(_secure_train)
add_secagg(steady_app)
