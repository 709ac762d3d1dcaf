"""SecAgg+ over Flower messages, in process (real ClientApps and Messages, no Ray): bad input and a hostile wire.

Every test checks "the right aggregate, or a specific abort": the aggregate is compared
with the plaintext weighted mean of exactly the nodes the protocol kept.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("flwr", reason="the flower extra (flwr) is not installed")

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

from fl_core.errors import ConfigError
from fl_core.pipeline import Pipeline
from secure_agg.aggregator import SecAggPlusAggregator
from secure_agg.client_state import restore, snapshot
from secure_agg.flower_client import add_secagg, train_reply
from secure_agg.flower_server import SecureAggregationStrategy
from secure_agg.flower_wire import PIN_KEY, RECORD, STATE_KEY
from secure_agg.he.aggregator import BFVAggregator
from tests.secure_agg.flower_grid import LocalGrid

N, D = 6, 5
GLOBAL = [np.zeros((1, D), np.float32)]


def _local(partition: int) -> list[np.ndarray]:
    return [np.full((1, D), 0.1 * (partition + 1), np.float32) + np.arange(D, dtype=np.float32) / 100]


def _weight(partition: int) -> int:
    return 10 + partition


def _app(*, send_arrays: bool = False, weight=_weight) -> ClientApp:
    app = ClientApp()
    add_secagg(app)

    @app.train()
    def train(msg: Message, context) -> Message:
        p = int(context.node_config["partition-id"])
        reply = train_reply(msg, context, _local(p), weight(p))
        if send_arrays:
            reply.content["arrays"] = ArrayRecord(_local(p))
        return reply

    return app


def _strategy(**kw) -> SecureAggregationStrategy:
    agg = SecAggPlusAggregator(clip=1.0, gamma=0.0, delta=0.2)
    return SecureAggregationStrategy(Pipeline(secure=agg), min_train_nodes=N, min_available_nodes=N, **kw)


def _round(grid: LocalGrid, strategy: SecureAggregationStrategy, server_round: int = 1):
    msgs = list(strategy.configure_train(server_round, ArrayRecord(GLOBAL), ConfigRecord(), grid))
    replies = grid.send_and_receive(msgs)
    return strategy.aggregate_train(server_round, replies)


def _expected(partitions) -> np.ndarray:
    w = np.array([_weight(p) for p in partitions], np.float64)
    rows = np.stack([_local(p)[0][0].astype(np.float64) for p in partitions])
    return (w[:, None] * rows).sum(0) / w.sum()


def _check(arrays, partitions, metrics) -> None:
    assert arrays is not None
    got = arrays.to_numpy_ndarrays()[0][0]
    np.testing.assert_allclose(got, _expected(partitions), rtol=0, atol=metrics["quantization-error-bound"] + 1e-6)


def test_round_equals_weighted_fedavg_and_the_server_never_sees_an_update():
    grid = LocalGrid(_app(), N)
    arrays, metrics = _round(grid, _strategy())
    _check(arrays, range(N), metrics)
    assert metrics["nodes-aggregated"] == N and metrics["groups-aborted"] == 0
    # nothing the nodes sent holds a float array; their state is erased once the round is done
    assert not any(STATE_KEY in c.state for c in grid.contexts.values())


def _tamper_stage(stage: str, victim: int):
    def intercept(s: str, node: int, reply: Message) -> list[Message]:
        if s == stage and node == 1000 + victim and not reply.has_error():
            rec = reply.content.config_records[RECORD]
            payload = bytearray(rec["payload"])
            payload[-40] ^= 1  # one flipped bit inside the protocol message
            rec["payload"] = bytes(payload)
        return [reply]
    return intercept


@pytest.mark.parametrize("stage,counted", [("setup", False), ("keys", False), ("shares", False), ("unmask", True)])
def test_a_flipped_bit_on_the_wire_drops_that_node_and_the_sum_stays_right(stage, counted):
    strategy = _strategy()
    arrays, metrics = _round(LocalGrid(_app(), N, intercept=_tamper_stage(stage, 2)), strategy)
    # a node whose unmasking shares are rejected after its masked input arrived still counts: the others' shares
    # reconstruct its self-mask
    _check(arrays, list(range(N)) if counted else [p for p in range(N) if p != 2], metrics)
    assert list(strategy.dropped) == [1002] and "invalid MAC on message of client 3" in strategy.dropped[1002]


def test_a_masked_input_redirected_to_another_node_is_rejected():
    saved = {}

    def redirect(stage: str, node: int, reply: Message) -> list[Message]:
        if stage == "shares" and node == 1001:
            saved["y"] = reply.content.config_records[RECORD]["payload"]
        if stage == "shares" and node == 1003:
            reply.content.config_records[RECORD]["payload"] = saved["y"]  # node 1001's bytes as node 1003's
        return [reply]

    strategy = _strategy()
    arrays, metrics = _round(LocalGrid(_app(), N, intercept=redirect), strategy)
    _check(arrays, [p for p in range(N) if p != 3], metrics)
    assert list(strategy.dropped) == [1003]


def test_two_answers_in_one_stage_drop_the_node():
    def twice(stage: str, node: int, reply: Message) -> list[Message]:
        return [reply, reply] if (stage, node) == ("keys", 1004) else [reply]

    strategy = _strategy()
    arrays, metrics = _round(LocalGrid(_app(), N, intercept=twice), strategy)
    _check(arrays, [0, 1, 2, 3, 5], metrics)
    assert strategy.dropped == {1004: "keys: answered twice in one stage"}


def test_a_setup_sent_twice_is_refused_by_the_node():
    grid = LocalGrid(_app(), N)
    strategy = _strategy()
    _round(grid, strategy)
    ctx = grid.contexts[1000]
    setup = next(m for m in grid.sent if m.metadata.dst_node_id == 1000
                 and m.content.config_records.get(RECORD, {}).get("stage") == "setup")
    again = Message(RecordDict({RECORD: setup.content.config_records[RECORD]}), dst_node_id=1000,
                    message_type=setup.metadata.message_type)
    reply = grid.send_and_receive([again])[0]
    assert "no update kept for round 1" in reply.content.config_records[RECORD]["abort"]
    assert STATE_KEY not in ctx.state


def test_nodes_failing_below_the_threshold_abort_the_round_and_keep_the_model():
    def silent(stage: str, node: int, reply: Message) -> list[Message]:
        return [] if stage == "shares" and node >= 1002 else [reply]

    strategy = _strategy()
    arrays, metrics = _round(LocalGrid(_app(), N, intercept=silent), strategy)
    assert arrays is None and metrics["groups-aborted"] == 1
    assert strategy.aborted == {0: "only 2 clients completed COLLECT_INPUTS (threshold t=4); rejected: none"}


def test_a_node_whose_kept_weight_differs_from_its_report_aborts_in_setup():
    grid = LocalGrid(_app(), N)
    strategy = _strategy()
    replies = list(grid.send_and_receive(list(strategy.configure_train(1, ArrayRecord(GLOBAL), ConfigRecord(), grid))))
    grid.contexts[1001].state[STATE_KEY]["weight"] = 10**6
    arrays, metrics = strategy.aggregate_train(1, replies)
    _check(arrays, [p for p in range(N) if p != 1], metrics)
    assert "encodes weight" in strategy.dropped[1001]


def test_a_malicious_node_encoding_outside_the_ring_bound_aborts_the_round_never_a_wrong_mean():
    app = _app()
    honest = app._registered_funcs["train.flsec_secagg"]

    def cheat(msg: Message, context) -> Message:
        rec = msg.content.config_records[RECORD]
        if context.node_id == 1000 and rec["stage"] == "setup":  # encodes weight 2^20 against the server's W
            rec["weight"] = rec["weight-bound"] = 2**20
            context.state[STATE_KEY]["weight"] = 2**20
        return honest(msg, context)

    app._registered_funcs["train.flsec_secagg"] = cheat
    strategy = _strategy()
    arrays, metrics = _round(LocalGrid(app, N), strategy)
    assert arrays is None and metrics["groups-aborted"] == 1
    assert "does not decode" in strategy.aborted[0] and "total weight" in strategy.aborted[0]


def test_nodes_that_send_arrays_in_the_clear_are_dropped():
    strategy = _strategy()
    arrays, metrics = _round(LocalGrid(_app(send_arrays=True), N), strategy)
    assert arrays is None and metrics["nodes-trained"] == 0
    assert all("arrays in the clear" in why for why in strategy.dropped.values()) and len(strategy.dropped) == N


@pytest.mark.parametrize("weight", [2.5, 0, 2**21])
def test_a_weight_that_is_not_an_example_count_drops_the_node(weight):
    strategy = _strategy()
    arrays, metrics = _round(LocalGrid(_app(weight=lambda p: weight if p == 0 else _weight(p)), N), strategy)
    assert "integer example count" in strategy.dropped[1000] and metrics["nodes-trained"] == N - 1
    _check(arrays, range(1, N), metrics)


def test_a_pinned_node_refuses_another_server_key():
    grid = LocalGrid(_app(), N, node_config=lambda p: {PIN_KEY: "00" * 32} if p == 0 else {})
    strategy = _strategy()
    arrays, metrics = _round(grid, strategy)
    _check(arrays, range(1, N), metrics)
    assert "pins" in strategy.dropped[1000]


def test_strategy_refuses_what_it_cannot_run_over_flower():
    with pytest.raises(ConfigError, match="BFVAggregator"):
        SecureAggregationStrategy(Pipeline(secure=BFVAggregator(clip=1.0, precision_bits=12)))
    with pytest.raises(ConfigError, match="active setting"):
        SecureAggregationStrategy(Pipeline(secure=SecAggPlusAggregator(clip=1.0, active=True)))
    with pytest.raises(ConfigError, match="stage_timeout_s"):
        _strategy(stage_timeout_s=float("inf"))


def test_snapshot_restores_the_client_exactly_at_every_stage():
    grid = LocalGrid(_app(), N)
    strategy = _strategy()
    seen = []

    def spy(stage: str, node: int, reply: Message) -> list[Message]:
        st = grid.contexts[node].state
        if STATE_KEY in st and "snapshot" in st[STATE_KEY]:
            blob = bytes(st[STATE_KEY]["snapshot"])
            a = restore(blob)
            assert snapshot(a) == blob
            assert set(vars(a)) == set(vars(restore(snapshot(a))))
            seen.append((stage, a.state.name))
        return [reply]

    grid.intercept = spy
    arrays, metrics = _round(grid, strategy)
    _check(arrays, range(N), metrics)
    assert {s for s, _ in seen} == {"setup", "keys", "shares"}


def _app_with_row(bad_partition: int, row: np.ndarray) -> ClientApp:
    app = ClientApp()
    add_secagg(app)

    @app.train()
    def train(msg: Message, context) -> Message:
        p = int(context.node_config["partition-id"])
        local = [row.reshape(1, D).astype(np.float32)] if p == bad_partition else _local(p)
        return train_reply(msg, context, local, _weight(p))

    return app


def test_a_nan_update_makes_that_node_abort_in_setup_and_the_others_sum():
    strategy = _strategy()
    arrays, metrics = _round(LocalGrid(_app_with_row(4, np.full(D, np.nan)), N), strategy)
    _check(arrays, [0, 1, 2, 3, 5], metrics)
    assert "x contains NaN or Inf" in strategy.dropped[1004]


def test_a_huge_finite_update_is_clipped_to_the_ring_range_never_wraps():
    strategy = _strategy()  # clip c = 1.0 per coordinate
    arrays, metrics = _round(LocalGrid(_app_with_row(4, np.full(D, 3e38)), N), strategy)
    w = np.array([_weight(p) for p in range(N)], np.float64)
    rows = np.stack([np.ones(D) if p == 4 else _local(p)[0][0].astype(np.float64) for p in range(N)])
    want = (w[:, None] * rows).sum(0) / w.sum()
    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0][0], want, rtol=0,
                               atol=metrics["quantization-error-bound"] + 1e-6)
    assert not strategy.dropped


def test_train_reply_refuses_arrays_that_do_not_match_the_global_model():
    app = ClientApp()
    add_secagg(app)

    @app.train()
    def train(msg: Message, context) -> Message:
        return train_reply(msg, context, [np.zeros((2, D), np.float32)], 10)

    strategy = _strategy()
    arrays, metrics = _round(LocalGrid(app, N), strategy)
    assert arrays is None and metrics["nodes-trained"] == 0
    assert all("do not match the global model" in why for why in strategy.dropped.values())
