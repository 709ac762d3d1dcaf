"""Shared base of the robust rules and pre-aggregators.

:class:`RobustAggregator` extends :class:`fl_core.aggregation.Aggregator` with

* the keyword-only Byzantine count ``f`` (validated at construction);
* a tolerance check run at call time, when ``n`` is known, raising
  :class:`~fl_core.errors.ToleranceError` naming the bound, ``n`` and ``f``;
* the three input forms of :mod:`defenses.robust.formats`: ``rule(updates,
  weights=None)`` returns the aggregate in the form it was given, and
  :meth:`RobustAggregator.aggregate` (what the fl_core federation loop calls)
  returns the full :class:`~fl_core.aggregation.AggregationResult`;
* ``aggregate(...)`` returns the :class:`~fl_core.aggregation.AggregationResult` of the
  latest call, so callers of the form-preserving ``__call__`` can still read
  which clients were kept or flagged.

:class:`PreAggregator` is the base of the ``(n, d) -> (m, d)`` maps (NNM,
bucketing, ARC) that :class:`defenses.robust.compose.Compose` chains in front
of a rule.

Examples
--------
>>> import numpy as np
>>> from defenses.robust import Median
>>> Median(f=1)(np.array([[0.0], [1.0], [100.0]]))
array([1.])
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from defenses.robust.errors import MissingGeneratorError
from defenses.robust.formats import UpdatesLike, from_cohort, from_vector, to_cohort
from fl_core.aggregation import AggregationResult, Aggregator, RoundContext
from fl_core.checks import as_int, is_real
from fl_core.contracts import StageContract
from fl_core.errors import ConfigError, ToleranceError
from fl_core.updates import check_cohort, check_weights

__all__ = [
    "PreAggregation",
    "PreAggregator",
    "RobustAggregator",
    "all_kept",
    "check_count",
    "check_positive",
    "is_real",
    "require",
    "resolve_generator",
    "validate_cohort",
]


def validate_cohort(cohort: torch.Tensor) -> torch.Tensor:
    """:func:`fl_core.updates.check_cohort`: shape, dtype and finiteness in one or two reductions.

    A cohort with a valid Byzantine row of ``1e38`` (whose total overflows) is
    accepted (:func:`~fl_core.numerics.all_finite`); anything non-finite raises
    the precise :class:`~fl_core.errors.InvalidUpdateError`.

    Examples
    --------
    >>> import torch
    >>> validate_cohort(torch.ones(2, 3)).shape
    torch.Size([2, 3])
    >>> validate_cohort(torch.full((2, 3), 3e38)).shape
    torch.Size([2, 3])
    """
    return check_cohort(cohort)


def check_count(name: str, value: Any, *, minimum: int = 0) -> int:
    """Validate an integer hyper-parameter (``f``, ``m``, ``L``, ...) and return it.

    Python and NumPy integers are accepted (a count read from a NumPy array,
    ``np.int64(2)``) and returned as a Python ``int``.

    Raises
    ------
    ConfigError
        If ``value`` is not an integer (``bool`` and ``numpy.bool_`` excluded)
        or is below ``minimum``.

    Examples
    --------
    >>> import numpy as np
    >>> check_count("f", 2), check_count("f", np.int64(2))
    (2, 2)
    >>> type(check_count("f", np.int32(1)))
    <class 'int'>
    """
    return as_int(name, value, minimum=minimum)


def check_positive(name: str, value: Any, *, allow_inf: bool = False) -> float:
    """Validate a positive real hyper-parameter (``tau``, ``M``, ``lambda``...) and return it.

    Python and NumPy real scalars are accepted (``np.float32(0.5)``) and
    returned as a Python ``float``.

    Raises
    ------
    ConfigError
        If ``value`` is not a real number (``bool`` excluded), is NaN, is not
        positive, or is infinite while ``allow_inf`` is false.

    Examples
    --------
    >>> import numpy as np
    >>> check_positive("tau", 1), check_positive("tau", np.float32(0.5))
    (1.0, 0.5)
    """
    if not is_real(value):
        raise ConfigError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    v = float(value)
    if math.isnan(v) or v <= 0 or (math.isinf(v) and not allow_inf):
        bound = "a positive number" if allow_inf else "a finite positive number"
        raise ConfigError(f"{name} must be {bound}, got {name}={value!r}")
    return v


def require(condition: bool, message: str) -> None:
    """Raise :class:`~fl_core.errors.ToleranceError` with ``message`` unless ``condition``."""
    if not condition:
        raise ToleranceError(message)


def all_kept(n: int, device: torch.device) -> torch.Tensor:
    """An ``(n,)`` all-``True`` mask: the rule left nobody out."""
    return torch.ones(n, dtype=torch.bool, device=device)


def resolve_generator(own: torch.Generator | None, ctx: RoundContext | None, who: str) -> torch.Generator:
    """The generator a randomised rule uses: ``ctx.generator`` if given, else its own.

    Raises
    ------
    MissingGeneratorError
        If neither is available (flsec never falls back to a global RNG).
    """
    if ctx is not None and ctx.generator is not None:
        return ctx.generator
    if own is not None:
        return own
    raise MissingGeneratorError(
        f"{who} is randomised and needs an explicit generator: pass generator=torch.Generator()"
        ".manual_seed(seed) to its constructor, or call aggregate(..., ctx=RoundContext(...))"
    )


class RobustAggregator(Aggregator):
    """Base class of every robust rule in :mod:`defenses.robust`.

    Subclasses implement ``_aggregate(updates, weights, ctx)`` on a validated
    ``(n, d)`` tensor and override :meth:`check_tolerance` with their bound.
    Most robust rules are unweighted in their papers (a Byzantine client could
    inflate a reported example count); they still validate the weights they are
    given.

    Parameters
    ----------
    f : int
        Number of Byzantine clients the rule must tolerate (keyword-only).
    """

    #: Where the output lies relative to the rows, which gives its sensitivity (:meth:`sensitivity`):
    #: ``"hull"`` in their convex hull (a selection, a mean of a selection, the geometric median),
    #: ``"coordinates"`` each coordinate within the rows' range (median, trimmed mean), ``None`` unknown.
    OUTPUT_REGION: ClassVar[str | None] = None

    def contract(self) -> StageContract:
        """Robust rules read the plaintext rows and output a robust statistic (not a mean, other sensitivity)."""
        return StageContract(output="robust", bounded=self.OUTPUT_REGION is not None)

    def sensitivity(self, bound: float, n: int) -> float | None:
        """``2R`` for an output always inside the ball of radius ``R`` (adding or removing a client moves it
        at most across that ball): in the rows' hull, or in the ball of the rows' norm bound (``"ball"``:
        RLR, SignGuard), ``R = C``; coordinate-wise within their range
        ``R = sqrt(sum_j max_i u_ij^2) <= C sqrt(n)``; ``None`` where the rule declares no region."""
        if self.OUTPUT_REGION in ("hull", "ball"):
            return 2.0 * bound
        if self.OUTPUT_REGION == "coordinates":
            return 2.0 * bound * math.sqrt(n)
        return None

    def __init__(self, *, f: int = 0) -> None:
        self.f = check_count("f", f)

    @property
    def label(self) -> str:
        """Name used in error messages."""
        return type(self).__name__

    def check_tolerance(self, n: int) -> None:
        """Raise :class:`~fl_core.errors.ToleranceError` if ``f`` is intolerable for ``n``.

        The base bound is one honest client at least (``n > f``).
        """
        require(n > self.f, f"{self.label} needs n > f, got n={n}, f={self.f}")

    def aggregate(
        self,
        updates: UpdatesLike,
        weights: Any = None,
        *,
        ctx: RoundContext | None = None,
    ) -> AggregationResult:
        """Validate the cohort, check the tolerance bound and aggregate.

        Parameters
        ----------
        updates : torch.Tensor, numpy.ndarray or list
            ``(n, d)`` cohort in any form of :mod:`defenses.robust.formats`.
        weights : array-like, optional
            ``(n,)`` non-negative finite weights (example counts); ``None`` for equal.
        ctx : RoundContext, optional
            The round's context (client ids, generator) when called by fl_core.

        Returns
        -------
        AggregationResult
            Torch tensors, whatever the input form.
        """
        cohort, _ = to_cohort(updates)
        validate_cohort(cohort)
        n = cohort.shape[0]
        w = check_weights(weights, n, like=cohort)
        self.check_tolerance(n)
        return self._aggregate(cohort, w, ctx)

    def __call__(  # type: ignore[override]
        self, updates: UpdatesLike, weights: Any = None, *, ctx: RoundContext | None = None
    ) -> Any:
        """Aggregate and return the ``(d,)`` result in the form ``updates`` came in."""
        cohort, spec = to_cohort(updates)
        return from_vector(self.aggregate(cohort, weights, ctx=ctx).aggregate, spec)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(f={self.f})"


@dataclass(frozen=True)
class PreAggregation:
    """Output of a pre-aggregator.

    Attributes
    ----------
    updates : torch.Tensor
        ``(m, d)`` transformed cohort.
    weights : torch.Tensor
        ``(m,)`` weights of the output rows.
    owner : torch.Tensor
        ``(n,)`` long tensor: the output row that represents input client ``i``
        (used to map a rule's kept mask and scores back to clients).
    """

    updates: torch.Tensor
    weights: torch.Tensor
    owner: torch.Tensor


class PreAggregator(abc.ABC):
    """Base of the maps ``(n, d) -> (m, d)`` applied before a robust rule.

    ``transform`` validates and returns a :class:`PreAggregation`;
    ``pre(updates)`` returns only the transformed cohort in the input's form.
    """

    #: Whether every output row lies in the ball of the input rows' largest norm (a mean of input
    #: rows, or a row scaled down): the rule after it keeps its sensitivity.
    KEEPS_BALL: ClassVar[bool] = False

    def __init__(self, *, f: int = 0) -> None:
        self.f = check_count("f", f)

    @property
    def label(self) -> str:
        """Name used in error messages."""
        return type(self).__name__

    def check_tolerance(self, n: int) -> None:
        """Raise :class:`~fl_core.errors.ToleranceError` if ``f`` is intolerable for ``n``."""
        require(n > self.f, f"{self.label} needs n > f, got n={n}, f={self.f}")

    def transform(
        self, updates: UpdatesLike, weights: Any = None, *, ctx: RoundContext | None = None
    ) -> PreAggregation:
        """Validate the cohort and weights, check the bound and transform."""
        cohort, _ = to_cohort(updates)
        validate_cohort(cohort)
        n = cohort.shape[0]
        w = check_weights(weights, n, like=cohort)
        self.check_tolerance(n)
        return self._transform(cohort, w, ctx)

    @abc.abstractmethod
    def _transform(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> PreAggregation:
        """Transform validated input."""

    def reset(self) -> None:
        """Forget state kept across rounds (none by default)."""

    def __call__(self, updates: UpdatesLike, weights: Any = None, *, ctx: RoundContext | None = None) -> Any:
        """Return the ``(m, d)`` transformed cohort in the form ``updates`` came in."""
        cohort, spec = to_cohort(updates)
        return from_cohort(self.transform(cohort, weights, ctx=ctx).updates, spec)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(f={self.f})"
