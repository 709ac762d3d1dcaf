"""RLR (robust learning rate, Ozdayi et al. 2021): sign votes, negated coordinates, 3e38 rows, sensitivity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from defenses.robust import RLR, make
from defenses.robust.rlr import sign_votes
from fl_core.errors import ConfigError, ToleranceError

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ref_rlr(x: np.ndarray, w: np.ndarray, theta: int) -> np.ndarray:
    mean = np.average(x, axis=0, weights=w)
    votes = np.abs(np.sign(x).sum(axis=0))
    return np.where(votes >= theta, mean, -mean)


def test_known_answers() -> None:
    x = torch.tensor([[1.0, 1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 1.0, 2.0], [1.0, -3.0, 4.0]], dtype=torch.float64)
    # votes: 4, 0, 2; theta = 2 negates only column 1 (mean -0.5)
    res = RLR(theta=2).aggregate(x)
    assert res.aggregate.tolist() == [1.0, 0.5, 1.5]
    assert res.metrics["flipped"] == pytest.approx(1.0 / 3.0)
    # theta = 3 also negates column 2 (two clients push it, two stay at 0)
    assert RLR(theta=3)(x).tolist() == [1.0, 0.5, -1.5]
    # weights enter the mean, not the votes: weighted mean of column 0 is 1, of column 2 (0*1+0*1+2*2+4*0)/4
    assert RLR(theta=3)(x, torch.tensor([1.0, 1.0, 2.0, 0.0], dtype=torch.float64)).tolist() == [1.0, -0.5, -1.0]
    assert sign_votes(x).tolist() == [4, 0, 2]


def test_default_theta_registry_and_sensitivity() -> None:
    assert RLR(f=2).theta == 3 and RLR().theta == 1
    assert make("rlr", f=1, theta=4).theta == 4
    rule = RLR(f=1)
    assert rule.contract().bounded and rule.sensitivity(1.5, 10) == 3.0


@SETTINGS
@given(n=st.integers(1, 9), d=st.integers(1, 6), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_matches_the_reference_and_is_order_free(n: int, d: int, seed: int, data: st.DataObject) -> None:
    theta = data.draw(st.integers(1, n))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * (rng.random(size=(n, d)) > 0.2)  # some exact zeros
    w = rng.uniform(0.1, 3.0, size=n)
    out = RLR(theta=theta)(x, w)
    np.testing.assert_allclose(out, ref_rlr(x, w, theta), rtol=1e-12, atol=1e-12)
    perm = rng.permutation(n)
    np.testing.assert_allclose(RLR(theta=theta)(x[perm], w[perm]), out, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(
    f=st.integers(1, 3), extra=st.integers(0, 4), d=st.integers(2, 8), seed=st.integers(0, 2**32 - 1),
    magnitude=st.sampled_from([1.0, 1e3, 1e30]),
)
def test_unanimous_honest_coordinates_are_never_negated(
    f: int, extra: int, d: int, seed: int, magnitude: float
) -> None:
    """n - 2f >= theta = f + 1: f Byzantine votes cannot push an honest consensus under theta."""
    rng = np.random.default_rng(seed)
    n = 3 * f + 1 + extra
    signs = rng.choice([-1.0, 1.0], size=d)
    honest = signs * rng.uniform(0.1, 1.0, size=(n - f, d))
    bad = -signs * magnitude * rng.uniform(0.5, 1.0, size=(f, d))  # every Byzantine vote against
    x = np.concatenate([honest, bad])[rng.permutation(n)]
    res = RLR(f=f).aggregate(x)
    np.testing.assert_allclose(res.aggregate.numpy(), x.mean(axis=0), rtol=1e-14, atol=0.0)
    assert res.metrics["flipped"] == 0.0


def test_a_direction_only_the_attackers_push_is_negated() -> None:
    honest = torch.tensor([[0.5, 0.0], [0.4, 0.0], [0.6, 0.0], [0.5, 0.0]])
    bad = torch.tensor([[0.5, 2.0], [0.5, 2.0]])  # a backdoor direction the honest clients leave at 0
    out = RLR(f=2)(torch.cat([honest, bad]))  # theta = 3 > 2 votes
    torch.testing.assert_close(out, torch.tensor([0.5, -4.0 / 6.0]))


def test_rows_of_3e38_do_not_overflow() -> None:
    x = torch.tensor([[3e38, 1.0], [3e38, -1.0], [1.0, 1.0], [2.0, 1.0]])
    res = RLR(f=1).aggregate(x)
    assert bool(torch.isfinite(res.aggregate).all())
    want = x.double().mean(dim=0)  # votes 4 and 2: theta = 2 keeps both
    torch.testing.assert_close(res.aggregate.double(), want, rtol=1e-6, atol=0.0)


def test_bad_theta() -> None:
    with pytest.raises(ToleranceError, match=r"RLR needs theta <= n .*got n=3, theta=4, f=0"):
        RLR(theta=4)(np.zeros((3, 2)))
    with pytest.raises(ConfigError, match="theta"):
        RLR(theta=0)
    with pytest.raises(ToleranceError, match=r"n > f"):
        RLR(f=3, theta=1)(np.zeros((3, 2)))
