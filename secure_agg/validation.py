"""Checks of scalar parameters and client weights shared by the SecAgg and HE aggregators.

Python and NumPy scalars are accepted alike (``np.float32(1.0)``, ``np.int64(32)``);
``bool`` is never taken for a number. Every failure raises the caller's error class
(a :class:`~secure_agg.errors.SecAggConfigError`) naming the parameter and the value.

Examples
--------
>>> import numpy as np
>>> real_param(np.float32(0.5), "gamma", low=0.0, high=1.0)
0.5
>>> exact_weights([3, 4.0, np.int64(5)])
[3, 4, 5]
>>> exact_weights([1.5])
Traceback (most recent call last):
...
secure_agg.errors.SecAggConfigError: secure aggregation weights must be integer example counts, got 1.5
"""

from __future__ import annotations

import math

import numpy as np

from fl_core.checks import as_int, as_real
from secure_agg.errors import SecAggConfigError

__all__ = ["ExactWeights", "exact_weights", "flag_param", "int_param", "real_param"]


def real_param(
    value: object,
    name: str,
    *,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    error: type[SecAggConfigError] = SecAggConfigError,
) -> float:
    """``value`` as a finite float in ``[low, high)`` (``(low, high)`` if ``low_open``); see ``fl_core.checks``."""
    return as_real(
        name, value, low=low, high=None if math.isinf(high) else high, low_open=low_open, high_open=True, error=error
    )


def int_param(
    value: object,
    name: str,
    *,
    low: int,
    high: int | None = None,
    error: type[SecAggConfigError] = SecAggConfigError,
) -> int:
    """``value`` as an ``int`` in ``[low, high]`` (NumPy integers accepted, ``bool`` not); see ``fl_core.checks``."""
    return as_int(name, value, minimum=low, maximum=high, error=error)


def flag_param(value: object, name: str, *, error: type[SecAggConfigError] = SecAggConfigError) -> bool:
    """``value`` as a ``bool`` (Python or NumPy)."""
    if not isinstance(value, bool | np.bool_):
        raise error(f"{name} must be a bool, got {value!r}")
    return bool(value)


def exact_weights(
    weights: object, *, error: type[SecAggConfigError] = SecAggConfigError
) -> list[int] | None:
    """The caller's weights as exact non-negative integers (``None`` when none are given).

    Runs on the values as passed, before any cast to the updates' dtype (float32
    turns ``10000000.5`` into ``10000000``).

    Raises
    ------
    SecAggConfigError
        Naming the first weight that is not a non-negative integer.
    """
    import torch  # only for the check below: the validators stay importable without it

    if weights is None:
        return None
    if isinstance(weights, torch.Tensor):
        vals = weights.detach().cpu().reshape(-1).tolist()
    else:
        vals = np.asarray(weights).reshape(-1).tolist()
    out = []
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise error(f"secure aggregation weights must be numbers, got {v!r}")
        if isinstance(v, float) and not (math.isfinite(v) and v.is_integer()):
            raise error(f"secure aggregation weights must be integer example counts, got {v!r}")
        if v < 0:
            raise error(f"secure aggregation weights must be >= 0, got {v!r}")
        out.append(int(v))
    return out


class ExactWeights:
    """Mixin for aggregators over integer rings: the caller's weights, checked as exact integers before any cast.

    ``fl_core``'s :meth:`~fl_core.aggregation.Aggregator.aggregate` casts weights to
    the updates' dtype (float32 rounds ``10000000.5`` to ``10000000``), so this
    ``aggregate`` checks them first, on the values as passed, and
    :meth:`integer_weights` hands the exact integers to ``_aggregate``.
    """

    #: Error class raised for a weight that is not an integer count.
    weights_error: type[SecAggConfigError] = SecAggConfigError
    _exact_weights: list[int] | None = None

    def _wants_exact_weights(self) -> bool:
        return True

    def aggregate(self, updates, weights=None, *, ctx=None):  # type: ignore[no-untyped-def]
        """Check the weights as exact integer example counts, then validate and aggregate.

        Raises
        ------
        SecAggConfigError
            If a weight is not a non-negative integer example count (naming it).
        """
        wanted = self._wants_exact_weights()
        self._exact_weights = exact_weights(weights, error=self.weights_error) if wanted else None
        try:
            return super().aggregate(updates, weights, ctx=ctx)  # type: ignore[misc]
        finally:
            self._exact_weights = None

    def integer_weights(self, weights: object, n: int) -> list[int]:
        """The round's ``n`` weights as integers: the exact ones checked by :meth:`aggregate`, else ``weights``."""
        exact = self._exact_weights
        if exact is None or len(exact) != n:  # called without aggregate(): weights already cast
            exact = exact_weights(weights, error=self.weights_error) or [1] * n
        return list(exact)
