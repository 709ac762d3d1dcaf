"""Errors of :mod:`defenses.dp`: bad privacy parameters and exhausted budgets.

Examples
--------
>>> from fl_core.errors import ConfigError
>>> issubclass(PrivacyConfigError, ConfigError) and issubclass(PrivacyBudgetError, ConfigError)
True
"""

from __future__ import annotations

from fl_core.checks import as_real
from fl_core.errors import ConfigError

__all__ = ["PrivacyBudgetError", "PrivacyConfigError", "check_delta", "check_epsilon", "check_positive"]


class PrivacyConfigError(ConfigError):
    """A privacy parameter is out of range (epsilon <= 0, delta outside (0, 1), clip <= 0, ...)."""


class PrivacyBudgetError(ConfigError):
    """A noise multiplier cannot reach the target epsilon over the planned rounds."""


def check_epsilon(epsilon: float, *, name: str = "epsilon") -> float:
    """Return ``epsilon`` as a float if it is finite and > 0, else raise :class:`PrivacyConfigError`."""
    return as_real(name, epsilon, low=0.0, low_open=True, error=PrivacyConfigError)


def check_delta(delta: float, *, name: str = "delta") -> float:
    """Return ``delta`` as a float if it lies in the open interval (0, 1) (NumPy scalars accepted)."""
    return as_real(name, delta, low=0.0, high=1.0, low_open=True, high_open=True, error=PrivacyConfigError)


def check_positive(value: float, *, name: str, allow_zero: bool = False) -> float:
    """Return ``value`` as a float if it is finite and > 0 (or >= 0 with ``allow_zero``)."""
    return as_real(name, value, low=0.0, low_open=not allow_zero, error=PrivacyConfigError)
