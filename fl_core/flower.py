"""Any flsec pipeline as a Flower strategy, on Flower's current Message API (``flwr.serverapp.strategy``).

A robust rule, DP-FedAvg or a whole :class:`~fl_core.pipeline.Pipeline` drops into a
Flower ``ServerApp``::

    strategy = PipelineStrategy(Pipeline(rule=Krum(f=2)))
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=5)

:class:`PipelineStrategy` subclasses Flower's ``FedAvg`` (same records, same keys:
``"arrays"`` for the model, ``"num-examples"`` as the weight in each reply's
``MetricRecord``) and replaces its aggregation with the pipeline: the replies' arrays
are flattened in the global model's key order, the cohort of updates
``reply - global`` goes through the pipeline with the replying node ids as client ids
(so FoolsGold's history or a per-client ledger follows Flower's node ids, not the row
order), and the pipeline's new global parameters go back as the next ``ArrayRecord``.
The pipeline's metrics (the privacy ledger's ``dp_epsilon``, what was clipped, what the
rule kept) appear in Flower's ``MetricRecord`` beside the clients' averaged metrics.

Sampling uses the strategy's own generator (``seed``, round), not Python's global one,
and waits at most ``node_wait_s`` for enough nodes.

**Bad replies** never reach the aggregate: a reply with an error, without the
``arrays`` record or the weight, with other keys or shapes than the global model, with
a non-finite or non-positive weight, from a node that was not sampled this round, or a
second reply from one node (both are dropped: the node equivocated) -- each drops that
node, with its reason in :attr:`PipelineStrategy.dropped` and the count in the metrics.

A pipeline with a secure-aggregation protocol is refused: Flower's replies carry
plaintext arrays, so a protocol run here would protect nothing; the protocols run over
Flower messages between ``ClientApp`` and ``ServerApp`` instead.

Examples
--------
>>> import numpy as np
>>> from flwr.app import ArrayRecord
>>> from fl_core.pipeline import Pipeline
>>> from fl_core.aggregation import WeightedMean
>>> strategy = PipelineStrategy(Pipeline(rule=WeightedMean()))
>>> g = ArrayRecord([np.zeros(2, dtype=np.float32)])
>>> strategy.remember_round(1, g, node_ids=[7, 9])
>>> replies = [reply(7, [np.array([1.0, 2.0], np.float32)], 1.0), reply(9, [np.array([3.0, 4.0], np.float32)], 3.0)]
>>> arrays, metrics = strategy.aggregate_train(1, replies)
>>> arrays.to_numpy_ndarrays()[0].tolist(), metrics["nodes-aggregated"]
([2.5, 3.5], 2.0)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fl_core.contracts import contract_of
from fl_core.errors import ConfigError
from fl_core.pipeline import Pipeline, Round
from fl_core.rng import Stream, numpy_generator

__all__ = ["NodeWaitTimeout", "PipelineStrategy", "reply"]

logger = logging.getLogger(__name__)


class NodeWaitTimeout(ConfigError):
    """Fewer nodes than a round needs connected within the strategy's wait."""


