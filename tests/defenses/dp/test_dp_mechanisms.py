"""Samplers against theory (fixed seeds, stated tolerances) and calibration round trips."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy import stats

from defenses.dp import (
    DiscreteGaussianMechanism,
    GaussianMechanism,
    LaplaceMechanism,
    PrivacyConfigError,
    PrivacyLedger,
    SkellamMechanism,
    analytic_gaussian_delta,
    analytic_gaussian_sigma,
    classic_gaussian_sigma,
    discrete_gaussian_pmf,
    sample_discrete_gaussian,
    sample_discrete_gaussian_exact,
    sample_skellam,
)

N = 200_000


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _chi2_pvalue(samples: np.ndarray, pmf, support: np.ndarray) -> float:
    """Chi-square goodness of fit on ``support`` plus one pooled tail cell."""
    counts = np.array([(samples == k).sum() for k in support], dtype=float)
    p = pmf(support)
    obs = np.append(counts, len(samples) - counts.sum())
    exp = np.append(p, max(1.0 - p.sum(), 0.0)) * len(samples)
    keep = exp > 5
    obs, exp = obs[keep], exp[keep]
    exp *= obs.sum() / exp.sum()
    return float(stats.chisquare(obs, exp).pvalue)


def test_analytic_gaussian_known_answer_and_round_trip():
    # Balle & Wang (2018): analytic sigma for (1, 1e-5) is about 3.73, below the classic 4.84-type bound
    s = analytic_gaussian_sigma(epsilon=1.0, delta=1e-5)
    assert s == pytest.approx(3.7306, abs=1e-3)
    assert analytic_gaussian_delta(sigma=s, epsilon=1.0) == pytest.approx(1e-5, rel=1e-6)
    for eps, dlt in [(0.1, 1e-6), (0.5, 1e-5), (4.0, 1e-3)]:
        s = analytic_gaussian_sigma(epsilon=eps, delta=dlt, sensitivity=2.0)
        assert analytic_gaussian_delta(sigma=s, epsilon=eps, sensitivity=2.0) == pytest.approx(dlt, rel=1e-6)
        if eps < 1:
            assert s < classic_gaussian_sigma(epsilon=eps, delta=dlt, sensitivity=2.0)


def test_classic_gaussian_known_answer():
    assert classic_gaussian_sigma(epsilon=0.5, delta=1e-5) == pytest.approx(2 * math.sqrt(2 * math.log(1.25e5)))
    with pytest.raises(PrivacyConfigError, match="epsilon < 1"):
        classic_gaussian_sigma(epsilon=1.5, delta=1e-5)


def test_gaussian_empirical_std():
    mech = GaussianMechanism(noise_multiplier=1.5, sensitivity=2.0)
    x = mech(torch.zeros(N, dtype=torch.float64), generator=_gen(0))
    # std error of the sample std is sigma / sqrt(2N) ~ 0.0016 sigma; tolerance 1 %
    assert float(x.std()) == pytest.approx(3.0, rel=0.01)
    assert stats.kstest(x.numpy() / 3.0, "norm").pvalue > 1e-3


def test_laplace_empirical_distribution():
    mech = LaplaceMechanism(epsilon=0.5, sensitivity=1.0)
    assert mech.epsilon == pytest.approx(0.5) and mech.event().epsilon == pytest.approx(0.5)
    x = mech.noise((N,), generator=_gen(1)).numpy()
    assert x.std() == pytest.approx(math.sqrt(2) * 2.0, rel=0.02)
    assert stats.kstest(x, "laplace", args=(0.0, 2.0)).pvalue > 1e-3


@pytest.mark.parametrize("sigma", [0.7, 3.0, 12.5])
def test_discrete_gaussian_pmf_vectorised(sigma):
    x = sample_discrete_gaussian(sigma, (N,), generator=_gen(2)).numpy()
    half = math.ceil(4 * sigma)
    support = np.arange(-half, half + 1)
    assert _chi2_pvalue(x, lambda k: discrete_gaussian_pmf(k, sigma), support) > 1e-3
    emp = np.array([(x == k).mean() for k in support])
    tv = 0.5 * (np.abs(emp - discrete_gaussian_pmf(support, sigma)).sum() + (np.abs(x) > half).mean())
    assert tv < 0.01  # sampling TV at N = 2e5 is ~ sqrt(#cells / N) / 2 < 0.006
    var = float((discrete_gaussian_pmf(support, sigma) * support**2).sum())
    assert x.var() == pytest.approx(var, rel=0.02)


def test_discrete_gaussian_exact_sampler_pmf():
    x = sample_discrete_gaussian_exact(Fraction(4), 4000, rng=np.random.default_rng(3))
    support = np.arange(-6, 7)
    assert _chi2_pvalue(x, lambda k: discrete_gaussian_pmf(k, 2.0), support) > 1e-3
    m = DiscreteGaussianMechanism(sigma=2.0, exact=True)
    assert m.noise((5,), generator=_gen(0)).dtype == torch.int64


def test_skellam_pmf_and_variance():
    mu = 30.0
    x = sample_skellam(mu, (N,), generator=_gen(4)).numpy()
    assert x.var() == pytest.approx(mu, rel=0.02)
    support = np.arange(-20, 21)
    assert _chi2_pvalue(x, lambda k: stats.skellam.pmf(k, mu / 2, mu / 2), support) > 1e-3


def test_calibration_round_trips_through_the_ledger():
    for eps in (0.5, 2.0, 8.0):
        dg = DiscreteGaussianMechanism.from_epsilon_delta(epsilon=eps, delta=1e-5, sensitivity=3.0)
        led = PrivacyLedger(delta=1e-5)
        led.record(dg.event())
        assert eps * 0.99 <= led.epsilon() <= eps
        sk = SkellamMechanism.from_epsilon_delta(epsilon=eps, delta=1e-5, sensitivity=2.0)
        assert sk.epsilon(delta=1e-5) == pytest.approx(eps, rel=1e-4)
        # calibration and accounting agree: the ledger reports at most the target, within 0.1 %
        led = PrivacyLedger(delta=1e-5)
        led.record(sk.event())
        assert eps * 0.999 <= led.epsilon() <= eps
    g = GaussianMechanism.from_epsilon_delta(epsilon=0.5, delta=1e-6, calibration="classic")
    assert g.delta(epsilon=0.5) < 1e-6  # classic over-provisions


def test_noise_multiplier_and_sigma_agree():
    assert GaussianMechanism(noise_multiplier=2.0, sensitivity=0.5).sigma == 1.0
    assert DiscreteGaussianMechanism(noise_multiplier=2.0, sensitivity=3.0).sigma == 6.0
    assert SkellamMechanism(noise_multiplier=2.0, sensitivity=3.0).mu == 36.0
    assert LaplaceMechanism(noise_multiplier=2.0, sensitivity=3.0).scale == 6.0


@pytest.mark.parametrize(
    "make",
    [
        lambda: GaussianMechanism.from_epsilon_delta(epsilon=0.0, delta=1e-5),
        lambda: GaussianMechanism.from_epsilon_delta(epsilon=-1.0, delta=1e-5),
        lambda: GaussianMechanism.from_epsilon_delta(epsilon=1.0, delta=0.0),
        lambda: GaussianMechanism.from_epsilon_delta(epsilon=1.0, delta=1.0),
        lambda: GaussianMechanism.from_epsilon_delta(epsilon=1.0, delta=1e-5, calibration="magic"),
        lambda: GaussianMechanism(noise_multiplier=1.0, sigma=1.0),
        lambda: GaussianMechanism(noise_multiplier=1.0, sensitivity=0.0),
        lambda: LaplaceMechanism(epsilon=float("nan")),
        lambda: SkellamMechanism.from_epsilon_delta(epsilon=1.0, delta=2.0),
        lambda: DiscreteGaussianMechanism(sigma=-1.0),
    ],
)
def test_bad_input_raises(make):
    with pytest.raises(PrivacyConfigError):
        make()
