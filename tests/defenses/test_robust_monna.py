"""MoNNA (Farhadkhani et al. 2023): the pivot's n - f nearest neighbours, the ball about an honest pivot."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from defenses.robust import MissingPivotError, MoNNA, make
from fl_core.aggregation import RoundContext
from fl_core.errors import ConfigError, ToleranceError

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ctx_for(ids: list[int], d: int) -> RoundContext:
    return RoundContext(round_idx=0, client_ids=tuple(ids), weights=torch.ones(len(ids)),
                        global_params=torch.zeros(d), generator=torch.Generator().manual_seed(0))


def test_known_answers_for_each_pivot_source() -> None:
    x = torch.tensor([[0.0], [1.0], [2.0], [50.0]], dtype=torch.float64)
    # pivot row 0: nearest three are 0, 1, 2
    res = MoNNA(f=1, pivot_id=0).aggregate(x)
    assert res.aggregate.tolist() == [1.0] and res.kept.tolist() == [True, True, True, False]
    # pivot row 3 (50): nearest three are 50, 2, 1
    assert MoNNA(f=1, pivot_id=3)(x).tolist() == pytest.approx([53.0 / 3.0], rel=1e-15)
    # an external pivot at 1.6: nearest three are 1, 2, 0
    assert MoNNA(f=1, server_update=lambda ctx: np.array([1.6]))(x).tolist() == [1.0]
    rule = MoNNA(f=1)
    rule.set_pivot(torch.tensor([40.0]))
    assert rule(x).tolist() == pytest.approx([53.0 / 3.0], rel=1e-15)  # 50, 2 and 1
    assert isinstance(make("monna", f=1, pivot_id=2), MoNNA)


def test_pivot_id_is_a_client_id_under_fl_core() -> None:
    x = torch.tensor([[50.0], [0.0], [1.0], [2.0]], dtype=torch.float64)
    # client 7 is row 1 (value 0)
    assert MoNNA(f=1, pivot_id=7).aggregate(x, ctx=ctx_for([3, 7, 5, 9], 1)).aggregate.tolist() == [1.0]
    with pytest.raises(MissingPivotError, match=r"pivot_id=4 is not in this cohort \(client ids \[3, 7, 5, 9\]\)"):
        MoNNA(f=1, pivot_id=4).aggregate(x, ctx=ctx_for([3, 7, 5, 9], 1))
    with pytest.raises(MissingPivotError, match=r"rows 0\.\.3"):
        MoNNA(f=1, pivot_id=4)(x)


def test_missing_or_double_pivot_is_refused() -> None:
    with pytest.raises(MissingPivotError, match="needs a trusted pivot"):
        MoNNA(f=1)(np.zeros((3, 2)))
    with pytest.raises(ConfigError, match="not both"):
        MoNNA(pivot_id=0, server_update=lambda ctx: None)
    with pytest.raises(ConfigError, match="do not also call set_pivot"):
        MoNNA(pivot_id=0).set_pivot(np.zeros(2))
    rule = MoNNA(f=1)
    rule.set_pivot(np.zeros(2))
    rule.reset()
    with pytest.raises(MissingPivotError):
        rule(np.zeros((3, 2)))


def test_f_zero_is_the_mean() -> None:
    x = np.random.default_rng(1).normal(size=(5, 3))
    np.testing.assert_allclose(MoNNA(pivot_id=2)(x), x.mean(axis=0), rtol=1e-12)


@SETTINGS
@given(
    f=st.integers(1, 3), extra=st.integers(1, 5), d=st.integers(1, 5), seed=st.integers(0, 2**32 - 1),
    magnitude=st.sampled_from([2.0, 1e2, 1e6]), colluding=st.booleans(),
)
def test_output_in_the_honest_ball_about_an_honest_pivot(
    f: int, extra: int, d: int, seed: int, magnitude: float, colluding: bool
) -> None:
    rng = np.random.default_rng(seed)
    n = 2 * f + extra
    honest = rng.uniform(-1.0, 1.0, size=(n - f, d))
    bad = np.repeat(rng.normal(size=(1, d)), f, axis=0) if colluding else rng.normal(size=(f, d))
    bad = magnitude * bad / np.linalg.norm(bad, axis=1, keepdims=True)
    order = rng.permutation(n)
    x = np.concatenate([honest, bad])[order]
    pivot_row = int(np.flatnonzero(order == 0)[0])  # honest row 0 is the trusted client
    out = MoNNA(f=f, pivot_id=pivot_row)(x)
    radius = np.linalg.norm(honest - honest[0], axis=1).max()
    assert np.linalg.norm(out - honest[0]) <= radius * (1 + 1e-12)
    # the same with the server's own vector as pivot, and the result does not depend on the order
    p = honest.mean(axis=0)
    a = MoNNA(f=f, server_update=lambda ctx: p)(x)
    assert np.linalg.norm(a - p) <= np.linalg.norm(honest - p, axis=1).max() * (1 + 1e-12)
    perm = rng.permutation(n)
    np.testing.assert_allclose(MoNNA(f=f, server_update=lambda ctx: p)(x[perm]), a, rtol=1e-12, atol=1e-12)


def test_rows_of_3e38_are_not_neighbours_of_an_honest_pivot() -> None:
    honest = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.5]])
    x = torch.cat([torch.full((1, 2), -3e38), honest, torch.full((1, 2), 3e38)])
    res = MoNNA(f=2, pivot_id=1).aggregate(x)
    assert res.kept.tolist() == [False, True, True, True, True, False]
    torch.testing.assert_close(res.aggregate, honest.mean(dim=0))
    assert bool(torch.isfinite(res.scores).all())


def test_tolerance() -> None:
    with pytest.raises(ToleranceError, match=r"MoNNA needs n > 2f, got n=4, f=2"):
        MoNNA(f=2, pivot_id=0)(np.zeros((4, 3)))
