"""FreqFed (Fereidooni et al. NDSS 2024): the DCT against its definition, a separated low-frequency cluster, bounds."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import scipy.fft
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from defenses.robust import FreqFed, make
from defenses.robust.freqfed import low_frequency, low_frequency_mask
from fl_core.errors import ConfigError, InvalidUpdateError, ToleranceError

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def dct2_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix from its definition: ``C_kn = s_k cos(pi k (2n + 1) / (2N))``."""
    k, m = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    c = np.cos(np.pi * k * (2 * m + 1) / (2 * n))
    s = np.full(n, np.sqrt(2.0 / n))
    s[0] = np.sqrt(1.0 / n)
    return s[:, None] * c


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Rows whose largest magnitude is 0.75, so :func:`low_frequency` scales none of them (exponent 0)."""
    x = rng.normal(size=(n, d))
    return 0.75 * x / np.abs(x).max(axis=1, keepdims=True)


def test_one_dimensional_dct_matches_the_definition() -> None:
    x = unit_rows(np.random.default_rng(0), 4, 9)
    ref = x @ dct2_matrix(9).T  # every coefficient of every row
    out = low_frequency(torch.from_numpy(x)).numpy()
    assert out.shape == (4, 9 // 2 + 1)  # i <= floor(9 / 2) in a 9 x 1 matrix
    np.testing.assert_allclose(out, ref[:, :5], rtol=1e-12, atol=1e-14)


def test_two_dimensional_dct_matches_the_definition() -> None:
    p, q = 5, 4
    x = unit_rows(np.random.default_rng(1), 3, p * q)
    cp, cq = dct2_matrix(p), dct2_matrix(q)
    mask = low_frequency_mask(p, q)
    expected = [(i, j) for i in range(p) for j in range(q) if i + j <= p // 2]
    assert [tuple(ij) for ij in np.argwhere(mask)] == expected  # row-major order
    out = low_frequency(torch.from_numpy(x), (p, q)).numpy()
    for r in range(3):
        full = cp @ x[r].reshape(p, q) @ cq.T
        np.testing.assert_allclose(out[r], [full[i, j] for i, j in expected], rtol=1e-12, atol=1e-14)


def test_rows_are_scaled_by_powers_of_two_only() -> None:
    x = torch.tensor([[3e38, -1e38, 2e38, 0.0], [3.0, -1.0, 2.0, 0.0]])
    low = low_frequency(x)
    assert torch.isfinite(low).all()
    # both rows are the same direction: each one's components are the DCT of row / 2^e, e from the largest entry
    ref = scipy.fft.dct(np.array([3.0, -1.0, 2.0, 0.0]), norm="ortho")[:3]
    np.testing.assert_allclose(low[1].numpy(), ref / 4.0, rtol=1e-12)
    np.testing.assert_allclose(low[0].numpy() / low[1].numpy(), (3e38 / 2.0**128) / (3.0 / 4.0), rtol=1e-6)


def separated_cohort(honest: int, bad: int, d: int, seed: int, spread: float = 0.0) -> np.ndarray:
    """Honest rows share their low frequencies (up to a relative perturbation ``spread``); the poisoned rows'
    are the honest ones negated and scaled by 3 (cosine distance 2 when ``spread = 0``); every row has
    independent high frequencies twice as large. Built in the coefficient domain, then put back through the
    inverse orthonormal DCT."""
    rng = np.random.default_rng(seed)
    k = d // 2 + 1
    base = rng.normal(size=k)
    coeffs = 2.0 * rng.normal(size=(honest + bad, d))  # high frequencies, different for every row
    coeffs[:honest, :k] = base + spread * rng.normal(size=(honest, k))
    coeffs[honest:, :k] = -3.0 * base + spread * rng.normal(size=(bad, k))
    return scipy.fft.idct(coeffs, norm="ortho", axis=1)


@pytest.mark.parametrize("spread", [0.0, 0.05])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_separated_low_frequency_cluster_is_rejected(seed: int, spread: float) -> None:
    x = separated_cohort(6, 3, 40, seed, spread)
    res = FreqFed(f=3).aggregate(x)
    kept = res.kept.numpy()
    # cosine distances of the low frequencies: about 0 among the honest rows and among the poisoned, about 2
    # across; single linkage joins the two groups last and the 3 poisoned rows fall out of the only cluster
    # (min size 5). HDBSCAN labels a point of that cluster only if it left it at the largest lambda, so the
    # honest row farthest from the rest (by rounding alone when spread = 0) may be left out as noise.
    assert not kept[6:].any() and kept[:6].sum() >= 5
    np.testing.assert_allclose(res.aggregate.numpy(), x[kept].mean(axis=0), rtol=1e-12, atol=1e-15)
    assert res.metrics == {"accepted": float(kept.sum()), "components": 21.0}
    if spread == 0.0:
        np.testing.assert_allclose(res.scores.numpy(), [1.0] * 6 + [-1.0] * 3, rtol=1e-12)


def test_rows_of_3e38_with_only_high_frequencies_are_rejected_without_overflow() -> None:
    rng = np.random.default_rng(3)
    honest = np.linspace(0.0, 1.0, 30)[None, :] + 0.05 * rng.normal(size=(6, 30))  # a smooth ramp
    alternating = np.where(np.arange(30) % 2 == 0, 1.0, -1.0)  # the highest frequency
    x = np.concatenate([honest, 3e38 * alternating[None], -3e38 * alternating[None]]).astype(np.float32)
    res = FreqFed(f=2).aggregate(torch.from_numpy(x))
    kept = res.kept.numpy()
    assert not kept[6:].any() and kept[:6].sum() >= 5
    np.testing.assert_allclose(res.aggregate.numpy(), x[kept].astype(np.float64).mean(axis=0), rtol=1e-5)


def test_two_dimensional_shape_separates_as_well() -> None:
    # the cohort built in the 2-D coefficient domain of 8 x 5 matrices: low-frequency block shared or negated
    rng = np.random.default_rng(4)
    mask = low_frequency_mask(8, 5)
    base = rng.normal(size=int(mask.sum()))
    coeffs = 2.0 * rng.normal(size=(9, 8, 5))
    coeffs[:6, mask], coeffs[6:, mask] = base, -3.0 * base
    x = scipy.fft.idctn(coeffs, axes=(1, 2), norm="ortho").reshape(9, 40)
    res = FreqFed(f=3, shape=(8, 5)).aggregate(x)
    assert res.metrics["components"] == float(mask.sum()) == 15.0
    kept = res.kept.numpy()
    assert not kept[6:].any() and kept[:6].sum() >= 5
    np.testing.assert_allclose(res.aggregate.numpy(), x[kept].mean(axis=0), rtol=1e-12, atol=1e-15)



@SETTINGS
@given(n=st.integers(3, 12), d=st.integers(1, 30), seed=st.integers(0, 2**32 - 1))
def test_honest_only_cohorts_stay_within_the_honest_bounds(n: int, d: int, seed: int) -> None:
    x = np.random.default_rng(seed).normal(size=(n, d))
    res = FreqFed().aggregate(x)
    out, kept = res.aggregate.numpy(), res.kept.numpy()
    assert kept.sum() >= n // 2 + 1  # min_cluster_size: a cluster is a majority, and one always forms here
    np.testing.assert_allclose(out, x[kept].mean(axis=0), rtol=1e-12, atol=1e-14)
    assert np.all(out >= x.min(axis=0) - 1e-12) and np.all(out <= x.max(axis=0) + 1e-12)
    assert np.linalg.norm(out) <= np.linalg.norm(x, axis=1).max() * (1 + 1e-12)


def test_weights_are_validated_but_not_used() -> None:
    x = separated_cohort(6, 3, 20, 5, spread=0.05)
    a = FreqFed(f=3).aggregate(x, np.arange(1.0, 10.0))
    b = FreqFed(f=3).aggregate(x)
    torch.testing.assert_close(a.aggregate, b.aggregate, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("factory", "pattern"),
    [
        (lambda: FreqFed(f=-1), "f must be >= 0, got f=-1"),
        (lambda: FreqFed(shape=(4,)), "shape must be a pair (P, Q) of positive ints, got shape=(4,)"),
        (lambda: FreqFed(shape="45"), "shape must be a pair (P, Q) of positive ints, got shape='45'"),
        (lambda: FreqFed(shape=4), "shape must be a pair (P, Q) of positive ints, got shape=4"),
        (lambda: FreqFed(shape=(0, 4)), "shape[0] must be >= 1, got shape[0]=0"),
        (lambda: FreqFed(shape=(2, 1.5)), "shape[1] must be an int, got 1.5"),
        (lambda: make("freqfed", f=1, P=3), "freqfed (FreqFed) got unknown parameter 'P'; valid parameters: f, shape"),
    ],
)
def test_parameter_errors(factory, pattern: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(pattern)):
        factory()


def test_call_errors_name_the_values() -> None:
    with pytest.raises(InvalidUpdateError, match=re.escape("shape=(3, 3) holds 9 entries, but the updates have d=8")):
        FreqFed(shape=(3, 3))(np.ones((4, 8)))
    with pytest.raises(ToleranceError, match=re.escape("FreqFed needs n >= 3 clients to cluster, got n=2, f=0")):
        FreqFed()(np.ones((2, 4)))
    with pytest.raises(ToleranceError, match=re.escape("FreqFed needs n > 2f, got n=6, f=3")):
        FreqFed(f=3)(np.ones((6, 4)))
    assert repr(make("freqfed", f=1, shape=(2, 3))) == "FreqFed(f=1, shape=(2, 3))"


def test_zero_rows_are_no_direction(caplog: pytest.LogCaptureFixture) -> None:
    # zero updates have cosine 0 with everyone: with 3 of 5 the cosine distances are all 1 except two equal rows
    x = np.zeros((5, 6))
    x[3] = x[4] = np.arange(6.0)
    with caplog.at_level(logging.WARNING, logger="defenses.robust.freqfed"):
        res = FreqFed().aggregate(x)
    assert np.isfinite(res.aggregate.numpy()).all()
    kept = res.kept.numpy()
    np.testing.assert_allclose(res.aggregate.numpy(), x[kept].mean(axis=0) if kept.any() else np.zeros(6))