@dataclass(frozen=True)
class _Layout:
    """The global model's keys, shapes and dtypes in one round, and its flat float32 vector."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]
    flat: torch.Tensor

    @classmethod
    def of(cls, arrays: ArrayRecord) -> _Layout:
        keys = tuple(arrays.keys())
        nd = [arrays[k].numpy() for k in keys]
        flat = np.concatenate([a.astype(np.float32, copy=False).ravel() for a in nd]) if nd else np.zeros(0)
        return cls(keys, tuple(a.shape for a in nd), tuple(a.dtype for a in nd), torch.from_numpy(flat.copy()))

    def unflatten(self, flat: torch.Tensor) -> ArrayRecord:
        out, pos, v = ArrayRecord(), 0, flat.detach().cpu().numpy()
        for key, shape, dtype in zip(self.keys, self.shapes, self.dtypes, strict=True):
            size = math.prod(shape)
            out[key] = Array(np.ascontiguousarray(v[pos : pos + size].reshape(shape).astype(dtype)))
            pos += size
        return out


def reply(node_id: int, arrays: Sequence[np.ndarray] | None, num_examples: float, *, arrays_key: str = "arrays",
          weight_key: str = "num-examples", error: str | None = None) -> Message:
    """A train reply from ``node_id`` as the ServerApp receives it, for offline tests of a strategy.

    ``arrays=None`` leaves the ArrayRecord out; ``error`` makes it an error reply. A
    real reply comes from Flower's runtime, which fills the same metadata.
    """
    meta = Metadata(run_id=0, message_id="", src_node_id=int(node_id), dst_node_id=0, reply_to_message_id="",
                    group_id="", created_at=time.time(), ttl=3600.0, message_type=MessageType.TRAIN)
    if error is not None:
        return Message(error=Error(code=0, reason=error), metadata=meta)
    records: dict = {"metrics": MetricRecord({weight_key: num_examples})}
    if arrays is not None:
        records[arrays_key] = ArrayRecord([np.asarray(a) for a in arrays])
    return Message(content=RecordDict(records), metadata=meta)


class PipelineStrategy(FedAvg):
    """A flsec :class:`~fl_core.pipeline.Pipeline` as a Flower ``Strategy`` (Message API).

    Parameters
    ----------
    pipeline : Pipeline
        Any pipeline without a secure-aggregation protocol (robust rule, pre-aggregators,
        client/server transforms such as DP-FedAvg's clip and noise, server optimiser).
    fraction_train, min_train_nodes, min_available_nodes : float, int, int
        As Flower's ``FedAvg``.
    fraction_evaluate, min_evaluate_nodes : float, int
        As Flower's ``FedAvg`` (federated evaluation is Flower's, unchanged).
    seed : int
        Seed of the node sampling (keyed by round).
    node_wait_s : float
        Longest wait for ``min_available_nodes`` to connect before a round; then
        :class:`NodeWaitTimeout`.
    weighted_by_key, arrayrecord_key, configrecord_key : str
        As Flower's ``FedAvg``.
    """

    def __init__(self, pipeline: Pipeline, *, fraction_train: float = 1.0, fraction_evaluate: float = 0.0,
                 min_train_nodes: int = 2, min_evaluate_nodes: int = 2, min_available_nodes: int = 2,
                 seed: int = 0, node_wait_s: float = 120.0, weighted_by_key: str = "num-examples",
                 arrayrecord_key: str = "arrays", configrecord_key: str = "config") -> None:
        if not isinstance(pipeline, Pipeline):
            raise ConfigError(f"pipeline must be a fl_core.pipeline.Pipeline, got {type(pipeline).__name__}")
        self._check_protocol(pipeline)
        if not (0.0 < fraction_train <= 1.0):
            raise ConfigError(f"fraction_train must be in (0, 1], got fraction_train={fraction_train!r}")
        for name, v in (("min_train_nodes", min_train_nodes), ("min_available_nodes", min_available_nodes)):
            if not (isinstance(v, int) and v >= 1):
                raise ConfigError(f"{name} must be an int >= 1, got {name}={v!r}")
        if not (isinstance(node_wait_s, int | float) and 0 < node_wait_s < math.inf):
            raise ConfigError(f"node_wait_s must be a finite number > 0, got node_wait_s={node_wait_s!r}")
        super().__init__(fraction_train=fraction_train, fraction_evaluate=fraction_evaluate,
                         min_train_nodes=min_train_nodes, min_evaluate_nodes=min_evaluate_nodes,
                         min_available_nodes=min_available_nodes, weighted_by_key=weighted_by_key,
                         arrayrecord_key=arrayrecord_key, configrecord_key=configrecord_key)
        self.pipeline, self.seed, self.node_wait_s = pipeline, int(seed), float(node_wait_s)
        self._rounds: dict[int, tuple[_Layout, frozenset[int]]] = {}
        #: Node id to why its reply was dropped, for the latest aggregated round.
        self.dropped: dict[int, str] = {}

    def _check_protocol(self, pipeline: Pipeline) -> None:
        """Refuse a secure-aggregation protocol: here the replies carry plaintext arrays."""
        if contract_of(pipeline.aggregator).hides_rows:
            raise ConfigError(f"{type(pipeline.aggregator).__name__} is a secure-aggregation protocol: Flower's "
                              "train replies carry plaintext arrays, so running it in PipelineStrategy would protect "
                              "nothing; use secure_agg.flower_server.SecureAggregationStrategy, which runs it between "
                              "the ClientApp and the ServerApp")

    # ------------------------------------------------------------------ sampling
    def _wait_for_nodes(self, grid: Grid, need: int) -> list[int]:
        deadline = time.monotonic() + self.node_wait_s
        while len(nodes := sorted(grid.get_node_ids())) < need:
            if time.monotonic() > deadline:
                raise NodeWaitTimeout(f"only {len(nodes)} nodes connected after {self.node_wait_s:.0f} s, "
                                      f"a round needs {need}")
            time.sleep(0.5)
        return nodes

    def remember_round(self, server_round: int, arrays: ArrayRecord, *, node_ids: Iterable[int]) -> None:
        """Record the global model and the sampled nodes of ``server_round`` (``configure_train`` does this)."""
        self._rounds = {server_round: (_Layout.of(arrays), frozenset(int(n) for n in node_ids))}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sample nodes with the strategy's generator and send each the global model and the config."""
        nodes = self._wait_for_nodes(grid, self.min_available_nodes)
        size = min(len(nodes), max(int(len(nodes) * self.fraction_train), self.min_train_nodes))
        rng = numpy_generator(self.seed, Stream.SAMPLE, server_round)
        # indices, not the ids: Flower's node ids are 64-bit and NumPy would read a list of them as float64
        sampled = sorted(nodes[int(i)] for i in rng.choice(len(nodes), size=size, replace=False))
        logger.info("configure_train: round %d, %d of %d nodes", server_round, size, len(nodes))
        self.remember_round(server_round, arrays, node_ids=sampled)
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, sampled, MessageType.TRAIN)

    # ------------------------------------------------------------------ aggregation
    @staticmethod
    def _origin_problem(msg: Message, sampled: frozenset[int]) -> str | None:
        """Why a reply cannot count at all (an error reply, a node not sampled), or None."""
        if msg.has_error():
            return f"the node replied with an error: {msg.error.reason}"
        if msg.metadata.src_node_id not in sampled:
            return "the node was not sampled this round"
        return None

    def _weight(self, msg: Message) -> float | str:
        """The reply's one scalar weight, or why there is none."""
        weights = [m[self.weighted_by_key] for m in msg.content.metric_records.values() if self.weighted_by_key in m]
        if len(weights) != 1 or isinstance(weights[0], list):
            return f"not exactly one scalar '{self.weighted_by_key}' in the reply's MetricRecords"
        return float(weights[0])

    def _check(self, msg: Message, layout: _Layout, sampled: frozenset[int]) -> tuple[torch.Tensor, float] | str:
        """The reply's flat update and weight, or why it is refused."""
        if (why := self._origin_problem(msg, sampled)) is not None:
            return why
        content = msg.content
        if self.arrayrecord_key not in content.array_records:
            return f"no ArrayRecord '{self.arrayrecord_key}' in the reply"
        weight = self._weight(msg)
        if isinstance(weight, str):
            return weight
        if not (math.isfinite(weight) and weight > 0):
            return f"weight {self.weighted_by_key}={weight} is not a finite number > 0"
        arrays = content.array_records[self.arrayrecord_key]
        if tuple(arrays.keys()) != layout.keys:
            return f"arrays {list(arrays.keys())[:5]} do not match the global model's keys {list(layout.keys)[:5]}"
        parts = []
        for key, shape in zip(layout.keys, layout.shapes, strict=True):
            a = arrays[key]
            if tuple(a.shape) != shape:
                return f"array '{key}' has shape {tuple(a.shape)}, the global model {shape}"
            parts.append(a.numpy().astype(np.float32, copy=False).ravel())
        flat = torch.from_numpy(np.concatenate(parts)) if parts else torch.zeros(0)
        if not bool(torch.isfinite(flat).all()):
            return "the arrays hold NaN or Inf"
        update = flat - layout.flat
        if not bool(torch.isfinite(update).all()):  # finite arrays whose difference overflows float32
            return "the update (reply minus global model) overflows float32"
        return update, weight

    def _collect(self, server_round: int, replies: list[Message]) -> tuple[list[int], list[torch.Tensor], list[float]]:
        if server_round not in self._rounds:
            raise ConfigError(f"aggregate_train for round {server_round} without configure_train for it")
        layout, sampled = self._rounds[server_round]
        self.dropped = {}
        counts: dict[int, int] = {}
        for msg in replies:
            src = int(msg.metadata.src_node_id)
            counts[src] = counts.get(src, 0) + 1
        ids, rows, weights = [], [], []
        for msg in replies:
            src = int(msg.metadata.src_node_id)
            if counts[src] > 1:
                self.dropped[src] = f"{counts[src]} replies in one round (replayed or equivocating)"
                continue
            got = self._check(msg, layout, sampled)
            if isinstance(got, str):
                self.dropped[src] = got
                continue
            ids.append(src)
            rows.append(got[0])
            weights.append(got[1])
        for src, why in self.dropped.items():
            logger.warning("round %d: node %d dropped: %s", server_round, src, why)
        return ids, rows, weights

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Run the pipeline on the valid replies' updates; the new global arrays and the round's metrics."""
        replies = list(replies)
        ids, rows, weights = self._collect(server_round, replies)
        layout = self._rounds[server_round][0]
        metrics = {"nodes-aggregated": float(len(ids)), "nodes-dropped": float(len(self.dropped))}
        if not ids:
            logger.warning("round %d: no valid reply, the global model is unchanged", server_round)
            return None, MetricRecord(metrics)
        order = np.argsort(ids, kind="stable")  # row order by node id: the same cohort gives the same rows
        ids = [ids[i] for i in order]
        updates = torch.stack([rows[i] for i in order])
        w = torch.tensor([weights[i] for i in order], dtype=torch.float32)
        out = self.pipeline(updates, w, Round(server_round - 1, tuple(ids), layout.flat))
        metrics.update({k: float(v) for k, v in out.metrics.items()
                        if isinstance(v, int | float) and math.isfinite(float(v))})
        metrics["kept"] = float(out.result.kept.sum())
        valid = [m.content for m in replies if int(m.metadata.src_node_id) in set(ids)]
        client = self.train_metrics_aggr_fn(valid, self.weighted_by_key) if valid else MetricRecord()
        return layout.unflatten(out.params), MetricRecord({**dict(client), **metrics})
