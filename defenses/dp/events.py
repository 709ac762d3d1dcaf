"""Privacy events: what one release of a mechanism spends.

A mechanism says what it spends as an event; a :class:`~defenses.dp.ledger.PrivacyLedger`
composes the events with Opacus' accountants.

* :class:`GaussianEvent`: a (possibly Poisson-subsampled) Gaussian mechanism with
  noise multiplier ``z = sigma / Delta_2``. Integer mechanisms (discrete Gaussian,
  distributed discrete Gaussian, Skellam) emit a Gaussian event whose ``z`` is the
  *Gaussian-equivalent* multiplier: the Gaussian whose Renyi DP curve
  ``alpha / (2 z^2)`` upper-bounds the mechanism's at every order. They set
  ``gaussian_exact=False``: their bound holds for Renyi DP without subsampling,
  so the ledger accounts them with RDP only and, unless told otherwise, without
  amplification by sampling.
* :class:`RenyiEvent`: a release whose Renyi DP curve is known exactly at
  integer orders (Skellam: Agarwal, Kairouz, Liu, NeurIPS 2021, Theorem 3.5).
  The ledger adds the curve to the RDP accountant's and converts once, so the
  reported epsilon is the one the mechanism was calibrated for, not the looser
  one of a dominating Gaussian.
* :class:`PureDPEvent`: an ``epsilon``-DP release (Laplace), composed by basic
  composition (Dwork & Roth, 2014, Theorem 3.14).

Examples
--------
>>> GaussianEvent(noise_multiplier=1.1, sample_rate=0.01).steps
1
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from defenses.dp.errors import PrivacyConfigError

__all__ = ["GaussianEvent", "PrivacyEvent", "PureDPEvent", "RenyiEvent"]


@dataclass(frozen=True)
class GaussianEvent:
    """``steps`` releases of a Gaussian(-dominated) mechanism, each sampled with rate ``q``.

    Attributes
    ----------
    noise_multiplier : float
        ``z``: noise standard deviation over the L2 sensitivity (> 0).
    sample_rate : float
        ``q`` in (0, 1]: probability that a given record (client) takes part.
    steps : int
        Number of releases.
    gaussian_exact : bool
        ``True`` for the continuous Gaussian; ``False`` for integer mechanisms whose
        Renyi DP is only bounded by the Gaussian's (see the module docstring).
    mechanism : str
        Name for logs and reports.
    """

    noise_multiplier: float
    sample_rate: float = 1.0
    steps: int = 1
    gaussian_exact: bool = True
    mechanism: str = "gaussian"

    def __post_init__(self) -> None:
        z = self.noise_multiplier
        if not isinstance(z, int | float) or not math.isfinite(z) or z <= 0:
            raise PrivacyConfigError(
                f"a privacy event needs a finite noise multiplier > 0, got {z!r} "
                "(noise multiplier 0 spends an infinite budget)"
            )
        if not isinstance(self.sample_rate, int | float) or not 0.0 < self.sample_rate <= 1.0:
            raise PrivacyConfigError(f"sample_rate must lie in (0, 1], got {self.sample_rate!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise PrivacyConfigError(f"steps must be an int >= 1, got {self.steps!r}")


@dataclass(frozen=True)
class PureDPEvent:
    """``steps`` releases of an ``epsilon``-DP mechanism (e.g. Laplace)."""

    epsilon: float
    steps: int = 1
    mechanism: str = "laplace"

    def __post_init__(self) -> None:
        if not isinstance(self.epsilon, int | float) or not math.isfinite(self.epsilon) or self.epsilon <= 0:
            raise PrivacyConfigError(f"epsilon of a pure-DP event must be finite and > 0, got {self.epsilon!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise PrivacyConfigError(f"steps must be an int >= 1, got {self.steps!r}")


@dataclass(frozen=True)
class RenyiEvent:
    """``steps`` releases of a mechanism with a known Renyi DP curve at integer orders, unsampled.

    Attributes
    ----------
    orders : tuple of int
        Integer orders ``alpha > 1``.
    rdp : tuple of float
        ``epsilon(alpha)`` of one release at each order (finite, >= 0).
    steps : int
        Number of releases (composed by adding the curves).
    sample_rate : float
        Rate at which a client takes part; the curve is not amplified, so a
        ledger accounts it as 1 (conservative) and says so.
    mechanism : str
        Name for logs and reports.

    Examples
    --------
    >>> RenyiEvent(orders=(2, 3), rdp=(0.1, 0.15), mechanism="skellam").steps
    1
    """

    orders: tuple[int, ...]
    rdp: tuple[float, ...]
    steps: int = 1
    sample_rate: float = 1.0
    mechanism: str = "renyi"

    def __post_init__(self) -> None:
        if len(self.orders) == 0 or len(self.orders) != len(self.rdp):
            raise PrivacyConfigError(
                f"a Renyi event needs one rdp value per order, got {len(self.orders)} orders and {len(self.rdp)} values"
            )
        if any(not isinstance(a, int) or a < 2 for a in self.orders):
            raise PrivacyConfigError(f"Renyi orders must be integers >= 2, got {self.orders!r}")
        if any(not math.isfinite(r) or r < 0 for r in self.rdp):
            raise PrivacyConfigError(f"Renyi values must be finite and >= 0, got {self.rdp!r}")
        if not isinstance(self.sample_rate, int | float) or not 0.0 < self.sample_rate <= 1.0:
            raise PrivacyConfigError(f"sample_rate must lie in (0, 1], got {self.sample_rate!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise PrivacyConfigError(f"steps must be an int >= 1, got {self.steps!r}")


PrivacyEvent = GaussianEvent | PureDPEvent | RenyiEvent
"""Any event a ledger accepts."""
