"""flsec bench flower: the plain loop and the Flower simulation run the same rounds; bytes follow the model size."""

from __future__ import annotations

import pytest

from benchmarks.bench_flower import run_flower, run_plain

pytest.importorskip("flwr", reason="the flower extra (flwr) is not installed")


def test_flower_bytes_per_round_are_the_model_to_and_from_every_node():
    hidden, nodes = (8,), 5
    plain = run_plain(nodes=nodes, rounds=1, examples=16, hidden=hidden)
    flower = run_flower(nodes=nodes, rounds=2, examples=16, hidden=hidden, cpus=2)
    model_bytes = 4 * plain["params"]
    # each node gets the global model and sends its own: float32 arrays plus Flower's per-array framing
    assert flower["down_B"] == flower["up_B"]
    assert nodes * model_bytes < flower["down_B"] < nodes * (model_bytes + 1024)
    assert flower["round_s"] > 0 and plain["train_s"] > 0 and plain["pipeline_s"] > 0
