"""The two-server protocol over Flower messages: real ClientApps on an in-process Grid, S1 and the dealer as processes.

The ServerApp side is :class:`~secure_agg.flower_twoserver.TwoServerStrategy` (S0); the
nodes answer the train message with two sealed shares (``train_reply``). Each round's
new model equals the global model plus plaintext Krum over the accepted nodes' updates,
or the node / round is refused with a specific reason.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("flwr", reason="the flower extra (flwr) is not installed")

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.clientapp import ClientApp

from defenses.robust import Krum
from fl_core.errors import ConfigError
from fl_core.pipeline import Pipeline
from secure_agg.aggregator import SecAggPlusAggregator
from secure_agg.flower_client import train_reply
from secure_agg.flower_twoserver import TwoServerStrategy
from secure_agg.flower_wire import PIN_S1_KEY, TWO_SERVER_RECORD
from secure_agg.twoserver import TwoServerAggregator
from secure_agg.twoserver.params import SERVERS, Party
from tests.secure_agg import twoserver_procs
from tests.secure_agg.flower_grid import LocalGrid

N, D, BOUND = 7, 40, 2.0
GLOBAL = [np.full((4, D // 4), 0.5, np.float32)]


def _update(partition: int) -> np.ndarray:
    rng = np.random.default_rng(100 + partition)
    u = rng.normal(0.0, 0.05, D) + 0.1
    if partition == 6:
        u *= 100.0  # norm about 12 > BOUND: refused by the servers' validation
    return u.reshape(4, D // 4).astype(np.float32)


def _app(*, edit=None) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context) -> Message:
        p = int(context.node_config["partition-id"])
        reply = train_reply(msg, context, [GLOBAL[0] + _update(p)], 10 + p)
        return edit(p, reply) if edit else reply

    return app


@pytest.fixture(scope="module")
def procs():
    with twoserver_procs.parties("--rule", "krum", "--param", "f=2", "--bound", str(BOUND)) as pair:
        yield pair


@pytest.fixture(autouse=True)
def _close_links():
    made: list[TwoServerStrategy] = []
    real = TwoServerStrategy.__init__

    def record(self, *a, **kw):
        real(self, *a, **kw)
        made.append(self)

    TwoServerStrategy.__init__ = record
    yield
    TwoServerStrategy.__init__ = real
    for s in made:
        s.close()


def _strategy(procs, **kw) -> TwoServerStrategy:
    s1, dealer = procs
    pipeline = Pipeline(secure=TwoServerAggregator(bound=BOUND), rule=Krum(f=2))
    return TwoServerStrategy(pipeline, s1=s1.address, dealer=dealer.address, s1_public=s1.public,
                             dealer_public=dealer.public, min_train_nodes=N, min_available_nodes=N, **kw)


def _round(grid: LocalGrid, strategy: TwoServerStrategy, server_round: int = 1):
    msgs = list(strategy.configure_train(server_round, ArrayRecord(GLOBAL), ConfigRecord(), grid))
    return strategy.aggregate_train(server_round, grid.send_and_receive(msgs))


def _expected(partitions, rejected: int) -> np.ndarray:
    rows = torch.tensor(np.stack([_update(p).ravel() for p in partitions]), dtype=torch.float64)
    w = torch.tensor([10.0 + p for p in partitions], dtype=torch.float64)
    return GLOBAL[0].ravel() + Krum(f=2).excluding(rejected)(rows, w).numpy()


def _got(arrays) -> np.ndarray:
    assert arrays is not None
    return arrays.to_numpy_ndarrays()[0].ravel()


def test_a_round_equals_plaintext_krum_of_the_accepted_nodes_and_the_server_sees_no_update(procs):
    grid = LocalGrid(_app(), N)
    strategy = _strategy(procs)
    arrays, metrics = _round(grid, strategy)
    np.testing.assert_allclose(_got(arrays), _expected(range(6), rejected=1), rtol=0, atol=1e-6)
    assert metrics["nodes-trained"] == N and metrics["nodes-rejected"] == 1 and metrics["nodes-aggregated"] == 1
    # every train message carried the servers' keys and the cohort; no reply carried arrays
    for reply in grid.sent:
        assert bytes(reply.content["config"]["flsec-2s-s1"]) == procs[0].public
    assert metrics["node-upload-bytes"] < 8 * D + 400  # a seed and one ring vector, sealed
    _, metrics2 = _round(grid, strategy, server_round=2)  # the next round, same processes and links
    assert metrics2["nodes-aggregated"] == 1 and "aborted" not in metrics2


def test_bad_replies_drop_their_node_with_the_reason(procs):
    def edit(p, reply):
        if p == 0:
            reply.content["arrays"] = ArrayRecord([GLOBAL[0]])
        if p == 1:
            del reply.content[TWO_SERVER_RECORD]
        if p == 2:
            reply.content[TWO_SERVER_RECORD]["public"] = b"short"
        return reply

    strategy = _strategy(procs)
    arrays, metrics = _round(LocalGrid(_app(edit=edit), N), strategy)
    node = {p: 1000 + p for p in range(N)}
    assert strategy.dropped[node[0]] == "the node sent arrays in the clear in a two-server round"
    assert strategy.dropped[node[1]].startswith("no ConfigRecord 'flsec-two-server'")
    assert strategy.dropped[node[2]].startswith("the share record's fields")
    # 3 honest nodes left and one rejected: Krum(f=2) runs as Krum(f=1), which needs n > 4: a specific abort
    assert arrays is None and metrics["aborted"] == 1.0
    assert strategy.rounds_aborted[1].endswith("Krum needs n > 2f + 2, got n=3, f=1")


def test_a_share_altered_on_its_way_to_s1_drops_only_that_node(procs):
    def edit(p, reply):
        if p == 3:
            frame = bytearray(reply.content[TWO_SERVER_RECORD]["to-s1"])
            frame[-5] ^= 1
            reply.content[TWO_SERVER_RECORD]["to-s1"] = bytes(frame)
        return reply

    strategy = _strategy(procs)
    arrays, _ = _round(LocalGrid(_app(edit=edit), N), strategy)
    assert "failed authentication" in strategy.dropped[1003]
    np.testing.assert_allclose(_got(arrays), _expected([0, 1, 2, 4, 5], rejected=1), rtol=0, atol=1e-6)


def test_a_node_with_a_nan_update_is_dropped_with_the_reason_and_a_huge_one_is_rejected_by_norm(procs):
    def app_with(p: int, value: float):
        app = ClientApp()

        @app.train()
        def train(msg: Message, context) -> Message:
            q = int(context.node_config["partition-id"])
            local = GLOBAL[0] + _update(q)
            if q == p:
                local = local.copy()
                local[0, 0] = value
            return train_reply(msg, context, [local], 10 + q)

        return app

    strategy = _strategy(procs)
    arrays, _ = _round(LocalGrid(app_with(2, float("nan")), N), strategy)
    assert "the update contains NaN or Inf" in strategy.dropped[1002]
    np.testing.assert_allclose(_got(arrays), _expected([0, 1, 3, 4, 5], rejected=1), rtol=0, atol=1e-6)
    strategy = _strategy(procs)
    arrays, metrics = _round(LocalGrid(app_with(2, 3e38), N), strategy)  # saturated at the ring's edge
    assert metrics["nodes-rejected"] == 2  # node 6 and the 3e38 node fail validation, never wrap
    np.testing.assert_allclose(_got(arrays), _expected([0, 1, 3, 4, 5], rejected=2), rtol=0, atol=1e-6)


def test_a_node_pinning_another_s1_key_refuses_to_share(procs):
    pin = {PIN_S1_KEY: Party(SERVERS[1]).public.hex()}
    grid = LocalGrid(_app(), N, node_config=lambda p: pin if p == 4 else {})
    strategy = _strategy(procs)
    arrays, _ = _round(grid, strategy)
    assert "is not the one this node pins" in strategy.dropped[1004]
    np.testing.assert_allclose(_got(arrays), _expected([0, 1, 2, 3, 5], rejected=1), rtol=0, atol=1e-6)


def test_a_round_whose_s1_runs_another_rule_aborts_and_keeps_the_model(procs):
    s1, dealer = procs
    pipeline = Pipeline(secure=TwoServerAggregator(bound=BOUND), rule=Krum(f=1))
    strategy = TwoServerStrategy(pipeline, s1=s1.address, dealer=dealer.address, s1_public=s1.public,
                                 min_train_nodes=N, min_available_nodes=N)
    arrays, metrics = _round(LocalGrid(_app(), N), strategy)
    assert arrays is None and metrics["aborted"] == 1.0
    assert "S1 is configured with rule='Krum(f=2)'" in strategy.rounds_aborted[1]


def test_construction_errors_name_the_value():
    with pytest.raises(ConfigError, match="TwoServerStrategy runs TwoServerAggregator"):
        TwoServerStrategy(Pipeline(secure=SecAggPlusAggregator(clip=1.0)), s1=("127.0.0.1", 1),
                          dealer=("127.0.0.1", 2))
    with pytest.raises(ConfigError, match="link_timeout_s must be"):
        TwoServerStrategy(Pipeline(secure=TwoServerAggregator(bound=1.0)), s1=("127.0.0.1", 1),
                          dealer=("127.0.0.1", 2), link_timeout_s=0)
    unreachable = TwoServerStrategy(Pipeline(secure=TwoServerAggregator(bound=1.0)), s1=("127.0.0.1", 1),
                                    dealer=("127.0.0.1", 2), min_train_nodes=2, min_available_nodes=2)
    with pytest.raises(ConfigError, match="S1 is unreachable"):
        list(unreachable.configure_train(1, ArrayRecord(GLOBAL), ConfigRecord(), LocalGrid(_app(), 2)))


def test_with_the_default_rule_a_round_equals_weighted_fedavg_of_the_accepted_nodes():
    with twoserver_procs.parties("--bound", str(BOUND)) as (s1, dealer):  # S1 runs the weighted mean
        strategy = TwoServerStrategy(Pipeline(secure=TwoServerAggregator(bound=BOUND)), s1=s1.address,
                                     dealer=dealer.address, s1_public=s1.public, dealer_public=dealer.public,
                                     min_train_nodes=N, min_available_nodes=N)
        arrays, metrics = _round(LocalGrid(_app(), N), strategy)
    kept = range(6)  # node 6's norm is over the bound: out of the round
    w = np.array([10.0 + p for p in kept])
    fedavg = GLOBAL[0].ravel() + (w[:, None] * np.stack([_update(p).ravel() for p in kept])).sum(0) / w.sum()
    np.testing.assert_allclose(_got(arrays), fedavg, rtol=0, atol=1e-6)
    assert metrics["nodes-aggregated"] == 6 and metrics["nodes-rejected"] == 1
