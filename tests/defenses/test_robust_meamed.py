"""Meamed (mean around median, Xie et al. 2018): known answers, a loop reference, the honest-range bound."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from defenses.robust import Meamed, make
from defenses.robust.meamed import mean_around_median
from fl_core.errors import ToleranceError

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ref_meamed(x: np.ndarray, f: int) -> np.ndarray:
    """Per coordinate: the n - f values closest to the median (ties to the smaller value), averaged."""
    n, d = x.shape
    out = np.empty(d)
    for j in range(d):
        col = x[:, j]
        med = np.median(col)
        order = np.lexsort((col, np.abs(col - med)))  # by distance, then by value
        out[j] = col[order[: n - f]].mean()
    return out


def test_known_answers() -> None:
    x = torch.tensor([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0], [100.0, -50.0]], dtype=torch.float64)
    # column 0: median 1.5, nearest three 0, 1, 2; column 1: median 1.5, nearest three 1, 2, 3
    assert Meamed(f=1)(x).tolist() == [1.0, 2.0]
    # [1, 2, 4, 1e9]: median 3, distances 2, 1, 1, ~1e9 -> mean of 1, 2, 4
    assert Meamed(f=1)(np.array([[1.0], [2.0], [4.0], [1e9]])).tolist() == pytest.approx([7.0 / 3.0], rel=1e-15)
    # a tie at the boundary goes to the smaller value: [0, 1, 2], median 1, two nearest {0, 1} or {1, 2}
    assert Meamed(f=1)(torch.tensor([[2.0], [0.0], [1.0]])).tolist() == [0.5]
    assert mean_around_median(torch.tensor([[0.0], [1.0], [2.0]]), 2).tolist() == [0.5]


def test_f_zero_is_the_mean_and_registry() -> None:
    x = np.random.default_rng(0).normal(size=(6, 4))
    np.testing.assert_allclose(Meamed(f=0)(x), x.mean(axis=0), rtol=1e-12)
    assert isinstance(make("meamed", f=2), Meamed)


@SETTINGS
@given(f=st.integers(0, 3), extra=st.integers(1, 6), d=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_matches_the_loop_reference_and_is_order_free(f: int, extra: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 2 * f + extra
    x = rng.normal(size=(n, d))
    out = Meamed(f=f).aggregate(torch.from_numpy(x)).aggregate.numpy()
    np.testing.assert_allclose(out, ref_meamed(x, f), rtol=1e-12, atol=1e-12)
    perm = rng.permutation(n)
    np.testing.assert_allclose(Meamed(f=f)(x[perm]), out, rtol=1e-13, atol=1e-15)  # f = 0: a sum in another order


@SETTINGS
@given(
    f=st.integers(1, 3), extra=st.integers(1, 5), d=st.integers(1, 5), seed=st.integers(0, 2**32 - 1),
    magnitude=st.sampled_from([1e2, 1e6, 1e30]),
)
def test_byzantine_values_stay_within_the_honest_spread_of_the_median(
    f: int, extra: int, d: int, seed: int, magnitude: float
) -> None:
    rng = np.random.default_rng(seed)
    n = 2 * f + extra
    honest = rng.uniform(-1.0, 1.0, size=(n - f, d))
    bad = magnitude * rng.choice([-1.0, 1.0], size=(f, d))
    x = np.concatenate([honest, bad])[rng.permutation(n)]
    out = Meamed(f=f)(x)
    med = np.median(x, axis=0)
    radius = np.abs(honest - med).max(axis=0)
    assert np.all(np.abs(out - med) <= radius * (1 + 1e-12))
    width = honest.max(axis=0) - honest.min(axis=0)
    assert np.all(out >= honest.min(axis=0) - width) and np.all(out <= honest.max(axis=0) + width)


def test_rows_of_3e38_neither_overflow_nor_move_the_output() -> None:
    honest = torch.tensor([[1.0, -2.0], [2.0, -1.0], [3.0, 0.0], [4.0, 1.0]])
    bad = torch.tensor([[3e38, -3e38], [3e38, 3e38], [-3e38, 3e38]])
    x = torch.cat([bad[:1], honest, bad[1:]])
    out = Meamed(f=3)(x)
    assert bool(torch.isfinite(out).all())
    med = x.double().median(dim=0).values  # n = 7: the middle value
    radius = (honest.double() - med).abs().max(dim=0).values
    assert bool(((out.double() - med).abs() <= radius).all())


def test_tolerance() -> None:
    with pytest.raises(ToleranceError, match=r"Meamed needs n > 2f, got n=4, f=2"):
        Meamed(f=2)(np.zeros((4, 3)))
