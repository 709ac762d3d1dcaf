"""An in-process Flower ``Grid`` for fast tests of protocols over Flower messages (no Ray, no SuperLink).

Each node is a real ``ClientApp`` call with its own ``Context`` (its ``state`` persists
across messages, as on a SuperNode); messages are real ``flwr.app.Message`` objects. An
optional ``intercept(stage, node, reply) -> list of replies`` plays the network or the
relay: it may drop, alter, duplicate or redirect a node's answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from secure_agg.flower_wire import RECORD


class LocalGrid(Grid):
    """``n`` nodes (ids ``1000 + partition``) running ``app`` in this process."""

    def __init__(self, app: ClientApp, n: int, *, run_id: int = 7,
                 intercept: Callable[[str, int, Message], list[Message]] | None = None,
                 node_config: Callable[[int], dict] | None = None) -> None:
        self.app, self.intercept = app, intercept
        # what Flower's runtime sets in a ServerApp process; Message() reads it
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 0, 0
        self._run = Run.create_empty(run_id)
        extra = node_config or (lambda p: {})
        self.contexts = {
            1000 + p: Context(run_id=run_id, node_id=1000 + p,
                              node_config={"partition-id": p, "num-partitions": n, **extra(p)},
                              state=RecordDict(), run_config={})
            for p in range(n)
        }
        self.sent: list[Message] = []

    def set_run(self, run_id: int) -> None:  # pragma: no cover - not used by the strategies
        self._run = Run.create_empty(run_id)

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # pragma: no cover
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            msg.metadata.__dict__["_run_id"] = self._run.run_id
            msg.metadata.__dict__["_created_at"] = time.time()
            self.sent.append(msg)
            node = msg.metadata.dst_node_id
            try:
                reply = self.app(msg, self.contexts[node])
            except Exception as e:  # a node that crashes answers with an error, as Flower's runtime does
                reply = Message(Error(code=0, reason=f"{type(e).__name__}: {e}"), reply_to=msg)
            rec = msg.content.config_records.get(RECORD)
            stage = str(rec["stage"]) if rec is not None else "train"
            replies.extend(self.intercept(stage, node, reply) if self.intercept else [reply])
        return replies
