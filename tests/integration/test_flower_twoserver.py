"""Krum under two-server secret sharing in a real Flower simulation (10 SuperNodes), S1 and the dealer as processes.

The ServerApp's strategy is S0; S1 and the dealer are ``python -m benchmarks.twoserver_serve``
processes on 127.0.0.1. Every round's new model is checked against the global model plus
plaintext Krum over the nodes the servers accepted, recomputed here from the same
deterministic local training; in the first round the two sign-flipping nodes' boosted
updates exceed the norm bound and are refused by the servers' validation (later, Krum
outvotes them), and the run reaches accuracy 0.9.
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

from defenses.robust import Krum  # noqa: E402
from fl_core.pipeline import Pipeline  # noqa: E402
from secure_agg.flower_twoserver import TwoServerStrategy  # noqa: E402
from secure_agg.twoserver import TwoServerAggregator  # noqa: E402
from tests.integration import flower_apps  # noqa: E402
from tests.secure_agg import twoserver_procs  # noqa: E402

NODES, ROUNDS, BOUND = 10, 3, 6.0


class RecordingStrategy(flower_apps.Recording, TwoServerStrategy):
    """Records, per round, which partition each node holds and whom the protocol kept or dropped."""


def _clip(update: np.ndarray, c: float = 5.0) -> np.ndarray:
    return update * min(1.0, c / float(np.linalg.norm(update)))


def test_krum_under_two_server_sharing_over_flower_equals_plaintext_krum_of_the_accepted_nodes():
    models: dict[int, list[np.ndarray]] = {}
    with twoserver_procs.parties("--rule", "krum", "--param", "f=2", "--bound", str(BOUND)) as (s1, dealer):
        strategy = RecordingStrategy(Pipeline(secure=TwoServerAggregator(bound=BOUND), rule=Krum(f=2)),
                                     s1=s1.address, dealer=dealer.address, s1_public=s1.public,
                                     dealer_public=dealer.public, min_train_nodes=NODES, min_available_nodes=NODES)
        server = ServerApp()

        @server.main()
        def main(grid: Grid, context: Context) -> None:
            def keep(rnd: int, arrays: ArrayRecord) -> MetricRecord:
                models[rnd] = arrays.to_numpy_ndarrays()
                return MetricRecord({"accuracy": flower_apps.accuracy(models[rnd])})

            strategy.start(grid=grid, initial_arrays=ArrayRecord(flower_apps.initial_arrays()), num_rounds=ROUNDS,
                           timeout=120, evaluate_fn=keep)

        torch.set_num_threads(1)
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        try:
            run_simulation(server_app=server, client_app=flower_apps.steady_app, num_supernodes=NODES,
                           backend_config={"client_resources": {"num_cpus": 1}})
        finally:
            ray.shutdown()
    assert sorted(models) == list(range(ROUNDS + 1))
    for rnd in range(1, ROUNDS + 1):
        m = strategy.log[rnd]["metrics"]
        assert "aborted" not in m and m["nodes-trained"] == NODES, m
        prev = models[rnd - 1]
        flat_prev = np.concatenate([a.ravel() for a in prev]).astype(np.float64)
        updates = {}
        for p in range(NODES):
            new = np.concatenate([a.ravel() for a in flower_apps.local_train(prev, p)]).astype(np.float64)
            u = new - flat_prev
            updates[p] = u if p in flower_apps.MALICIOUS else _clip(u)
        accepted = [p for p in range(NODES) if np.linalg.norm(updates[p]) <= BOUND]
        assert m["nodes-rejected"] == NODES - len(accepted)
        if rnd == 1:  # from the zero model the boosted sign flips (norm about 9.6) are over the bound
            assert accepted == [p for p in range(NODES) if p not in flower_apps.MALICIOUS]
        rows = torch.tensor(np.stack([updates[p] for p in accepted]))
        want = flat_prev + Krum(f=2).excluding(NODES - len(accepted))(rows).numpy()
        got = np.concatenate([a.ravel() for a in models[rnd]])
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
        # a node uploads a sealed seed and one sealed ring vector: 8 bytes per parameter plus about 150
        d = flat_prev.size
        assert 8 * d < m["node-upload-bytes"] < 8 * d + 300
    assert flower_apps.accuracy(models[ROUNDS]) >= 0.9
