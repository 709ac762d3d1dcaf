"""MDA (minimum-diameter averaging): exhaustive search against itertools, the honest-diameter bound, the limit."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from defenses.robust import MDA, SubsetLimitError, make
from defenses.robust.mda import combinations
from fl_core.errors import ToleranceError

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ref_mda_subset(x: np.ndarray, f: int) -> tuple[int, ...]:
    """All subsets of n - f rows by itertools: smallest diameter, then smallest sum of squared distances."""
    n = len(x)
    best, best_key = None, None
    for subset in itertools.combinations(range(n), n - f):
        sq = [float(np.sum((x[i] - x[j]) ** 2)) for i, j in itertools.combinations(subset, 2)]
        key = (max(sq, default=0.0), sum(sq))
        if best_key is None or key < best_key:
            best, best_key = subset, key
    assert best is not None
    return best


@pytest.mark.parametrize(("n", "r"), [(5, 0), (5, 1), (6, 2), (7, 3), (4, 4), (9, 5)])
def test_combinations_match_itertools(n: int, r: int) -> None:
    assert combinations(n, r).tolist() == [list(c) for c in itertools.combinations(range(n), r)]


def test_known_answers() -> None:
    # subsets of 3: {1, 2.5, 3} has the smallest diameter (2)
    x = torch.tensor([[0.0], [1.0], [2.5], [3.0], [10.0]], dtype=torch.float64)
    res = MDA(f=2).aggregate(x)
    assert res.kept.tolist() == [False, True, True, True, False]
    assert res.aggregate.item() == pytest.approx(6.5 / 3, rel=1e-15)
    # a unit square and one far point: dropping the far point leaves diameter sqrt(2), any other drop keeps ~70
    sq = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [50.0, 50.0]])
    np.testing.assert_allclose(MDA(f=1)(sq), [0.5, 0.5], rtol=1e-15)
    assert isinstance(make("mda", f=1), MDA)


@SETTINGS
@given(f=st.integers(0, 3), extra=st.integers(1, 5), d=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_matches_the_itertools_search_and_is_order_free(f: int, extra: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 2 * f + extra
    x = rng.normal(size=(n, d))
    res = MDA(f=f).aggregate(torch.from_numpy(x))
    want = ref_mda_subset(x, f)
    assert res.kept.nonzero().squeeze(1).tolist() == list(want)
    np.testing.assert_allclose(res.aggregate.numpy(), x[list(want)].mean(axis=0), rtol=1e-12, atol=1e-12)
    perm = rng.permutation(n)
    again = MDA(f=f).aggregate(torch.from_numpy(x[perm]))
    assert torch.equal(res.kept[perm], again.kept)


@SETTINGS
@given(
    f=st.integers(1, 3), extra=st.integers(1, 4), d=st.integers(1, 4), seed=st.integers(0, 2**32 - 1),
    colluding=st.booleans(), magnitude=st.sampled_from([3.0, 1e2, 1e6]),
)
def test_output_within_twice_the_honest_diameter_of_the_honest_mean(
    f: int, extra: int, d: int, seed: int, colluding: bool, magnitude: float
) -> None:
    rng = np.random.default_rng(seed)
    n = 2 * f + extra
    honest = rng.uniform(-1.0, 1.0, size=(n - f, d))
    bad = np.repeat(rng.normal(size=(1, d)), f, axis=0) if colluding else rng.normal(size=(f, d))
    bad = magnitude * bad / np.linalg.norm(bad, axis=1, keepdims=True)
    x = np.concatenate([honest, bad])
    res = MDA(f=f).aggregate(x)
    diam_h = max(np.linalg.norm(a - b) for a, b in itertools.combinations(honest, 2))
    chosen = x[res.kept.numpy()]
    assert max(np.linalg.norm(a - b) for a, b in itertools.combinations(chosen, 2)) <= diam_h * (1 + 1e-12)
    assert np.linalg.norm(res.aggregate.numpy() - honest.mean(axis=0)) <= 2 * diam_h * (1 + 1e-12)


def test_rows_of_3e38_are_never_selected() -> None:
    g = torch.Generator().manual_seed(0)
    honest = torch.randn(5, 4, generator=g)
    x = torch.cat([torch.full((1, 4), 3e38), honest, torch.full((1, 4), -3e38)])
    res = MDA(f=2).aggregate(x)
    assert res.kept.tolist() == [False, True, True, True, True, True, False]
    torch.testing.assert_close(res.aggregate, honest.mean(dim=0), rtol=1e-6, atol=1e-7)


def test_subset_limit_is_a_specific_tolerance_error() -> None:
    assert math.comb(25, 10) > MDA().max_subsets
    with pytest.raises(SubsetLimitError, match=r"C\(25, 10\) = 3,268,760 subsets, more than max_subsets=1,048,576"):
        MDA(f=10)(np.zeros((25, 2)))
    assert issubclass(SubsetLimitError, ToleranceError)
    with pytest.raises(SubsetLimitError, match=r"C\(6, 2\) = 15"):
        MDA(f=2, max_subsets=14)(np.zeros((6, 2)))
    assert MDA(f=2, max_subsets=15)(np.zeros((6, 2))).tolist() == [0.0, 0.0]


def test_tolerance() -> None:
    with pytest.raises(ToleranceError, match=r"MDA needs n > 2f, got n=4, f=2"):
        MDA(f=2)(np.zeros((4, 3)))
