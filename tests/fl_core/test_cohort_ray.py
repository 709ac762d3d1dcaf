"""A round's cohort on Ray workers (a local 2-CPU Ray started and stopped here) gives the sequential history."""

import socket
import subprocess
import sys
import time

import pytest
import torch

from attacks.hooks import NeurotoxinMask
from fl_core import ConfigError, Federation, LocalTrainingConfig, load_dataset, make_clients, partition
from fl_core.rng import numpy_generator

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

from fl_core.cohort_ray import RayClusterError, RayCohortExecutor, ray_session  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_address_is_a_quick_clear_error():
    was = ray.is_initialized()
    address = f"127.0.0.1:{_free_port()}"  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(RayClusterError, match=f"no Ray cluster reachable at '{address}'"), ray_session(address):
        pass
    assert time.monotonic() - t0 < 5
    assert ray.is_initialized() == was  # a failed connection changes nothing
    with pytest.raises(ConfigError, match="'head' is not HOST:PORT"), ray_session("head"):
        pass


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def _federation(executor=None) -> Federation:
    split = load_dataset("digits")
    parts = partition(split.train.labels, scheme="iid", n_clients=6, generator=numpy_generator(3))
    # client 0 runs a stateful attack hook (Neurotoxin keeps the last global model across rounds)
    hooks = {0: (NeurotoxinMask(mask_ratio=0.5),)}
    return Federation(model_name="mlp", clients=make_clients(split.train, parts, hooks=lambda k: hooks.get(k, ())),
                      test_data=split.test, clients_per_round=5, seed=3, executor=executor,
                      local=LocalTrainingConfig(epochs=1, batch_size=32, lr=0.05))


def _history(fed: Federation) -> list[dict]:
    return [r.deterministic_view() for r in fed.history.records]


def test_cohort_on_ray_equals_sequential(cluster, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' threads: the same float sums
    try:
        seq = _federation()
        seq.run(rounds=2)
    finally:
        torch.set_num_threads(threads)
    puts = []
    real_put = ray.put
    monkeypatch.setattr(ray, "put", lambda v, **k: puts.append(type(v).__name__) or real_put(v, **k))
    par = _federation(RayCohortExecutor(num_cpus=1, round_timeout_s=120))
    par.run(rounds=2)
    assert torch.equal(seq.global_params, par.global_params)
    assert _history(seq) == _history(par)
    assert 0 in {c for r in par.history.records for c in r.client_ids}  # the hooked client trained on a worker
    assert len(par.history.records[0].client_ids) == 5  # 3 tasks on the 2-CPU cluster: 2, 2 and 1 clients
    # the model and the 6 clients' data once; per round only x
    assert sorted(puts) == sorted(["MLP"] + ["ArrayDataset"] * 6 + ["Tensor"] * 2)


def test_a_client_larger_than_any_node_is_refused_before_training(cluster):
    fed = _federation(RayCohortExecutor(num_cpus=3))
    with pytest.raises(RayClusterError, match=r"asks for 3 CPU per task.*largest node: 2 CPU"):
        fed.run(rounds=1)
    assert len(fed.history) == 0
    with pytest.raises(ConfigError, match="needs a CUDA federation"):
        _federation(RayCohortExecutor(num_gpus=0.5)).run(rounds=1)
    for bad, match in [({"num_cpus": 0}, "num_cpus"), ({"threads": 0}, "threads"), ({"max_retries": -1}, "max_retries"),
                       ({"round_timeout_s": 0}, "round_timeout_s"),
                       ({"clients_per_task": 0}, "clients_per_task")]:
        with pytest.raises(ConfigError, match=match):
            RayCohortExecutor(**bad)


def test_a_round_past_its_timeout_is_cancelled_with_a_clear_error(cluster):
    # A deadline already past when the wait starts: the first wait takes at most one of the round's 3 tasks, so
    # the others are still pending whatever the machine's speed (0.05 s was met by warm workers on a quiet box).
    fed = _federation(RayCohortExecutor(round_timeout_s=1e-6))
    t0 = time.monotonic()
    with pytest.raises(RayClusterError, match=r"not finished within 1e-06 s \(clients \[[0-9, ]+\] of round 0"):
        fed.run(rounds=1)
    assert time.monotonic() - t0 < 30
    assert len(fed.history) == 0


def test_an_unreachable_address_is_refused_also_when_connected(cluster):
    address = f"127.0.0.1:{_free_port()}"
    with pytest.raises(RayClusterError, match=f"no Ray cluster reachable at '{address}'"), ray_session(address):
        pass
    assert ray.is_initialized()  # the cluster this process uses is left as it was


def test_flsec_imports_and_explains_without_ray():
    code = (
        "import sys; sys.modules['ray'] = None\n"  # as if the ray extra were not installed
        "import fl_core, benchmarks.suite.ray_runner, benchmarks.bench_ray\n"
        "from fl_core.cohort_ray import RayClusterError, ray_session\n"
        "try:\n    ray_session().__enter__()\nexcept RayClusterError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Ray is not installed; install the ray extra" in out.stdout
