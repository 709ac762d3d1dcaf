"""CAF (Allouah, Guerraoui, Stephan 2025): a d-space reference, hand cases, far and 3e38 outliers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from defenses.robust import CAF, make
from defenses.robust.caf import caf_weights
from fl_core.errors import ToleranceError

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ref_caf(x: np.ndarray, f: int) -> np.ndarray:
    """Algorithm 2 in R^d: weighted covariance, its top eigenpair by numpy, projections, down-weighting."""
    n = len(x)
    c = np.ones(n)
    best, best_lam = x.mean(axis=0), np.inf
    while c.sum() > n - 2 * f:
        mu = c @ x / c.sum()
        y = x - mu
        cov = (c[:, None] * y).T @ y / c.sum()
        values, vectors = np.linalg.eigh(cov)
        lam, v = max(values[-1], 0.0), vectors[:, -1]
        if lam < best_lam:
            best, best_lam = mu, lam
        if lam <= 0:
            break
        tau = (y @ v) ** 2
        active = c > 0
        tau_max = tau[active].max()
        c = np.where(active, np.clip(c * (1 - tau / tau_max), 0.0, None), 0.0)
        c[active & (tau == tau_max)] = 0.0
    return best


def test_byzfl_example_and_hand_case() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    assert CAF(f=1)(x).tolist() == [4.0, 5.0, 6.0]  # one round: the ends drop to 0, the mean is kept
    # 1-D {0, 1, 10}: round 1 mu = 11/3, tau = (121, 64, 361)/9 -> c = (240, 297, 0)/361; round 2 has
    # lam = p0 p1 < round 1's 182/9, and drops row 1's weight so the loop ends
    p, lam = caf_weights(torch.tensor([[0.0, 1.0, 100.0], [1.0, 0.0, 81.0], [100.0, 81.0, 0.0]],
                                      dtype=torch.float64), 1)
    want = np.array([240.0, 297.0, 0.0]) / 537.0
    np.testing.assert_allclose(p.numpy(), want, rtol=1e-13, atol=1e-15)
    assert lam.item() == pytest.approx(want[0] * want[1], rel=1e-13)
    res = CAF(f=1).aggregate(torch.tensor([[0.0], [1.0], [10.0]], dtype=torch.float64))
    assert res.aggregate.item() == pytest.approx(297.0 / 537.0, rel=1e-13)
    assert res.kept.tolist() == [True, True, False]
    assert isinstance(make("caf", f=1), CAF)


def test_f_zero_is_the_mean() -> None:
    x = np.random.default_rng(2).normal(size=(6, 3))
    np.testing.assert_allclose(CAF(f=0)(x), x.mean(axis=0), rtol=1e-12)


@SETTINGS
@given(f=st.integers(1, 3), extra=st.integers(1, 6), d=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_matches_the_d_space_reference_and_is_order_free(f: int, extra: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 2 * f + extra
    x = rng.normal(size=(n, d))
    out = CAF(f=f)(x)
    np.testing.assert_allclose(out, ref_caf(x, f), rtol=1e-8, atol=1e-9)
    perm = rng.permutation(n)
    np.testing.assert_allclose(CAF(f=f)(x[perm]), out, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("seed", range(60))
def test_far_outliers_end_with_weight_zero(seed: int) -> None:
    """Outliers 100 to 1e6 times the honest spread, colluding or not: the mean returned gives them weight 0."""
    rng = np.random.default_rng(seed)
    f = int(rng.integers(1, 4))
    n = 2 * f + int(rng.integers(1, 6))
    d = int(rng.integers(1, 6))
    honest = rng.uniform(-1.0, 1.0, size=(n - f, d))
    bad = np.repeat(rng.normal(size=(1, d)), f, axis=0) if seed % 2 else rng.normal(size=(f, d))
    bad = [1e2, 1e4, 1e6][seed % 3] * bad / np.linalg.norm(bad, axis=1, keepdims=True)
    order = rng.permutation(n)
    x = np.concatenate([honest, bad])[order]
    res = CAF(f=f).aggregate(x)
    assert not res.kept.numpy()[order >= n - f].any()
    out = res.aggregate.numpy()
    assert np.all(out >= honest.min(axis=0) - 1e-12) and np.all(out <= honest.max(axis=0) + 1e-12)


def test_rows_of_3e38_drop_out() -> None:
    g = torch.Generator().manual_seed(3)
    honest = torch.rand(6, 4, generator=g)
    x = torch.cat([honest[:3], torch.full((1, 4), 3e38), honest[3:], torch.full((1, 4), -3e38)])
    res = CAF(f=2).aggregate(x)
    assert res.kept.tolist()[3] is False and res.kept.tolist()[7] is False
    assert bool(torch.isfinite(res.aggregate).all())
    assert bool((res.aggregate >= honest.min(dim=0).values).all() and (res.aggregate <= honest.max(dim=0).values).all())
    assert np.isfinite(res.metrics["lambda"])


def test_float64_rows_near_the_largest_double() -> None:
    honest = torch.rand(6, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    big = torch.full((1, 3), 1.7e308, dtype=torch.float64)
    x = torch.cat([big, honest, -big])
    res = CAF(f=2).aggregate(x)
    assert res.kept.tolist()[0] is False and res.kept.tolist()[-1] is False
    assert bool((res.aggregate >= honest.min(dim=0).values).all() and (res.aggregate <= honest.max(dim=0).values).all())


def test_tolerance() -> None:
    with pytest.raises(ToleranceError, match=r"CAF needs n > 2f, got n=4, f=2"):
        CAF(f=2)(np.zeros((4, 3)))
