"""pytest-benchmark micro-benchmarks of the SecAgg hot paths (marked slow: not in the default run).

Run with ``pytest -m slow tests/secure_agg/test_secagg_microbench.py --benchmark-enable``
(``--benchmark-only`` conflicts with the ``--benchmark-disable`` in the default options).
"""

from __future__ import annotations

import numpy as np
import pytest

from secure_agg.graph import CommunicationGraph
from secure_agg.messages import Stage
from secure_agg.params import SecAggParams
from secure_agg.prg import MaskAccumulator
from secure_agg.runner import run_secagg
from secure_agg.shamir import N_LIMBS, random_field_elements, reconstruct_limbs, share_limbs

pytestmark = [pytest.mark.slow, pytest.mark.benchmark(group="secagg")]


def test_mask_expansion_1e6(benchmark) -> None:
    acc = MaskAccumulator(1_000_000, np.uint32)
    key = b"k" * 32
    benchmark(acc.add, key)


def test_shamir_reconstruct_100_secrets(benchmark) -> None:
    xs = list(range(1, 68))
    secrets = random_field_elements((100, N_LIMBS))
    shares = share_limbs(secrets, t=67, xs=xs)
    out = benchmark(reconstruct_limbs, xs, shares)
    assert np.array_equal(out, secrets)


def test_round_n20_d1e4_with_dropouts(benchmark) -> None:
    ids = list(range(1, 21))
    graph = CommunicationGraph.harary(ids, k=8, rng=np.random.default_rng(0))
    xs = {u: np.full(10_000, u, np.uint32) for u in ids}
    params = SecAggParams(round_id=0, t=6, d=10_000)
    drops = {3: Stage.MASKED_INPUT, 4: Stage.UNMASKING}
    res = benchmark(run_secagg, xs, params=params, graph=graph, dropouts=drops)
    assert int(res.sum[0]) == sum(u for u in ids if u != 3)


@pytest.mark.parametrize("authenticated", [False, True], ids=["plain", "hmac"])
def test_round_n20_d1e5_channel_authentication(benchmark, authenticated: bool) -> None:
    """The cost of authenticated channels (HMAC-SHA256 on every message), passive SecAgg."""
    ids = list(range(1, 21))
    graph = CommunicationGraph.complete(ids)
    xs = {u: np.full(100_000, u, np.uint32) for u in ids}
    params = SecAggParams(round_id=0, t=11, d=100_000, authenticated=authenticated)
    res = benchmark.pedantic(run_secagg, args=(xs,), kwargs={"params": params, "graph": graph},
                             rounds=5, iterations=1)
    assert int(res.sum[0]) == sum(ids)
