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


def test_flower_secagg_bytes_up_are_masked_inputs_not_models():
    hidden, nodes = (8,), 10  # Median(f=2) over 5 groups of 2
    plain = run_plain(nodes=5, rounds=1, examples=16, hidden=hidden)
    secure = run_flower(nodes=nodes, rounds=1, examples=16, hidden=hidden, cpus=2, secure=True)
    ring_words = 4 * (plain["params"] + 1)  # one masked 32-bit ring vector per node, plus the weight coordinate
    # up: each node's masked input, its two public keys, a Shamir share pair for its one neighbour and the unmasking
    # shares, but never its float32 model; down: the global model plus the relayed keys, shares and survivor lists
    assert nodes * ring_words < secure["up_B"] < nodes * (ring_words + 2048)
    assert nodes * 4 * plain["params"] < secure["down_B"] < nodes * (4 * plain["params"] + 3072)


def test_flower_two_server_bytes_up_are_a_seed_and_one_ring_vector_per_node():
    hidden, nodes = (8,), 7  # Krum(f=2) needs n > 6
    plain = run_plain(nodes=5, rounds=1, examples=16, hidden=hidden)
    two = run_flower(nodes=nodes, rounds=1, examples=16, hidden=hidden, cpus=2, secure="two-server")
    d = plain["params"]
    # up: per node its 32-byte round key, a sealed seed for S0 and a sealed 64-bit ring vector for S1, never a model
    assert nodes * 8 * d < two["up_B"] < nodes * (8 * d + 400)
    assert nodes * 4 * d < two["down_B"] < nodes * (4 * d + 1024)  # the global model, as in a plain round
    # between the servers: the relayed shares (n x 8d) and the openings (one n x d cohort per triple each way)
    assert two["s2s_B"] > nodes * 8 * d
