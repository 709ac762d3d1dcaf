"""Validation of scalar hyper-parameters, shared by every flsec package.

Every public constructor validates its numbers with these two functions, so
that the same inputs are accepted everywhere and the error names the value:

* Python and NumPy integers (``np.int64``) are integers; ``bool`` is not.
* Python and NumPy reals (``np.float32``) are reals; ``bool``, strings and
  complex numbers are not. A float with an integral value (``3.0``) is *not*
  an integer: a count of ``2.5`` or ``2.0`` is a mistake worth naming.

Both return plain Python ``int`` / ``float`` so that nothing downstream sees a
NumPy scalar. They raise :class:`~fl_core.errors.ConfigError` (a
``ValueError``), or the subclass passed as ``error``.

Examples
--------
>>> import numpy as np
>>> as_int("f", np.int64(2), minimum=0)
2
>>> as_real("delta", np.float32(0.5), low=0.0, high=1.0)
0.5
>>> as_int("epochs", 1.5, minimum=1)
Traceback (most recent call last):
...
fl_core.errors.ConfigError: epochs must be an int, got 1.5 (float)
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from fl_core.errors import ConfigError

__all__ = ["as_int", "as_real", "is_int", "is_real"]


def is_int(value: Any) -> bool:
    """Whether ``value`` is a Python or NumPy integer (``bool`` excluded)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """Whether ``value`` is a Python or NumPy real number (``bool`` excluded)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def as_int(
    name: str,
    value: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    error: type[ValueError] = ConfigError,
) -> int:
    """Return ``value`` as an ``int`` if it is an integer in ``[minimum, maximum]``.

    Raises
    ------
    ConfigError
        (or ``error``) naming ``name`` and the value.

    Examples
    --------
    >>> as_int("k", 3, minimum=1, maximum=5)
    3
    """
    if not is_int(value):
        raise error(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    v = int(value)
    if minimum is not None and v < minimum:
        raise error(f"{name} must be >= {minimum}, got {name}={v}")
    if maximum is not None and v > maximum:
        raise error(f"{name} must be <= {maximum}, got {name}={v}")
    return v


def as_real(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allow_inf: bool = False,
    error: type[ValueError] = ConfigError,
) -> float:
    """Return ``value`` as a ``float`` if it is a real number within the given bounds.

    NaN is always refused; infinities only with ``allow_inf``. ``low_open`` /
    ``high_open`` make the bounds strict.

    Raises
    ------
    ConfigError
        (or ``error``) naming ``name``, the value and the bound it breaks.

    Examples
    --------
    >>> as_real("lr", 0.1, low=0.0, low_open=True)
    0.1
    >>> as_real("lr", float("inf"), low=0.0)
    Traceback (most recent call last):
    ...
    fl_core.errors.ConfigError: lr must be finite, got lr=inf
    """
    if not is_real(value):
        raise error(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    v = float(value)
    if math.isnan(v):
        raise error(f"{name} must be a number, got {name}=nan")
    if math.isinf(v) and not allow_inf:
        raise error(f"{name} must be finite, got {name}={v}")
    if low is not None and (v < low or (low_open and v == low)):
        raise error(f"{name} must be {'>' if low_open else '>='} {low}, got {name}={v}")
    if high is not None and (v > high or (high_open and v == high)):
        raise error(f"{name} must be {'<' if high_open else '<='} {high}, got {name}={v}")
    return v
