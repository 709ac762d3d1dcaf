"""Additive noise mechanisms: Gaussian, Laplace, discrete Gaussian and Skellam.

Each mechanism is calibrated either from a noise multiplier (``z = sigma / Delta``)
or from a target ``(epsilon, delta)`` for one release, adds its noise with an
explicit generator, and says what it spends as a privacy event
(:mod:`defenses.dp.events`), which a :class:`~defenses.dp.ledger.PrivacyLedger`
composes with Opacus' accountants.

* Gaussian: classic calibration ``sigma = Delta sqrt(2 ln(1.25/delta)) / epsilon``
  (Dwork & Roth, *The Algorithmic Foundations of DP*, 2014, Theorem A.1; valid for
  ``epsilon < 1``) and the analytic Gaussian mechanism (Balle & Wang, ICML 2018,
  Theorem 8: the smallest ``sigma`` with
  ``Phi(Delta/(2 sigma) - epsilon sigma/Delta) - e^epsilon Phi(-Delta/(2 sigma) - epsilon sigma/Delta) <= delta``).
* Laplace: ``b = Delta_1 / epsilon`` (Dwork, McSherry, Nissim, Smith, TCC 2006).
* Discrete Gaussian ``N_Z(0, sigma^2)``: exact sampling by rejection from the
  discrete Laplace (Canonne, Kamath, Steinke, NeurIPS 2020, Algorithms 1-3); it
  satisfies ``Delta_2^2 / (2 sigma^2)``-zCDP for integer-valued queries (ibid.).
* Skellam ``Sk(mu)`` = ``Poisson(mu/2) - Poisson(mu/2)`` (variance ``mu``), with the
  Renyi DP bound of Agarwal, Kairouz, Liu (NeurIPS 2021, Theorem 3.5):
  ``eps(alpha) <= alpha D2^2 / (2 mu) + min(((2 alpha - 1) D2^2 + 6 D1) / (4 mu^2), 3 D1 / (2 mu))``

Examples
--------
>>> import torch
>>> mech = GaussianMechanism.from_epsilon_delta(epsilon=1.0, delta=1e-5, sensitivity=1.0)
>>> round(mech.sigma, 3)
3.731
>>> x = mech(torch.zeros(3), generator=torch.Generator().manual_seed(0))
>>> x.shape, mech.event().noise_multiplier == mech.sigma
(torch.Size([3]), True)
"""

from __future__ import annotations

import abc
import math
import warnings
from fractions import Fraction

import numpy as np
import torch
from opacus.accountants.analysis import rdp as opacus_rdp
from opacus.accountants.utils import get_noise_multiplier
from scipy import optimize, special

from defenses.dp.errors import PrivacyBudgetError, PrivacyConfigError, check_delta, check_epsilon, check_positive
from defenses.dp.events import GaussianEvent, PrivacyEvent, PureDPEvent, RenyiEvent

__all__ = [
    "INTEGER_ORDERS",
    "DiscreteGaussianMechanism",
    "GaussianMechanism",
    "LaplaceMechanism",
    "Mechanism",
    "SkellamMechanism",
    "analytic_gaussian_delta",
    "analytic_gaussian_sigma",
    "classic_gaussian_sigma",
    "discrete_gaussian_pmf",
    "sample_discrete_gaussian",
    "sample_discrete_gaussian_exact",
    "sample_laplace",
    "sample_skellam",
    "skellam_rdp",
]

#: Integer Renyi orders used for mechanisms whose RDP bound is stated for integer alpha.
INTEGER_ORDERS: tuple[int, ...] = (*range(2, 64), 80, 96, 128, 192, 256)


# --------------------------------------------------------------------------- calibration


