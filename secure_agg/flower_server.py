"""SecAgg+ (and grouped SecAgg+ with a robust rule) between a Flower ``ClientApp`` and ``ServerApp``.

Flower's own SecAgg+ (``flwr.server.workflow.SecAggPlusWorkflow`` with the
``flwr.client.mod.secaggplus_mod``) runs only in the legacy ``DefaultWorkflow`` with a
``LegacyContext`` and the ``configure_fit`` / ``aggregate_fit`` strategy API, and
produces a weighted mean only. :class:`SecureAggregationStrategy` runs flsec's SecAgg+
(Bell et al., CCS 2020) on Flower's current Message API (``flwr.serverapp.strategy``),
inside a flsec :class:`~fl_core.pipeline.Pipeline`::

    pipeline = Pipeline(client=[L2Clip(clip_norm=2.0)],
                        secure=GroupedSecAggPlus(group_size=3, clip=2.0), rule=Median(f=1),
                        server=[CentralGaussianNoise(...)])
    strategy = SecureAggregationStrategy(pipeline, min_available_nodes=10)
    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=5)

with the ``ClientApp`` of :mod:`secure_agg.flower_client` (``add_secagg(app)`` and
``train_reply``). A round is Flower's train round, in which each node trains, runs the
pipeline's client transforms (clip, local DP) on its own update and keeps it, then the
protocol's four stages (:mod:`secure_agg.flower_wire`), then the pipeline's server half
(:meth:`~fl_core.pipeline.Pipeline.finish`: central DP noise sized by the rule's
sensitivity, the privacy ledger, the server optimiser).

**What the ServerApp learns**: with ``SecAggPlusAggregator`` (or ``SecAggAggregator``),
the weighted mean of the survivors' updates and their total weight; with
``GroupedSecAggPlus``, each group's weighted mean (groups of at least ``s`` nodes,
random per round) and the rule's output; the example count each node reports. Never a
single node's update.

**Threat model**: the ServerApp (and the SuperLink relaying messages) honest but
curious; nodes may be malicious (they choose their update and may send anything the
protocol allows -- SecAgg does not validate inputs, which is what the robust rule over
group means is for); the network and the SuperLink may drop, delay, replay or alter
messages: a dropped node is a SecAgg+ dropout, an altered message fails its HMAC and
its sender is dropped. A node pinning the ServerApp's key
(:data:`~secure_agg.flower_wire.PIN_KEY`) also stops a relay from posing as the
ServerApp. Not supported here: the active (malicious-server) setting, which needs a
PKI of node signing keys, and the integer (distributed-DP) mode.

Examples
--------
>>> from fl_core.pipeline import Pipeline
>>> from secure_agg.aggregator import SecAggPlusAggregator
>>> s = SecureAggregationStrategy(Pipeline(secure=SecAggPlusAggregator(clip=1.0, gamma=0.0, delta=0.2)))
>>> s.stage_timeout_s
60.0
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fl_core.aggregation import AggregationResult, RoundContext, WeightedMean
from fl_core.errors import ConfigError, FlsecError
from fl_core.flower import PipelineStrategy, _Layout
from fl_core.pipeline import Pipeline, Round, StageKind
from fl_core.rng import Stream, numpy_generator, torch_generator
from secure_agg.aggregator import SecAggPlusAggregator
from secure_agg.errors import RingOverflowError
from secure_agg.flower_round import GroupRun, SecureRound, plan_group, survivors
from secure_agg.flower_wire import CONFIG_FLAG
from secure_agg.grouped import GroupedSecAggPlus, random_groups

__all__ = ["SecureAggregationStrategy"]

logger = logging.getLogger(__name__)

#: Largest example count one node may report (the ring must hold ``sum w * s * c``).
MAX_WEIGHT = 2**20


class SecureAggregationStrategy(PipelineStrategy):
    """A pipeline whose protocol (SecAgg+, SecAgg, grouped SecAgg+) runs over Flower messages.

    Parameters
    ----------
    pipeline : Pipeline
        Its ``secure`` slot is a ``SecAggPlusAggregator`` / ``SecAggAggregator`` or a
        ``GroupedSecAggPlus`` (with the robust rule in ``rule=``); no attack slot (an
        attacker is a node, in its ClientApp).
    stage_timeout_s : float
        Longest wait for the nodes' answers in each protocol stage; a node that has not
        answered by then is a dropout of that stage.
    **kwargs
        As :class:`~fl_core.flower.PipelineStrategy` (sampling, waits, record keys).
    """

    def __init__(self, pipeline: Pipeline, *, stage_timeout_s: float = 60.0, **kwargs: object) -> None:
        super().__init__(pipeline, **kwargs)  # type: ignore[arg-type]
        if not (isinstance(stage_timeout_s, int | float) and 0 < stage_timeout_s < math.inf):
            raise ConfigError(f"stage_timeout_s must be a finite number > 0, got stage_timeout_s={stage_timeout_s!r}")
        self.stage_timeout_s = float(stage_timeout_s)
        self._grid: Grid | None = None
        #: Group index -> why its protocol aborted, for the latest round.
        self.aborted: dict[int, str] = {}

    def _check_protocol(self, pipeline: Pipeline) -> None:
        secure = pipeline.aggregator
        inner = secure.secagg if isinstance(secure, GroupedSecAggPlus) else secure
        if not isinstance(inner, SecAggPlusAggregator):
            raise ConfigError(f"SecureAggregationStrategy runs SecAggPlusAggregator, SecAggAggregator or "
                              f"GroupedSecAggPlus over Flower messages, got secure={type(secure).__name__}")
        if inner.active or inner.integer_input:
            raise ConfigError("SecureAggregationStrategy does not run the active setting (it needs a PKI of node "
                              "signing keys) or integer_input (distributed DP); got "
                              f"active={inner.active}, integer_input={inner.integer_input}")
        if pipeline.attack is not None:
            raise ConfigError("a pipeline with an attack slot: over Flower an attacker is a node and changes its own "
                              "update in its ClientApp")

    @property
    def protocol(self) -> SecAggPlusAggregator:
        secure = self.pipeline.aggregator
        return secure.secagg if isinstance(secure, GroupedSecAggPlus) else secure  # type: ignore[return-value]

    # ------------------------------------------------------------------ train round
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """As the plain strategy, with the secure-round flag: nodes keep their update and reply the weight."""
        self._grid = grid
        config[CONFIG_FLAG] = True
        msgs = list(super().configure_train(server_round, arrays, config, grid))
        self.pipeline.check_cohort_size(len(msgs))  # before any node trains: a cohort the protocol cannot run
        return msgs

    def _check(self, msg: Message, layout: _Layout, sampled: frozenset[int]) -> tuple[None, float] | str:
        """A valid train reply of a secure round: sampled, no error, one integer weight, no arrays."""
        if (why := self._origin_problem(msg, sampled)) is not None:
            return why
        if msg.content.array_records:
            return "the node sent arrays in the clear in a secure round"
        w = self._weight(msg)
        if isinstance(w, str):
            return w
        if not (math.isfinite(w) and w == math.floor(w) and 1 <= w <= MAX_WEIGHT):
            return f"weight {self.weighted_by_key}={w} is not an integer example count in [1, {MAX_WEIGHT}]"
        return None, w

    # ------------------------------------------------------------------ secure aggregation
    def _plan(self, server_round: int, ids: list[int], weights: list[float], d: int) -> list[GroupRun]:
        order = sorted(range(len(ids)), key=lambda i: ids[i])
        ids, weights = [ids[i] for i in order], [int(weights[i]) for i in order]
        secure = self.pipeline.aggregator
        if isinstance(secure, GroupedSecAggPlus):
            gen = torch_generator(self.seed, Stream.SAMPLE, server_round, 1)
            parts = [sorted(idx.tolist()) for idx in random_groups(len(ids), secure.group_size, gen)]
        else:
            parts = [list(range(len(ids)))]
        rng = numpy_generator(self.seed, Stream.PLUGIN, server_round)
        return [plan_group(g, nodes=tuple(ids[i] for i in p), weights=tuple(weights[i] for i in p),
                           protocol=self.protocol, server_round=server_round, d=d, rng=rng)
                for g, p in enumerate(parts)]

    def _decode(self, runs: list[GroupRun]) -> tuple[list[torch.Tensor], list[float], list[int], float]:
        means, group_w, kept, err = [], [], [], 0.0
        self.aborted = {}
        for grp in runs:
            if grp.failed is None:
                try:
                    mean, wsum = grp.enc.decode_mean(grp.server.result().sum)  # type: ignore[union-attr]
                except RingOverflowError as e:
                    grp.failed = f"the sum does not decode (a node sent words no honest encoding gives): {e}"
            if grp.failed is not None:
                self.aborted[grp.g] = grp.failed
                continue
            means.append(torch.from_numpy(np.asarray(mean, np.float32)))
            group_w.append(float(wsum))
            alive = survivors(grp)
            kept.extend(alive)
            err = max(err, grp.enc.mean_error_bound(len(alive), wsum))
        return means, group_w, kept, err

    def _rule(self, server_round: int, means: list[torch.Tensor], group_w: list[float]) -> AggregationResult:
        secure = self.pipeline.aggregator
        rule = secure.rule if isinstance(secure, GroupedSecAggPlus) else WeightedMean()
        M, W = torch.stack(means), torch.tensor(group_w, dtype=torch.float32)
        rule.check_tolerance(M.shape[0])
        g = torch_generator(self.pipeline.seed, Stream.PLUGIN, server_round - 1, StageKind.AGGREGATOR, 0)
        ctx = RoundContext(server_round - 1, tuple(range(M.shape[0])), W, torch.zeros(M.shape[1]), g)
        return rule.aggregate(M, W, ctx=ctx)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Run the protocol with the nodes that replied, then the rule over the group means and the server half."""
        replies = list(replies)
        ids, _, weights = self._collect(server_round, replies)
        layout = self._rounds[server_round][0]
        d = int(layout.flat.numel())
        metrics = {"nodes-trained": float(len(ids)), "nodes-dropped-train": float(len(self.dropped))}
        if len(ids) < 2 or self._grid is None:
            logger.warning("round %d: %d valid train replies, no secure round", server_round, len(ids))
            return None, MetricRecord(metrics)
        try:
            runs = self._plan(server_round, ids, weights, d)
        except FlsecError as e:  # SecAggError is one: too few replies for a secure (k, t)
            logger.warning("round %d: no secure round for %d nodes: %s", server_round, len(ids), e)
            self.aborted = {-1: str(e)}
            return None, MetricRecord(metrics)
        rnd = SecureRound(self._grid, server_round, runs, self.stage_timeout_s)
        rnd.run()
        self.dropped.update(rnd.dropped)
        means, group_w, kept, err = self._decode(runs)
        metrics.update({"groups": float(len(runs)), "groups-aborted": float(len(self.aborted)),
                        "nodes-aggregated": float(len(kept)), "nodes-dropped": float(len(self.dropped)),
                        "secure-bytes-up": float(rnd.bytes_up), "secure-bytes-down": float(rnd.bytes_down),
                        "secure-seconds": rnd.seconds})
        if not means:
            logger.warning("round %d: every group aborted, the global model is unchanged: %s", server_round,
                           self.aborted)
            return None, MetricRecord(metrics)
        try:
            result = self._rule(server_round, means, group_w)
        except FlsecError as e:
            logger.warning("round %d: the rule cannot run on %d group means: %s", server_round, len(means), e)
            return None, MetricRecord(metrics)
        out = self.pipeline.finish(result, Round(server_round - 1, tuple(sorted(kept)), layout.flat),
                                   bound=self.pipeline.client_bound(d), n=len(kept))
        metrics.update({k: float(v) for k, v in out.metrics.items()
                        if isinstance(v, int | float) and math.isfinite(float(v))})
        metrics["quantization-error-bound"] = err  # per coordinate, of each group's mean
        trained = set(ids)
        valid = [m.content for m in replies if not m.has_error() and int(m.metadata.src_node_id) in trained]
        client = self.train_metrics_aggr_fn(valid, self.weighted_by_key) if valid else MetricRecord()
        return layout.unflatten(out.params), MetricRecord({**dict(client), **metrics})
