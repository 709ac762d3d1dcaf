"""A robust flsec pipeline inside a real Flower simulation (``flwr.simulation.run_simulation``, 10 SuperNodes)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # conftest.py sets both for the whole run
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray listens on 127.0.0.1 only
pytest.importorskip("flwr", reason="the flower extra (flwr) is not installed")
ray = pytest.importorskip("ray", reason="Flower's simulation runs on Ray")

from flwr.app import ArrayRecord, Context  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

from defenses.robust import Median  # noqa: E402
from fl_core.flower import PipelineStrategy  # noqa: E402
from fl_core.pipeline import Pipeline  # noqa: E402
from tests.integration import flower_apps  # noqa: E402

NODES, ROUNDS = 10, 4


_initial = flower_apps.initial_arrays


def _readme_block() -> str:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("# README: flower-strategy")
    return readme[start : readme.index("```", start)]


def _plain_fedavg() -> list[np.ndarray]:
    """Flower's FedAvg arithmetic (equal weights) on the same clients, without Flower: the attack's effect."""
    g = _initial()
    for _ in range(ROUNDS):
        news = [flower_apps.local_train(g, p) for p in range(NODES)]
        g = [np.mean([n[k] for n in news], axis=0) for k in range(2)]
    return g


def test_median_pipeline_in_a_flower_simulation_resists_two_sign_flipping_nodes():
    results: dict = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:  # the README's three lines, as written there
        namespace = {"grid": grid, "initial": _initial(), "PipelineStrategy": PipelineStrategy,
                     "Pipeline": Pipeline, "Median": Median, "ArrayRecord": ArrayRecord}
        exec(compile(_readme_block(), "README-flower-strategy", "exec"), namespace)
        results["arrays"] = namespace["final"].to_numpy_ndarrays()
        results["metrics"] = namespace["metrics"]

    torch.set_num_threads(1)
    # the test starts the local Ray cluster itself (Flower's backend reuses it) and stops it
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        run_simulation(server_app=server, client_app=flower_apps.app, num_supernodes=NODES,
                       backend_config={"client_resources": {"num_cpus": 1}})
    finally:
        ray.shutdown()
    assert set(results["metrics"]) == set(range(1, ROUNDS + 1)), results
    assert all(m["nodes-aggregated"] == NODES and m["nodes-dropped"] == 0 for m in results["metrics"].values())
    robust, plain = flower_apps.accuracy(results["arrays"]), flower_apps.accuracy(_plain_fedavg())
    honest_only = _initial()
    for _ in range(ROUNDS):
        news = [flower_apps.local_train(honest_only, p) for p in range(2, NODES)]
        honest_only = [np.median([n[k] for n in news], axis=0) for k in range(2)]
    # the median over Flower's 10 replies ends where the median of the 8 honest nodes' models ends, within one step
    assert robust >= 0.9 and robust >= flower_apps.accuracy(honest_only) - 0.03
    assert plain <= 0.5  # the plain mean is dragged the wrong way by the two nodes (known answer with these seeds)
