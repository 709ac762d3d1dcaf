"""PipelineStrategy: flsec pipelines as a Flower strategy, on real Flower Message objects."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

flwr = pytest.importorskip("flwr", reason="the flower extra (flwr) is not installed")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from flwr.app import ArrayRecord  # noqa: E402

from defenses.dp import CentralDPFedAvg  # noqa: E402
from defenses.robust import FoolsGold, Krum, Median  # noqa: E402
from fl_core.aggregation import WeightedMean  # noqa: E402
from fl_core.errors import ConfigError  # noqa: E402
from fl_core.flower import PipelineStrategy, reply  # noqa: E402
from fl_core.pipeline import Pipeline, Round  # noqa: E402
from secure_agg.aggregator import SecAggPlusAggregator  # noqa: E402

SHAPES = [(3, 2), (4,)]


def _global(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype(np.float32) for s in SHAPES]


def _arrays(g: list[np.ndarray], delta: np.ndarray) -> list[np.ndarray]:
    out, pos = [], 0
    for a in g:
        out.append((a + delta[pos : pos + a.size].reshape(a.shape)).astype(np.float32))
        pos += a.size
    return out


def _flat(arrays) -> np.ndarray:
    return np.concatenate([a.ravel() for a in arrays])


D = sum(int(np.prod(s)) for s in SHAPES)


def _cohort(ids, seed=1):
    rng = np.random.default_rng(seed)
    return {i: rng.normal(scale=0.1, size=D).astype(np.float32) for i in ids}


def test_aggregate_equals_the_pipeline_on_the_updates_with_node_ids_as_client_ids():
    g, ids = _global(), [41, 7, 1000003, 12, 99]
    deltas = _cohort(ids)
    deltas[12] = deltas[12] * 0 + 50.0  # an outlier the median ignores
    strategy = PipelineStrategy(Pipeline(rule=Median(f=1)))
    strategy.remember_round(3, ArrayRecord(g), node_ids=ids)
    replies = [reply(i, _arrays(g, deltas[i]), 10.0 + i % 7) for i in ids]
    arrays, metrics = strategy.aggregate_train(3, replies)
    order = sorted(ids)
    expected = Pipeline(rule=Median(f=1))(torch.from_numpy(np.stack([deltas[i] for i in order])),
                                          torch.tensor([10.0 + i % 7 for i in order]),
                                          Round(2, tuple(order), torch.from_numpy(_flat(g))))
    assert np.allclose(_flat(arrays.to_numpy_ndarrays()), expected.params.numpy(), atol=1e-6)
    assert [a.shape for a in arrays.to_numpy_ndarrays()] == SHAPES
    assert metrics["nodes-aggregated"] == 5.0 and metrics["nodes-dropped"] == 0.0
    assert np.abs(_flat(arrays.to_numpy_ndarrays()) - _flat(g)).max() < 1.0  # the outlier (50) is out


def test_bad_replies_drop_their_node_and_the_rest_is_aggregated():
    g, ids = _global(), [1, 2, 3, 4, 5, 6, 7, 8]
    deltas = _cohort(ids)
    good = [reply(i, _arrays(g, deltas[i]), 1.0) for i in (1, 2, 3)]
    bad = {
        4: reply(4, None, 1.0),  # no arrays
        5: reply(5, [np.zeros((3, 2), np.float32), np.zeros(5, np.float32)], 1.0),  # wrong shape
        6: reply(6, _arrays(g, deltas[6]), 0.0),  # weight 0
        7: reply(7, [np.full((3, 2), np.nan, np.float32), np.zeros(4, np.float32)], 1.0),  # NaN
        8: reply(8, None, 1.0, error="ClientApp crashed"),
        99: reply(99, _arrays(g, deltas[1]), 1.0),  # not sampled
    }
    twice = [reply(2, _arrays(g, deltas[2] + 1.0), 1.0)]  # node 2 replies twice: both dropped
    strategy = PipelineStrategy(Pipeline(rule=WeightedMean()))
    strategy.remember_round(1, ArrayRecord(g), node_ids=ids)
    arrays, metrics = strategy.aggregate_train(1, good + list(bad.values()) + twice)
    assert set(strategy.dropped) == {2, 4, 5, 6, 7, 8, 99}
    reasons = strategy.dropped
    assert "no ArrayRecord" in reasons[4] and "shape" in reasons[5] and "weight" in reasons[6]
    assert "NaN" in reasons[7] and "ClientApp crashed" in reasons[8] and "not sampled" in reasons[99]
    assert "2 replies" in reasons[2]
    expected = _flat(g) + (deltas[1] + deltas[3]) / 2
    assert np.allclose(_flat(arrays.to_numpy_ndarrays()), expected, atol=1e-6)
    assert metrics["nodes-aggregated"] == 2.0 and metrics["nodes-dropped"] == 7.0


def test_no_valid_reply_leaves_the_model_unchanged_and_says_so():
    g = _global()
    strategy = PipelineStrategy(Pipeline(rule=WeightedMean()))
    strategy.remember_round(1, ArrayRecord(g), node_ids=[1])
    arrays, metrics = strategy.aggregate_train(1, [reply(1, None, 1.0, error="timeout")])
    assert arrays is None and metrics["nodes-aggregated"] == 0.0
    with pytest.raises(ConfigError, match="without configure_train"):
        strategy.aggregate_train(2, [])


def test_stateful_rule_history_follows_node_ids_not_reply_order():
    """FoolsGold keeps a history per client: two rounds with the replies shuffled equal the sorted cohort."""
    g, ids = _global(), [30, 10, 20, 40]
    rounds = [_cohort(ids, seed=s) for s in (1, 2)]
    for r in rounds:
        r[40] = r[30].copy()  # two sybils with identical histories
    strategy = PipelineStrategy(Pipeline(rule=FoolsGold()))
    direct = Pipeline(rule=FoolsGold())
    gl = g
    for k, deltas in enumerate(rounds, start=1):
        strategy.remember_round(k, ArrayRecord(gl), node_ids=ids)
        order = ids if k == 1 else ids[::-1]
        arrays, _ = strategy.aggregate_train(k, [reply(i, _arrays(gl, deltas[i]), 1.0) for i in order])
        srt = sorted(ids)
        out = direct(torch.from_numpy(np.stack([deltas[i] for i in srt])), torch.ones(4),
                     Round(k - 1, tuple(srt), torch.from_numpy(_flat(gl))))
        assert np.allclose(_flat(arrays.to_numpy_ndarrays()), out.params.numpy(), atol=1e-6)
        gl = arrays.to_numpy_ndarrays()


def test_dp_fedavg_reports_the_ledgers_epsilon_in_flowers_metrics():
    dp = CentralDPFedAvg(noise_multiplier=1.0, expected_clients=4, sample_rate=1.0, delta=1e-5, clip_norm=1.0)
    strategy = PipelineStrategy(dp.pipeline(seed=3))
    g, ids = _global(), [1, 2, 3, 4]
    for k in (1, 2):
        strategy.remember_round(k, ArrayRecord(g), node_ids=ids)
        _, metrics = strategy.aggregate_train(k, [reply(i, _arrays(g, d), 1.0) for i, d in _cohort(ids, k).items()])
        assert metrics["dp_epsilon"] == pytest.approx(dp.ledger.epsilon()) and metrics["dp_epsilon"] > 0
    assert dp.ledger.epsilon() > 0


def test_construction_refuses_a_secure_protocol_and_bad_values():
    with pytest.raises(ConfigError, match="plaintext arrays"):
        PipelineStrategy(Pipeline(secure=SecAggPlusAggregator(clip=1.0)))
    with pytest.raises(ConfigError, match="fraction_train"):
        PipelineStrategy(Pipeline(rule=Krum(f=1)), fraction_train=0.0)
    with pytest.raises(ConfigError, match="node_wait_s"):
        PipelineStrategy(Pipeline(rule=Krum(f=1)), node_wait_s=float("inf"))
    with pytest.raises(ConfigError, match="min_train_nodes"):
        PipelineStrategy(Pipeline(rule=Krum(f=1)), min_train_nodes=0)
    with pytest.raises(ConfigError, match="Pipeline"):
        PipelineStrategy(Krum(f=1))  # type: ignore[arg-type]


def test_huge_finite_values_reach_the_robust_rule_and_an_overflowing_update_is_dropped():
    """A reply of 3e38 everywhere is finite: Median ignores it; one whose difference to the model overflows is out."""
    g = [np.full(s, -3.0e38, np.float32) if k == 1 else np.zeros(s, np.float32) for k, s in enumerate(SHAPES)]
    ids = [1, 2, 3, 4, 5]
    deltas = _cohort(ids)
    replies = [reply(i, _arrays(g, deltas[i]), 1.0) for i in (1, 2, 3, 4)]
    replies.append(reply(5, [np.full(s, 3.0e38, np.float32) for s in SHAPES], 1.0))  # 3e38 - (-3e38) = inf
    strategy = PipelineStrategy(Pipeline(rule=Median(f=1)))
    strategy.remember_round(1, ArrayRecord(g), node_ids=ids)
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert list(strategy.dropped) == [5] and "overflows" in strategy.dropped[5]
    g2 = _global()
    huge = [reply(i, _arrays(g2, deltas[i]), 1.0) for i in (1, 2, 3, 4)]
    huge.append(reply(5, [np.full(s, 3.0e38, np.float32) for s in SHAPES], 1.0))
    strategy.remember_round(2, ArrayRecord(g2), node_ids=ids)
    arrays, metrics = strategy.aggregate_train(2, huge)
    assert strategy.dropped == {} and metrics["nodes-aggregated"] == 5.0
    assert np.abs(_flat(arrays.to_numpy_ndarrays()) - _flat(g2)).max() < 1.0  # the median outvotes 3e38
