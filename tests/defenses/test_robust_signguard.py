"""SignGuard (Xu et al. 2022): norm filter, sign clustering, median-norm clipping, seeded sampling."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from defenses.robust import MissingGeneratorError, SignGuard, make
from defenses.robust.signguard import sign_clusters, sign_features
from fl_core.aggregation import RoundContext
from fl_core.errors import ConfigError, ToleranceError

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def clipped_mean(rows: np.ndarray, m: float) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1)
    return (rows * np.minimum(1.0, m / norms)[:, None]).mean(axis=0)


def test_features_and_clusters() -> None:
    x = torch.tensor([[1.0, -1.0, 0.0, 2.0], [1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, -1.0, 0.0]])
    # fractions (pos, zero, neg): (.5, .25, .25), (1, 0, 0), (0, .25, .75); columns divided by 1, .25, .75
    feats = sign_features(x, torch.arange(4))
    np.testing.assert_allclose(feats.numpy(), [[0.5, 1.0, 1 / 3], [1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    # identical features (bandwidth 0) form one group
    assert sign_clusters(torch.ones(4, 3, dtype=torch.float64)).tolist() == [True] * 4


def test_known_answer_norm_filter_and_clipping() -> None:
    x = np.array([[1.0, 1.0], [1.0, 2.0], [2.0, 1.0], [300.0, 300.0]])
    res = SignGuard(f=1, fraction=1.0, generator=gen()).aggregate(x)
    # M = sqrt(5) (lower middle); 300 * sqrt(2) / M > 3 fails the norm filter; no row kept is longer than M
    assert res.kept.tolist() == [True, True, True, False]
    np.testing.assert_allclose(res.aggregate.numpy(), [4.0 / 3.0, 4.0 / 3.0], rtol=1e-15)
    # a kept row longer than M is clipped to M: norms 1, 1, 1, 2.5 -> M = 1 (all entries positive: one cluster)
    y = np.array([[0.8, 0.6], [0.28, 0.96], [0.6, 0.8], [1.5, 2.0]])
    res = SignGuard(f=1, fraction=1.0, generator=gen()).aggregate(y)
    assert res.kept.all()
    np.testing.assert_allclose(res.aggregate.numpy(), clipped_mean(y, 1.0), rtol=1e-14)
    assert isinstance(make("signguard", f=1, generator=gen()), SignGuard)


def test_sign_flipped_updates_are_clustered_out() -> None:
    g = gen(0)
    # about 70% positive entries; 10% of d = 4000 coordinates are sampled
    honest = torch.rand(8, 4000, generator=g, dtype=torch.float64) - 0.3
    flipped = -honest[:3] * 1.1  # norms within the filter, the sign pattern reversed
    x = torch.cat([honest, flipped])
    res = SignGuard(f=3, generator=gen(1)).aggregate(x)
    kept = res.kept.numpy()
    # the largest mean-shift cluster is honest (with n = 11 the estimated bandwidth, the mean distance to
    # the 3rd nearest feature, is below the honest spread, so the honest rows may form more than one cluster)
    assert not kept[8:].any() and kept[:8].sum() >= 4
    assert res.metrics["norm_kept"] == 11.0 and res.metrics["sign_kept"] == kept.sum()
    m = float(torch.median(torch.linalg.vector_norm(x, dim=1)))
    np.testing.assert_allclose(res.aggregate.numpy(), clipped_mean(x.numpy()[kept], m), rtol=1e-12)


@SETTINGS
@given(
    f=st.integers(1, 3), extra=st.integers(1, 5), d=st.integers(5, 40), seed=st.integers(0, 2**32 - 1),
    magnitude=st.sampled_from([1e2, 1e6, 1e30]),
)
def test_far_rows_fail_the_norm_filter_and_the_output_stays_in_the_honest_ball(
    f: int, extra: int, d: int, seed: int, magnitude: float
) -> None:
    rng = np.random.default_rng(seed)
    n = 2 * f + extra
    honest = rng.uniform(-1.0, 1.0, size=(n - f, d)) + 0.5
    bad = rng.normal(size=(f, d))
    bad = magnitude * bad / np.linalg.norm(bad, axis=1, keepdims=True)
    order = rng.permutation(n)
    x = np.concatenate([honest, bad])[order]
    res = SignGuard(f=f, generator=gen(seed % 1000)).aggregate(x)
    assert not res.kept.numpy()[order >= n - f].any()
    assert np.linalg.norm(res.aggregate.numpy()) <= np.linalg.norm(honest, axis=1).max() * (1 + 1e-12)


def test_rows_of_3e38() -> None:
    honest = torch.rand(5, 16, generator=gen(2)) + 0.1
    x = torch.cat([torch.full((1, 16), 3e38), honest, torch.full((1, 16), -3e38)])
    res = SignGuard(f=2, generator=gen()).aggregate(x)
    assert res.kept.tolist()[0] is False and res.kept.tolist()[-1] is False
    assert bool(torch.isfinite(res.aggregate).all()) and bool(torch.isfinite(res.scores).all())
    m = float(torch.median(torch.linalg.vector_norm(x.double(), dim=1)))
    assert float(torch.linalg.vector_norm(res.aggregate.double())) <= m * (1 + 1e-6)


def test_seeded_sampling_and_context_generator() -> None:
    x = torch.randn(9, 300, generator=gen(5), dtype=torch.float64)
    a = SignGuard(f=2, generator=gen(7)).aggregate(x)
    b = SignGuard(f=2, generator=gen(7)).aggregate(x)
    assert torch.equal(a.aggregate, b.aggregate) and torch.equal(a.kept, b.kept)
    ctx = RoundContext(round_idx=0, client_ids=tuple(range(9)), weights=torch.ones(9),
                       global_params=torch.zeros(300), generator=gen(7))
    c = SignGuard(f=2).aggregate(x, ctx=ctx)  # ctx.generator, same seed, same sample
    assert torch.equal(a.aggregate, c.aggregate)
    with pytest.raises(MissingGeneratorError, match="SignGuard is randomised"):
        SignGuard(f=2)(x)


@SETTINGS
@given(n=st.integers(3, 10), d=st.integers(2, 12), seed=st.integers(0, 2**32 - 1))
def test_order_free_when_every_coordinate_is_sampled(n: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) + rng.normal(size=d)
    perm = rng.permutation(n)
    a = SignGuard(f=(n - 1) // 2, fraction=1.0, generator=gen()).aggregate(x)
    b = SignGuard(f=(n - 1) // 2, fraction=1.0, generator=gen()).aggregate(x[perm])
    assert torch.equal(a.kept[perm], b.kept)
    np.testing.assert_allclose(a.aggregate.numpy(), b.aggregate.numpy(), rtol=1e-12, atol=1e-14)


def test_nothing_selected_gives_the_zero_update(caplog: pytest.LogCaptureFixture) -> None:
    x = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])  # median norm 0: no ratio is finite
    with caplog.at_level(logging.WARNING, logger="defenses.robust.signguard"):
        res = SignGuard(f=1, generator=gen()).aggregate(x)
    assert res.aggregate.tolist() == [0.0, 0.0] and not res.kept.any()
    assert "no update passed both filters" in caplog.text


def test_bad_parameters_and_tolerance() -> None:
    with pytest.raises(ToleranceError, match=r"SignGuard needs n > 2f, got n=4, f=2"):
        SignGuard(f=2, generator=gen())(np.ones((4, 3)))
    with pytest.raises(ConfigError, match="L < R"):
        SignGuard(L=3.0, R=2.0)
    with pytest.raises(ConfigError, match=r"fraction must be in \(0, 1\]"):
        SignGuard(fraction=1.5)
