"""Optimal ALIE and optimal IPM: the attack's scale chosen by a search against the defense.

byzfl's ``Optimal_ALittleIsEnough`` and ``Optimal_InnerProductManipulation``
(the EPFL Distributed Computing Laboratory's library; used in Allouah et al.,
"Fixing by Mixing: A Recipe for Optimal Byzantine ML under Heterogeneity",
AISTATS 2023) keep the shape of the attack and choose its scale ``s`` to maximise
the damage the defense lets through,

    s* = argmax_{s in [low, high]}  || agg(honest rows, f copies of attack(s)) - mean(honest rows) ||_2 ,

where ``agg`` is the defense itself (an adaptive attack probes a copy of it; the
live aggregator is never touched):

* :class:`OptimalALIE` — ALIE (Baruch, Baruch & Goldberg, NeurIPS 2019) rows
  ``mu - z sigma``, searched over ``z``;
* :class:`OptimalIPM` — IPM (Xie, Koyejo & Gupta, UAI 2019) rows ``-epsilon mu``,
  searched over ``epsilon``.

byzfl searches with an expanding-then-contracting line search from 0 (20
evaluations, unbounded). flsec uses a bounded, deterministic search over a
stated interval (:func:`search_scale`): a uniform grid with both ends, plus the
plain attack's default scale, then golden-section refinement on one grid step
either side of the best grid point; it returns the best scale *evaluated*. So
the result is never worse, against the probed defense, than the plain attack
at its default scale (ALIE's ``z_max``, IPM's ``epsilon = 0.1``) nor than any
grid point.

Examples
--------
Against the plain mean, the distance grows with the scale: the search ends at the top of the interval.

>>> import torch
>>> from attacks.byzantine import AttackView
>>> from fl_core.aggregation import RoundContext, WeightedMean
>>> H = torch.tensor([[1.0, 0.0], [3.0, 2.0], [2.0, 1.0]])
>>> ctx = RoundContext(0, (0, 1, 2, 3), torch.ones(4), torch.zeros(2), torch.Generator())
>>> view = AttackView(own=H[:1], benign=H, n=4, f=1, ctx=ctx, aggregator=WeightedMean())
>>> OptimalIPM(high=4.0).search(view).scale
4.0
"""

from __future__ import annotations

import abc
import inspect
import logging
import math
from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch

from attacks.byzantine import AttackView, ModelPoisoning
from attacks.model_poisoning import ALIE, IPM
from fl_core.errors import ConfigError

__all__ = ["OptimalALIE", "OptimalIPM", "ScaleSearch", "search_scale"]

log = logging.getLogger(__name__)

_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0


class ScaleSearch(NamedTuple):
    """The outcome of :func:`search_scale`: the best ``scale``, its ``distance``, and ``evaluations`` spent."""

    scale: float
    distance: float
    evaluations: int


def check_interval(low: float, high: float, points: int, refine: int) -> None:
    """Raise :class:`~fl_core.errors.ConfigError` naming the value unless ``low < high`` are finite numbers,
    ``points >= 2`` and ``refine >= 0`` are ints."""
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if not low < high:
        raise ConfigError(f"the search interval needs low < high, got low={low}, high={high}")
    if type(points) is not int or points < 2:
        raise ConfigError(f"points must be an int >= 2 (the grid includes both ends), got {points!r}")
    if type(refine) is not int or refine < 0:
        raise ConfigError(f"refine must be an int >= 0, got {refine!r}")


