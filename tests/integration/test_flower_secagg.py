"""flsec's SecAgg+ between a Flower ClientApp and ServerApp, in a real Flower simulation (10 SuperNodes).

The aggregate of every round is checked against plaintext FedAvg of exactly the nodes
the protocol kept, recomputed here from the same deterministic local training; nodes
fail mid-round (``flower_apps.FAILS``) before and after sending their masked input.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray listens on 127.0.0.1 only
pytest.importorskip("flwr", reason="the flower extra (flwr) is not installed")
ray = pytest.importorskip("ray", reason="Flower's simulation runs on Ray")

from flwr.app import ArrayRecord, Context, MetricRecord  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

from defenses.dp import CentralDPFedAvg  # noqa: E402
from defenses.robust import Median  # noqa: E402
from fl_core.pipeline import Pipeline  # noqa: E402
from secure_agg.aggregator import SecAggPlusAggregator  # noqa: E402
from secure_agg.flower_server import SecureAggregationStrategy  # noqa: E402
from secure_agg.grouped import GroupedSecAggPlus  # noqa: E402
from tests.integration import flower_apps  # noqa: E402

NODES, ROUNDS = 10, 3


_initial = flower_apps.initial_arrays


class RecordingStrategy(flower_apps.Recording, SecureAggregationStrategy):
    """Records, per round, which partition each node holds and whom the protocol kept or dropped."""


def _simulate(strategy: SecureAggregationStrategy, client_app) -> dict[int, list[np.ndarray]]:
    """Run ROUNDS rounds; the global model after each round (0: the initial one)."""
    models: dict[int, list[np.ndarray]] = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        def keep(rnd: int, arrays: ArrayRecord) -> MetricRecord:
            models[rnd] = arrays.to_numpy_ndarrays()
            return MetricRecord({"accuracy": flower_apps.accuracy(models[rnd])})

        strategy.start(grid=grid, initial_arrays=ArrayRecord(_initial()), num_rounds=ROUNDS, timeout=120,
                       evaluate_fn=keep)

    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        run_simulation(server_app=server, client_app=client_app, num_supernodes=NODES,
                       backend_config={"client_resources": {"num_cpus": 1}})
    finally:
        ray.shutdown()
    return models


def test_secagg_plus_over_flower_equals_plaintext_fedavg_of_the_survivors_with_nodes_failing_mid_round():
    strategy = RecordingStrategy(Pipeline(secure=SecAggPlusAggregator(clip=50.0, gamma=0.0, delta=0.3)),
                                 min_train_nodes=NODES, min_available_nodes=NODES, stage_timeout_s=60)
    models = _simulate(strategy, flower_apps.secure_app)
    assert sorted(models) == list(range(ROUNDS + 1))
    node_of = {p: n for n, p in strategy.partition.items()}
    assert sorted(node_of) == list(range(NODES))
    expected_gone = {1: set(), 2: {3, 4}, 3: set()}  # round 3: node 5 fails after its masked input: it counts
    for rnd in range(1, ROUNDS + 1):
        log = strategy.log[rnd]
        gone = {strategy.partition[n] for n in log["dropped"]}
        assert gone == expected_gone[rnd] | ({5} if rnd == 3 else set()), log
        kept = sorted(set(range(NODES)) - expected_gone[rnd])
        assert log["metrics"]["nodes-aggregated"] == len(kept) and not log["aborted"]
        news = [flower_apps.local_train(models[rnd - 1], p) for p in kept]
        fedavg = [np.mean([n[k].astype(np.float64) for n in news], axis=0) for k in range(2)]
        tol = log["metrics"]["quantization-error-bound"] + 1e-5  # plus float32 rounding of the arrays
        for got, want in zip(models[rnd], fedavg, strict=True):
            np.testing.assert_allclose(got, want, rtol=0, atol=tol)
    assert strategy.log[3]["dropped"][node_of[5]].startswith("unmask: error")
    assert strategy.log[2]["dropped"][node_of[3]].startswith("shares: error")
    # only protocol bytes went up: per node about one masked ring vector (4 bytes per parameter) plus keys and shares
    d = flower_apps.CLASSES * (flower_apps.FEATURES + 1)
    up = strategy.log[1]["metrics"]["secure-bytes-up"] / NODES
    assert 4 * (d + 1) < up < 4 * (d + 1) + 4000


def test_median_over_grouped_secagg_plus_with_central_dp_over_flower_resists_two_sign_flipping_nodes():
    dp = CentralDPFedAvg(noise_multiplier=0.002, expected_clients=NODES, sample_rate=1.0, delta=1e-5, clip_norm=5.0)
    pipeline = Pipeline(client=[dp.clip], secure=GroupedSecAggPlus(group_size=2, clip=5.0, gamma=0.0, delta=0.0),
                        rule=Median(f=2), server=[dp.noise], seed=3)
    strategy = RecordingStrategy(pipeline, min_train_nodes=NODES, min_available_nodes=NODES, seed=3)
    models = _simulate(strategy, flower_apps.steady_app)
    for rnd in range(1, ROUNDS + 1):
        m = strategy.log[rnd]["metrics"]
        assert m["groups"] == 5 and m["groups-aborted"] == 0 and m["nodes-aggregated"] == NODES
        assert m["dp_epsilon"] > 0 and np.isfinite(m["dp_epsilon"])
    eps = [strategy.log[r]["metrics"]["dp_epsilon"] for r in range(1, ROUNDS + 1)]
    assert eps == sorted(eps) and eps[0] < eps[-1]  # the ledger accumulates over the rounds
    plain = _initial()
    for _ in range(ROUNDS):
        news = [flower_apps.local_train(plain, p) for p in range(NODES)]
        plain = [np.mean([n[k] for n in news], axis=0) for k in range(2)]
    robust = flower_apps.accuracy(models[ROUNDS])
    assert robust >= 0.9 and flower_apps.accuracy(plain) <= 0.5, (robust, flower_apps.accuracy(plain))
