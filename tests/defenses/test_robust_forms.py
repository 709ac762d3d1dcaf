"""Input-form round trips: torch, NumPy (n, d), lists of per-layer arrays; the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from robust_cases import MIN_N, RULES

from defenses.robust import (
    NNM,
    Bucketing,
    FLTrust,
    Krum,
    Median,
    entries,
    from_cohort,
    from_vector,
    get,
    make,
    names,
    to_cohort,
    to_vector,
)


def layered(n: int, seed: int = 0) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        [
            rng.normal(size=(3, 2)).astype(np.float32),
            rng.normal(size=(4,)).astype(np.float32),
            np.array(rng.integers(0, 100), dtype=np.int64),  # e.g. num_batches_tracked
        ]
        for _ in range(n)
    ]


def flat(client: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1) for a in client])


@pytest.mark.parametrize("name", sorted(RULES))
def test_numpy_round_trip_matches_torch(name: str) -> None:
    n = max(MIN_N[name](1), 3)
    x = np.random.default_rng(1).normal(size=(n, 5))
    f = 0 if name == "mean" else 1
    out = RULES[name](f, 5)(x)
    ref = RULES[name](f, 5)(torch.from_numpy(x))
    assert isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == (5,)
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-12)
    out32 = RULES[name](f, 5)(x.astype(np.float32))
    assert out32.dtype == np.float32


@pytest.mark.parametrize("name", sorted(RULES))
def test_layer_list_round_trip(name: str) -> None:
    n = max(MIN_N[name](1), 3)
    clients = layered(n)
    f = 0 if name == "mean" else 1
    d = 3 * 2 + 4 + 1
    out = RULES[name](f, d)(clients)
    assert isinstance(out, list) and len(out) == 3
    assert [a.shape for a in out] == [(3, 2), (4,), ()]
    assert [a.dtype for a in out] == [np.float32, np.float32, np.int64]
    ref = RULES[name](f, d)(torch.from_numpy(np.stack([flat(c) for c in clients]).astype(np.float32)))
    np.testing.assert_allclose(out[0].reshape(-1), ref[:6].numpy(), rtol=1e-6)
    np.testing.assert_allclose(out[1], ref[6:10].numpy(), rtol=1e-6)
    assert out[2] == np.rint(ref[10].numpy())


def test_layer_dtypes_choose_the_compute_precision() -> None:
    c32 = [[np.ones(2, np.float32)] for _ in range(3)]
    assert to_cohort(c32)[0].dtype == torch.float32
    c64 = [[np.ones(2, np.float32), np.ones(1, np.float64)] for _ in range(3)]
    cohort, spec = to_cohort(c64)
    assert cohort.dtype == torch.float64
    back = from_vector(cohort[0], spec)
    assert [a.dtype for a in back] == [np.float32, np.float64]


def test_list_of_arrays_form() -> None:
    clients = [np.full((2, 2), float(i)) for i in range(5)]
    out = Median(f=1)(clients)
    assert isinstance(out, np.ndarray) and out.shape == (2, 2)
    np.testing.assert_array_equal(out, np.full((2, 2), 2.0))


def test_pre_aggregator_forms() -> None:
    clients = layered(5)
    mixed = NNM(f=1)(clients)
    assert isinstance(mixed, list) and len(mixed) == 5 and len(mixed[0]) == 3
    buckets = Bucketing(s=2, generator=torch.Generator().manual_seed(0))(np.zeros((5, 3)))
    assert isinstance(buckets, np.ndarray) and buckets.shape == (3, 3)
    cohort, spec = to_cohort(np.zeros((2, 3), np.float32))
    assert from_cohort(cohort, spec).dtype == np.float32


def test_to_vector_forms() -> None:
    assert to_vector(torch.ones(3)).tolist() == [1.0, 1.0, 1.0]
    assert to_vector(np.ones(2)).dtype == torch.float64
    assert to_vector([np.ones((1, 2)), np.zeros(1)]).tolist() == [1.0, 1.0, 0.0]
    rule = FLTrust()
    rule.set_server_update(layered(1)[0])
    assert len(rule(layered(4))) == 3


def test_aggregate_reports_decisions_for_every_form() -> None:
    rule = Krum(f=1)
    result = rule.aggregate([[np.array([0.0])], [np.array([1.0])], [np.array([3.0])], [np.array([7.0])],
                             [np.array([99.0])]])
    assert result.kept.tolist() == [False, True, False, False, False]
    assert result.flagged.tolist() == [True, False, True, True, True]
    assert not hasattr(rule, "last_result")  # decisions are return values, not a side channel


def test_registry_is_complete_and_described() -> None:
    rules = {
        "mean", "median", "trimmed_mean", "krum", "multi_krum", "bulyan", "geomed",
        "centered_clipping", "norm_bound", "fltrust", "flame", "foolsgold", "dnc",
        "meamed", "mda", "monna", "caf", "rlr", "signguard", "fldetector", "freqfed", "deepsight",
    }  # fmt: skip
    assert set(names("rule")) == rules
    assert set(names("pre")) == {"nnm", "bucketing", "arc"}
    for e in entries():
        assert e.description and "\n" not in e.description
    assert get("Multi-Krum").name == "multi_krum"
    assert make("multi-krum", f=1, m=2).m == 2
    assert make("norm_bound", M=2.0).M == 2.0