def search_scale(
    objective: Callable[[float], float],
    *,
    low: float,
    high: float,
    points: int = 11,
    refine: int = 12,
    extra: Iterable[float] = (),
) -> ScaleSearch:
    """Maximise ``objective`` over ``[low, high]``: a grid, then golden-section refinement.

    1. Evaluate ``points`` equally spaced values from ``low`` to ``high`` (both
       included) and each value of ``extra`` that lies in the interval.
    2. If ``refine > 0``, run golden-section search for a maximum on
       ``[x - step, x + step]`` (clipped to the interval), ``x`` the best value so
       far and ``step`` the grid spacing: two starting points and ``refine`` steps,
       one evaluation each.

    The best value ever evaluated is returned (the first one, in the order above,
    on ties), so it is at least as good as every grid point and every ``extra``.
    An objective value of ``-inf`` marks an infeasible scale.

    Raises
    ------
    ConfigError
        For an invalid interval, ``points`` or ``refine`` (naming the value), or when
        every evaluated scale is infeasible.

    Examples
    --------
    >>> r = search_scale(lambda s: -(s - 0.3) ** 2, low=0.0, high=1.0, points=5, refine=30)
    >>> round(r.scale, 4), r.evaluations
    (0.3, 37)
    """
    check_interval(low, high, points, refine)
    best_x, best_y, count = low, -math.inf, 0

    def evaluate(x: float) -> float:
        nonlocal best_x, best_y, count
        y = float(objective(x))
        count += 1
        if math.isnan(y):
            raise ConfigError(f"the search objective returned NaN at scale {x}")
        if y > best_y:
            best_x, best_y = x, y
        return y

    step = (high - low) / (points - 1)
    for i in range(points):
        evaluate(high if i == points - 1 else low + i * step)
    for x in extra:
        x = float(x)
        if low <= x <= high:
            evaluate(x)
    if best_y == -math.inf:
        raise ConfigError(f"no feasible scale in [{low}, {high}]: every candidate overflowed")
    if refine:
        a, b = max(low, best_x - step), min(high, best_x + step)
        c, d = b - _INV_PHI * (b - a), a + _INV_PHI * (b - a)
        fc, fd = evaluate(c), evaluate(d)
        for _ in range(refine):
            if fc >= fd:
                b, d, fd = d, c, fc
                c = b - _INV_PHI * (b - a)
                fc = evaluate(c)
            else:
                a, c, fc = c, d, fd
                d = a + _INV_PHI * (b - a)
                fd = evaluate(d)
    return ScaleSearch(best_x, best_y, count)


class _OptimalScale(ModelPoisoning):
    """A scaled attack whose scale maximises the probed defense's distance from the honest mean."""

    needs_aggregator = True
    #: Name of the scale in messages and docs.
    scale_name = "scale"

    def __init__(self, *, low: float, high: float, points: int = 11, refine: int = 12) -> None:
        check_interval(low, high, points, refine)
        self.low, self.high, self.points, self.refine = float(low), float(high), points, refine
        self.last: ScaleSearch | None = None

    @abc.abstractmethod
    def rows(self, benign: torch.Tensor, scale: float) -> torch.Tensor:
        """The ``(d,)`` malicious row at ``scale``, in the dtype of ``benign`` (the plain attack's formula)."""

    @abc.abstractmethod
    def default_scale(self, view: AttackView) -> float | None:
        """The plain attack's default scale for this round (``None`` where it has none)."""

    def distance(self, view: AttackView, scale: float) -> float:
        """``||agg(benign, f x row(scale)) - mean(benign)||_2`` on a copy of the defense; ``-inf`` on overflow.

        The probe cohort is the reference rows followed by the ``f`` crafted rows, with
        equal weights and the round's context (:meth:`AttackView.probe`: FLTrust's root
        update needs the global parameters); the rows' order and the clients' weights are
        the live round's business (flsec's rules do not depend on the order).
        """
        if view.aggregator is None:
            raise ConfigError(f"{type(self).__name__} is adaptive: it needs the defense as aggregator=")
        row = self.rows(view.benign, scale)
        if not bool(torch.isfinite(row).all()):
            return -math.inf
        cohort = torch.cat([view.benign, row.expand(view.f, -1)])
        result = view.probe(cohort)
        honest = view.benign.to(torch.float64).mean(dim=0)
        return float((result.aggregate.to(torch.float64) - honest).norm())

    def search(self, view: AttackView) -> ScaleSearch:
        """The scale of this round (:func:`search_scale` over ``[low, high]`` with the default scale as extra)."""
        default = self.default_scale(view)
        return search_scale(
            lambda s: self.distance(view, s),
            low=self.low,
            high=self.high,
            points=self.points,
            refine=self.refine,
            extra=() if default is None else (default,),
        )

    def craft(self, view: AttackView) -> torch.Tensor:
        if view.benign.shape[0] == 0:
            raise ConfigError(f"{type(self).__name__} needs at least one reference update, got none")
        self.last = found = self.search(view)
        log.debug("%s: %s=%.6g moves the aggregate %.6g from the honest mean (%d evaluations)",
                  type(self).__name__, self.scale_name, found.scale, found.distance, found.evaluations)
        return self.rows(view.benign, found.scale).expand(view.f, -1).clone()