def classic_gaussian_sigma(*, epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """Classic Gaussian calibration (Dwork & Roth, 2014, Theorem A.1), valid for ``0 < epsilon < 1``.

    Examples
    --------
    >>> round(classic_gaussian_sigma(epsilon=0.5, delta=1e-5), 4)
    9.6896
    """
    eps, dlt = check_epsilon(epsilon), check_delta(delta)
    sens = check_positive(sensitivity, name="sensitivity")
    if eps >= 1.0:
        raise PrivacyConfigError(
            f"the classic Gaussian calibration holds only for epsilon < 1, got epsilon={eps}; "
            "use the analytic calibration"
        )
    return sens * math.sqrt(2.0 * math.log(1.25 / dlt)) / eps


def analytic_gaussian_delta(*, sigma: float, epsilon: float, sensitivity: float = 1.0) -> float:
    """Exact ``delta(epsilon)`` of the Gaussian mechanism (Balle & Wang, ICML 2018, Theorem 8).

    Examples
    --------
    >>> round(analytic_gaussian_delta(sigma=1.0, epsilon=1.0), 4)
    0.1269
    """
    s = check_positive(sigma, name="sigma")
    eps = check_positive(epsilon, name="epsilon", allow_zero=True)
    sens = check_positive(sensitivity, name="sensitivity")
    a = sens / (2.0 * s)
    b = eps * s / sens
    # Phi(a - b) - e^eps Phi(-a - b), the second term in log space for stability
    return float(special.ndtr(a - b) - math.exp(eps + special.log_ndtr(-a - b)))


def analytic_gaussian_sigma(*, epsilon: float, delta: float, sensitivity: float = 1.0, tol: float = 1e-12) -> float:
    """Smallest ``sigma`` giving ``(epsilon, delta)``-DP (analytic Gaussian mechanism, Balle & Wang, ICML 2018).

    Solves the exact condition of their Theorem 8 by bracketing and Brent's method
    (the condition is monotone in ``sigma``).

    Examples
    --------
    >>> s = analytic_gaussian_sigma(epsilon=1.0, delta=1e-5)
    >>> abs(analytic_gaussian_delta(sigma=s, epsilon=1.0) - 1e-5) < 1e-9
    True
    """
    eps, dlt = check_epsilon(epsilon), check_delta(delta)
    sens = check_positive(sensitivity, name="sensitivity")

    def f(log_s: float) -> float:
        return analytic_gaussian_delta(sigma=sens * math.exp(log_s), epsilon=eps, sensitivity=sens) - dlt

    lo, hi = -10.0, 2.0
    while f(hi) > 0:
        hi += 2.0
        if hi > 60:  # pragma: no cover - delta below floating-point reach
            raise PrivacyConfigError(f"cannot calibrate a Gaussian for epsilon={eps}, delta={dlt}")
    if f(lo) <= 0:
        return sens * math.exp(lo)
    return sens * math.exp(optimize.brentq(f, lo, hi, xtol=tol))


# --------------------------------------------------------------------------- samplers


def sample_laplace(scale: float, shape: tuple[int, ...], *, generator: torch.Generator) -> torch.Tensor:
    """Laplace(0, ``scale``) samples (float64) as the difference of two Exp(1/scale) draws."""
    b = check_positive(scale, name="scale")
    e1 = torch.empty(shape, dtype=torch.float64).exponential_(1.0, generator=generator)
    e2 = torch.empty(shape, dtype=torch.float64).exponential_(1.0, generator=generator)
    return b * (e1 - e2)


def discrete_gaussian_pmf(k: np.ndarray, sigma: float) -> np.ndarray:
    """PMF of ``N_Z(0, sigma^2)``: ``exp(-k^2 / (2 sigma^2)) / sum_j exp(-j^2 / (2 sigma^2))``.

    Examples
    --------
    >>> p = discrete_gaussian_pmf(np.arange(-50, 51), 3.0)
    >>> bool(abs(p.sum() - 1.0) < 1e-12)
    True
    """
    s2 = check_positive(sigma, name="sigma") ** 2
    half = math.ceil(40 * math.sqrt(s2)) + 1
    j = np.arange(-half, half + 1, dtype=np.float64)
    norm = np.exp(-(j**2) / (2 * s2)).sum()
    return np.exp(-(np.asarray(k, dtype=np.float64) ** 2) / (2 * s2)) / norm


def sample_discrete_gaussian(sigma: float, shape: tuple[int, ...], *, generator: torch.Generator) -> torch.Tensor:
    """``N_Z(0, sigma^2)`` samples (int64), vectorised Canonne-Kamath-Steinke rejection sampler.

    Algorithm 3 of Canonne, Kamath, Steinke (NeurIPS 2020): with ``t = floor(sigma) + 1``,
    draw ``Y ~ DLap(t)`` (here the difference of two geometric variables with
    ``P(G = k) = (1 - e^{-1/t}) e^{-k/t}``, which has PMF proportional to ``e^{-|y|/t}``)
    and accept with probability ``exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2))``. This
    vectorised version evaluates the acceptance probabilities in float64 (error
    ~1e-16 per test); :func:`sample_discrete_gaussian_exact` runs the same
    algorithm in exact rational arithmetic.
    """
    s = check_positive(sigma, name="sigma")
    n = int(np.prod(shape)) if shape else 1
    t = math.floor(s) + 1
    p = -math.expm1(-1.0 / t)  # 1 - e^{-1/t}
    out = torch.empty(0, dtype=torch.int64)
    while out.numel() < n:
        m = max(64, int(1.6 * (n - out.numel())) + 16)
        g1 = torch.empty(m, dtype=torch.float64).geometric_(p, generator=generator) - 1
        g2 = torch.empty(m, dtype=torch.float64).geometric_(p, generator=generator) - 1
        y = g1 - g2
        acc = torch.exp(-((y.abs() - s * s / t) ** 2) / (2 * s * s))
        u = torch.rand(m, dtype=torch.float64, generator=generator)
        out = torch.cat([out, y[u < acc].to(torch.int64)])
    return out[:n].reshape(shape)


def _bern_frac(p: Fraction, rng: np.random.Generator) -> bool:
    """Exact Bernoulli(p) for rational ``p`` in [0, 1]."""
    return int(rng.integers(0, p.denominator)) < p.numerator


def _bern_exp_neg(gamma: Fraction, rng: np.random.Generator) -> bool:
    """Exact Bernoulli(exp(-gamma)) for rational ``gamma >= 0`` (CKS 2020, Algorithm 1)."""
    while gamma > 1:
        if not _bern_exp_neg(Fraction(1), rng):
            return False
        gamma -= 1
    k = 1
    while _bern_frac(gamma / k, rng):
        k += 1
    return k % 2 == 1


def _discrete_laplace_exact(s: int, t: int, rng: np.random.Generator) -> int:
    """Exact discrete Laplace with scale ``t/s`` (CKS 2020, Algorithm 2)."""
    while True:
        u = int(rng.integers(0, t))
        if not _bern_exp_neg(Fraction(u, t), rng):
            continue
        v = 0
        while _bern_exp_neg(Fraction(1), rng):
            v += 1
        y = (u + t * v) // s
        b = int(rng.integers(0, 2))
        if b == 1 and y == 0:
            continue
        return (1 - 2 * b) * y


def sample_discrete_gaussian_exact(sigma2: Fraction | int, size: int, *, rng: np.random.Generator) -> np.ndarray:
    """``size`` exact ``N_Z(0, sigma2)`` samples in rational arithmetic (CKS 2020, Algorithm 3).

    Every Bernoulli is decided from uniform integers of ``rng``, with no floating
    point anywhere, so the output distribution is exactly the discrete Gaussian.
    Slow (pure Python): for small counts and for checking the vectorised sampler.

    Examples
    --------
    >>> sample_discrete_gaussian_exact(Fraction(4), 3, rng=np.random.default_rng(0)).shape
    (3,)
    """
    s2 = Fraction(sigma2)
    if s2 <= 0:
        raise PrivacyConfigError(f"sigma2 must be > 0, got {sigma2!r}")
    if size < 0:
        raise PrivacyConfigError(f"size must be >= 0, got {size}")
    t = math.isqrt(math.floor(s2)) + 1  # floor(sigma) + 1
    out = np.empty(size, dtype=np.int64)
    for i in range(size):
        while True:
            y = _discrete_laplace_exact(1, t, rng)
            gamma = (abs(y) - s2 / t) ** 2 / (2 * s2)
            if _bern_exp_neg(gamma, rng):
                out[i] = y
                break
    return out


def sample_skellam(mu: float, shape: tuple[int, ...], *, generator: torch.Generator) -> torch.Tensor:
    """Symmetric Skellam samples (int64) with variance ``mu``: ``Poisson(mu/2) - Poisson(mu/2)``."""
    m = check_positive(mu, name="mu")
    rate = torch.full(shape, m / 2.0, dtype=torch.float64)
    return (torch.poisson(rate, generator=generator) - torch.poisson(rate, generator=generator)).to(torch.int64)


def skellam_rdp(alpha: int, *, mu: float, l2_sensitivity: float, l1_sensitivity: float) -> float:
    """Renyi DP of the Skellam mechanism at integer order ``alpha > 1`` (Agarwal, Kairouz, Liu, NeurIPS 2021).

    Examples
    --------
    >>> round(skellam_rdp(2, mu=100.0, l2_sensitivity=1.0, l1_sensitivity=1.0), 6)
    0.010225
    """
    a, d2, d1 = alpha, l2_sensitivity, l1_sensitivity
    return a * d2**2 / (2 * mu) + min(((2 * a - 1) * d2**2 + 6 * d1) / (4 * mu**2), 3 * d1 / (2 * mu))


# --------------------------------------------------------------------------- mechanisms


class Mechanism(abc.ABC):
    """An additive noise mechanism with a sensitivity, a sampler and a privacy event."""

    name: str = ""

    @abc.abstractmethod
    def noise(self, shape: tuple[int, ...], *, generator: torch.Generator) -> torch.Tensor:
        """Noise of the given shape (float64 or int64)."""

    @abc.abstractmethod
    def event(self, *, sample_rate: float = 1.0, steps: int = 1) -> PrivacyEvent:
        """The privacy event of ``steps`` releases sampled at rate ``sample_rate``."""

    def __call__(self, x: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """``x`` plus noise (on ``x``'s device and dtype; ``generator`` lives on CPU)."""
        return x + self.noise(tuple(x.shape), generator=generator).to(device=x.device, dtype=x.dtype)


def _noise_params(sigma: float | None, noise_multiplier: float | None, sensitivity: float) -> tuple[float, float]:
    sens = check_positive(sensitivity, name="sensitivity")
    if (sigma is None) == (noise_multiplier is None):
        raise PrivacyConfigError("give exactly one of sigma and noise_multiplier")
    if sigma is None:
        z = check_positive(noise_multiplier, name="noise_multiplier")  # type: ignore[arg-type]
        return z * sens, sens
    return check_positive(sigma, name="sigma"), sens


class GaussianMechanism(Mechanism):
    """Gaussian mechanism ``x + N(0, sigma^2 I)`` with L2 sensitivity ``Delta``.

    Parameters
    ----------
    sigma : float, optional
        Noise standard deviation.
    noise_multiplier : float, optional
        ``z``; ``sigma = z * sensitivity``. Give exactly one of ``sigma`` and ``noise_multiplier``.
    sensitivity : float
        L2 sensitivity ``Delta_2`` of the query.
    """

    name = "gaussian"

    def __init__(self, *, sigma: float | None = None, noise_multiplier: float | None = None, sensitivity: float = 1.0):
        self.sigma, self.sensitivity = _noise_params(sigma, noise_multiplier, sensitivity)

    @classmethod
    def from_epsilon_delta(
        cls, *, epsilon: float, delta: float, sensitivity: float = 1.0, calibration: str = "analytic"
    ) -> GaussianMechanism:
        """Calibrate one release to ``(epsilon, delta)``: ``calibration`` is ``"analytic"`` or ``"classic"``."""
        if calibration == "analytic":
            return cls(
                sigma=analytic_gaussian_sigma(epsilon=epsilon, delta=delta, sensitivity=sensitivity),
                sensitivity=sensitivity,
            )
        if calibration == "classic":
            return cls(
                sigma=classic_gaussian_sigma(epsilon=epsilon, delta=delta, sensitivity=sensitivity),
                sensitivity=sensitivity,
            )
        raise PrivacyConfigError(f"calibration must be 'analytic' or 'classic', got {calibration!r}")

    @property
    def noise_multiplier(self) -> float:
        """``z = sigma / Delta_2``."""
        return self.sigma / self.sensitivity

    def noise(self, shape: tuple[int, ...], *, generator: torch.Generator) -> torch.Tensor:
        return self.sigma * torch.randn(shape, dtype=torch.float64, generator=generator)

    def event(self, *, sample_rate: float = 1.0, steps: int = 1) -> GaussianEvent:
        return GaussianEvent(noise_multiplier=self.noise_multiplier, sample_rate=sample_rate, steps=steps)

    def delta(self, *, epsilon: float) -> float:
        """Exact ``delta`` of one release at ``epsilon`` (Balle & Wang 2018)."""
        return analytic_gaussian_delta(sigma=self.sigma, epsilon=epsilon, sensitivity=self.sensitivity)


class LaplaceMechanism(Mechanism):
    """Laplace mechanism ``x + Lap(b)^d`` with L1 sensitivity ``Delta_1``: ``epsilon = Delta_1 / b``.

    Give exactly one of ``scale`` (``b``), ``noise_multiplier`` (``b / Delta_1``) and ``epsilon``.

    Examples
    --------
    >>> LaplaceMechanism(epsilon=0.5, sensitivity=2.0).scale
    4.0
    """

    name = "laplace"

    def __init__(
        self,
        *,
        scale: float | None = None,
        noise_multiplier: float | None = None,
        epsilon: float | None = None,
        sensitivity: float = 1.0,
    ) -> None:
        sens = check_positive(sensitivity, name="sensitivity")
        given = [v is not None for v in (scale, noise_multiplier, epsilon)]
        if sum(given) != 1:
            raise PrivacyConfigError("give exactly one of scale, noise_multiplier and epsilon")
        if epsilon is not None:
            b = sens / check_epsilon(epsilon)
        elif noise_multiplier is not None:
            b = check_positive(noise_multiplier, name="noise_multiplier") * sens
        else:
            b = check_positive(scale, name="scale")  # type: ignore[arg-type]
        self.scale, self.sensitivity = b, sens

    @property
    def epsilon(self) -> float:
        """Pure-DP epsilon of one release."""
        return self.sensitivity / self.scale

    def noise(self, shape: tuple[int, ...], *, generator: torch.Generator) -> torch.Tensor:
        return sample_laplace(self.scale, shape, generator=generator)

    def event(self, *, sample_rate: float = 1.0, steps: int = 1) -> PureDPEvent:
        if sample_rate != 1.0:
            raise PrivacyConfigError(
                f"Laplace events are composed without amplification by sampling; got sample_rate={sample_rate}"
            )
        return PureDPEvent(epsilon=self.epsilon, steps=steps)


class DiscreteGaussianMechanism(Mechanism):
    """Discrete Gaussian mechanism ``x + N_Z(0, sigma^2)^d`` on integer vectors (Canonne, Kamath, Steinke 2020).

    It is ``Delta_2^2 / (2 sigma^2)``-zCDP, the Renyi curve of a Gaussian with
    ``z = sigma / Delta_2``; its event carries that ``z`` with ``gaussian_exact=False``.
    ``exact=True`` draws with the exact rational sampler (slow).

    Examples
    --------
    >>> import torch
    >>> m = DiscreteGaussianMechanism(sigma=2.0)
    >>> m.noise((4,), generator=torch.Generator().manual_seed(1)).dtype
    torch.int64
    """

    name = "discrete_gaussian"

    def __init__(
        self,
        *,
        sigma: float | None = None,
        noise_multiplier: float | None = None,
        sensitivity: float = 1.0,
        exact: bool = False,
    ) -> None:
        self.sigma, self.sensitivity = _noise_params(sigma, noise_multiplier, sensitivity)
        self.exact = exact

    @classmethod
    def from_epsilon_delta(cls, *, epsilon: float, delta: float, sensitivity: float = 1.0) -> DiscreteGaussianMechanism:
        """Calibrate one release via its zCDP bound and Opacus' RDP conversion."""
        z = _calibrate_rdp(epsilon, delta, sample_rate=1.0, steps=1)
        return cls(noise_multiplier=z, sensitivity=sensitivity)

    def noise(self, shape: tuple[int, ...], *, generator: torch.Generator) -> torch.Tensor:
        if self.exact:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            n = int(np.prod(shape)) if shape else 1
            s2 = Fraction(self.sigma).limit_denominator(10**9) ** 2
            vals = sample_discrete_gaussian_exact(s2, n, rng=np.random.default_rng(seed))
            return torch.from_numpy(vals).reshape(shape)
        return sample_discrete_gaussian(self.sigma, shape, generator=generator)

    def event(self, *, sample_rate: float = 1.0, steps: int = 1) -> GaussianEvent:
        return GaussianEvent(
            noise_multiplier=self.sigma / self.sensitivity,
            sample_rate=sample_rate,
            steps=steps,
            gaussian_exact=False,
            mechanism=self.name,
        )


class SkellamMechanism(Mechanism):
    """Skellam mechanism ``x + Sk(mu)^d`` on integer vectors (Agarwal, Kairouz, Liu, NeurIPS 2021).

    Parameters
    ----------
    mu : float, optional
        Variance per coordinate; or ``noise_multiplier`` with ``mu = (z Delta_2)^2``.
    sensitivity : float
        L2 sensitivity ``Delta_2``.
    l1_sensitivity : float, optional
        ``Delta_1``; default ``Delta_2^2`` (integer vectors have ``Delta_1 <= Delta_2^2``).

    Its event is a :class:`~defenses.dp.events.RenyiEvent` carrying the exact Renyi
    bound at :data:`INTEGER_ORDERS`, the same curve :meth:`from_epsilon_delta` calibrates
    with, so a ledger reports the epsilon the mechanism was calibrated for.
    (``gaussian_equivalent_multiplier`` is a looser dominating Gaussian,
    ``z = sqrt(mu / (Delta_2^2 + 3 Delta_1))``, kept for comparison: accounting with it
    roughly doubles epsilon.)

    Examples
    --------
    >>> SkellamMechanism(noise_multiplier=10.0).mu
    100.0
    >>> from defenses.dp.ledger import PrivacyLedger
    >>> sk = SkellamMechanism.from_epsilon_delta(epsilon=2.0, delta=1e-5)
    >>> led = PrivacyLedger(delta=1e-5)
    >>> led.record(sk.event())
    >>> 1.99 < led.epsilon() <= 2.0
    True
    """

    name = "skellam"

    def __init__(
        self,
        *,
        mu: float | None = None,
        noise_multiplier: float | None = None,
        sensitivity: float = 1.0,
        l1_sensitivity: float | None = None,
    ) -> None:
        sens = check_positive(sensitivity, name="sensitivity")
        if (mu is None) == (noise_multiplier is None):
            raise PrivacyConfigError("give exactly one of mu and noise_multiplier")
        self.mu = (
            check_positive(mu, name="mu")
            if mu is not None
            else (
                check_positive(noise_multiplier, name="noise_multiplier") * sens  # type: ignore[arg-type]
            )
            ** 2
        )
        self.sensitivity = sens
        self.l1_sensitivity = sens**2 if l1_sensitivity is None else check_positive(l1_sensitivity, name="l1")

    @classmethod
    def from_epsilon_delta(
        cls, *, epsilon: float, delta: float, sensitivity: float = 1.0, l1_sensitivity: float | None = None
    ) -> SkellamMechanism:
        """Smallest variance ``mu`` whose exact Skellam RDP curve converts to ``epsilon`` (Opacus' conversion)."""
        eps, dlt = check_epsilon(epsilon), check_delta(delta)
        l1 = sensitivity**2 if l1_sensitivity is None else l1_sensitivity

        def excess(log_mu: float) -> float:
            m = cls(mu=math.exp(log_mu), sensitivity=sensitivity, l1_sensitivity=l1)
            return m.epsilon(delta=dlt) - eps

        lo, hi = math.log(1e-6), math.log(10.0)
        while excess(hi) > 0:
            hi += 2.0
        mu = math.exp(optimize.brentq(excess, lo, hi, xtol=1e-10)) if excess(lo) > 0 else math.exp(lo)
        return cls(mu=mu * (1 + 1e-9), sensitivity=sensitivity, l1_sensitivity=l1)

    def rdp(self, orders: tuple[int, ...] = INTEGER_ORDERS) -> np.ndarray:
        """The exact Renyi bound at integer ``orders``."""
        return np.array(
            [
                skellam_rdp(a, mu=self.mu, l2_sensitivity=self.sensitivity, l1_sensitivity=self.l1_sensitivity)
                for a in orders
            ]
        )

    def epsilon(self, *, delta: float, steps: int = 1) -> float:
        """``epsilon`` of ``steps`` releases from the exact Renyi curve (Opacus' RDP-to-DP conversion)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            eps, _ = opacus_rdp.get_privacy_spent(orders=list(INTEGER_ORDERS), rdp=steps * self.rdp(), delta=delta)
        return float(eps)

    @property
    def gaussian_equivalent_multiplier(self) -> float:
        """``z`` with ``alpha / (2 z^2) >=`` the Skellam Renyi bound for all ``alpha >= 1``."""
        return math.sqrt(self.mu / (self.sensitivity**2 + 3 * self.l1_sensitivity))

    def noise(self, shape: tuple[int, ...], *, generator: torch.Generator) -> torch.Tensor:
        return sample_skellam(self.mu, shape, generator=generator)

    def event(self, *, sample_rate: float = 1.0, steps: int = 1) -> RenyiEvent:
        return RenyiEvent(
            orders=INTEGER_ORDERS,
            rdp=tuple(float(r) for r in self.rdp()),
            steps=steps,
            sample_rate=sample_rate,
            mechanism=self.name,
        )


def _calibrate_rdp(epsilon: float, delta: float, *, sample_rate: float, steps: int, accountant: str = "rdp") -> float:
    """Noise multiplier for ``(epsilon, delta)`` after ``steps`` sampled Gaussian releases (Opacus)."""
    eps, dlt = check_epsilon(epsilon), check_delta(delta)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # opacus' "optimal order is the largest alpha" hint
            return float(
                get_noise_multiplier(
                    target_epsilon=eps,
                    target_delta=dlt,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant=accountant,
                    epsilon_tolerance=0.005 * eps,
                )
            )
    except ValueError as err:
        raise PrivacyBudgetError(
            f"no noise multiplier reaches epsilon={eps}, delta={dlt} with q={sample_rate} over {steps} steps: {err}"
        ) from err