class OptimalALIE(_OptimalScale):
    """ALIE with ``z`` chosen against the defense (byzfl's ``Optimal_ALittleIsEnough``).

    Rows ``mu - z sigma`` exactly as :class:`~attacks.model_poisoning.ALIE` crafts
    them (coordinate-wise mean and population standard deviation of the reference
    rows), with ``z`` maximising the probed defense's distance from the honest mean
    over ``[low, high]`` (:func:`search_scale`; ALIE's ``z_max(n, f)`` is evaluated too
    when defined and inside the interval). The interval is in ALIE's sign convention:
    ``z > 0`` moves against the spread; a negative ``low`` also searches the other side.

    Parameters
    ----------
    low, high : float
        The interval of ``z`` (default ``[0, 10]``; ALIE's ``z_max`` is below 7.1 for
        any cohort of up to 10^12 clients).
    points : int
        Grid points, both ends included (default 11: a step of 1).
    refine : int
        Golden-section steps after the grid (default 12).

    Examples
    --------
    >>> import torch
    >>> from attacks.byzantine import AttackView
    >>> from fl_core.aggregation import RoundContext, WeightedMean
    >>> H = torch.tensor([[0.0, 2.0], [2.0, 2.0], [4.0, 2.0]])
    >>> ctx = RoundContext(0, (0, 1, 2, 3), torch.ones(4), torch.zeros(2), torch.Generator())
    >>> view = AttackView(own=H[:1], benign=H, n=4, f=1, ctx=ctx, aggregator=WeightedMean())
    >>> attack = OptimalALIE(high=3.0)
    >>> row = attack.craft(view)  # mu - 3 sigma, sigma = (sqrt(8/3), 0)
    >>> attack.last.scale, [round(v, 4) for v in row[0].tolist()]
    (3.0, [-2.899, 2.0])
    """

    scale_name = "z"

    def __init__(self, *, low: float = 0.0, high: float = 10.0, points: int = 11, refine: int = 12) -> None:
        super().__init__(low=low, high=high, points=points, refine=refine)

    def rows(self, benign: torch.Tensor, scale: float) -> torch.Tensor:
        mu = benign.mean(dim=0)
        sigma = benign.std(dim=0, unbiased=False)
        return mu - scale * sigma

    def default_scale(self, view: AttackView) -> float | None:
        try:
            return ALIE.z_max(n=view.n, f=view.f)
        except ConfigError:
            return None


class OptimalIPM(_OptimalScale):
    """IPM with ``epsilon`` chosen against the defense (byzfl's ``Optimal_InnerProductManipulation``).

    Rows ``-epsilon mu`` exactly as :class:`~attacks.model_poisoning.IPM` crafts them
    (``mu`` the mean of the reference rows), with ``epsilon`` maximising the probed
    defense's distance from the honest mean over ``[low, high]``
    (:func:`search_scale`; IPM's default ``epsilon = 0.1`` is evaluated too when inside).

    Parameters
    ----------
    low, high : float
        The interval of ``epsilon`` (default ``[0, 10]``: from "send zero" past the
        ``epsilon`` of order 1 to 10 that defeats median-type rules).
    points : int
        Grid points, both ends included (default 11: a step of 1).
    refine : int
        Golden-section steps after the grid (default 12).

    Examples
    --------
    >>> OptimalIPM(low=1.0, high=1.0)
    Traceback (most recent call last):
    ...
    fl_core.errors.ConfigError: the search interval needs low < high, got low=1.0, high=1.0
    """

    scale_name = "epsilon"
    #: IPM's default scale (that of :class:`~attacks.model_poisoning.IPM`, 0.1).
    DEFAULT_EPSILON: float = inspect.signature(IPM).parameters["epsilon"].default

    def __init__(self, *, low: float = 0.0, high: float = 10.0, points: int = 11, refine: int = 12) -> None:
        super().__init__(low=low, high=high, points=points, refine=refine)

    def rows(self, benign: torch.Tensor, scale: float) -> torch.Tensor:
        return -scale * benign.mean(dim=0)

    def default_scale(self, view: AttackView) -> float | None:
        return self.DEFAULT_EPSILON
