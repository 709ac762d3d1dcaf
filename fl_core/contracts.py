"""What each stage of a round needs and produces, and the check that refuses combinations that cannot work.

A round chains client-side transforms, an aggregator and server-side transforms
(:mod:`fl_core.federation`). Some chains run without any error and give wrong
results: a pre-aggregator that mixes plaintext rows before a secure sum, a robust
rule fed integers modulo ``2^b`` meant for a secure sum, server noise sized for a
fixed-denominator mean after a rule whose sensitivity is far larger. Each stage
therefore declares a :class:`StageContract` and :func:`check_round` refuses a
chain whose contracts do not fit, naming both stages and why.

* ``rows`` (client transforms): what the rows are after the transform, ``"real"``
  (float updates) or ``"modular"`` (integers modulo ``2^b`` for a secure sum).
* ``accepts`` (aggregators): the kinds of rows the aggregator can aggregate.
* ``output`` (aggregators): ``"mean"``, ``"fixed_denominator_mean"``,
  ``"robust"`` (a selection or robust statistic of the rows), ``"modular_sum"``.
* ``hides_rows`` (aggregators): the rows are hidden from the server (SecAgg,
  HE); nothing on the server may read them before.
* ``needs_output`` (server transforms): the aggregator outputs the transform is
  made for; any other is refused (a modular-sum decoder after a robust rule).
* ``bounds_rows`` (client transforms): after it every row has an L2 norm at most a
  bound it reports (a clip); a later transform that does not declare it (an
  attack, local noise) loses the bound.
* ``bounded`` (aggregators): the output's L2 sensitivity is finite given a bound on
  the rows (``Aggregator.sensitivity``): a mean ``2C``, a fixed-denominator mean
  ``C / (qW)``, Krum ``2C``, a coordinate-wise median ``2C sqrt(n)``.
* ``needs_sensitivity`` (server transforms): the transform is sized by the
  aggregate's sensitivity (server DP noise), so the rows must be bounded when the
  aggregator runs and the aggregator ``bounded``; otherwise the noise could not be
  calibrated and the chain is refused.

Examples
--------
>>> check_round(update_transforms=[], aggregator=None, aggregate_transforms=[])
>>> contract_of(object()).hides_rows, contract_of(object()).output
(False, 'mean')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fl_core.errors import ConfigError

__all__ = ["CompositionError", "StageContract", "check_round", "contract_of"]


class CompositionError(ConfigError):
    """Two stages of a round cannot work together; the message names both and why."""


@dataclass(frozen=True)
class StageContract:
    """The contract of one stage (see the module docstring for each field)."""

    rows: str = "real"
    accepts: tuple[str, ...] = ("real",)
    output: str = "mean"
    hides_rows: bool = False
    needs_output: tuple[str, ...] | None = None
    bounds_rows: bool = False
    bounded: bool = False
    needs_sensitivity: bool = False


def contract_of(stage: object) -> StageContract:
    """The stage's declared contract (``stage.contract()``), or the default of a plain float stage."""
    declared = getattr(stage, "contract", None)
    return declared() if callable(declared) else StageContract()


def _name(stage: object) -> str:
    return getattr(stage, "label", None) or type(stage).__name__


def check_round(
    *, update_transforms: Sequence[object], aggregator: object | None, aggregate_transforms: Sequence[object]
) -> None:
    """Raise :class:`CompositionError` if the chain of stages cannot work; ``aggregator=None`` checks nothing.

    Raises
    ------
    CompositionError
        Naming the two stages that do not fit and why.
    """
    if aggregator is None:
        return
    agg = contract_of(aggregator)
    rows, source = "real", "the clients' updates"
    bounded_by: str | None = None  # the clip whose bound still holds when the aggregator runs
    unbounded_by = "no client transform bounds the rows"
    for t in update_transforms:
        c = contract_of(t)
        if c.rows != rows:
            rows, source = c.rows, _name(t)
        if c.bounds_rows:
            bounded_by = _name(t)
        else:
            bounded_by, unbounded_by = None, f"{_name(t)} runs after any clip and does not bound the rows"
    if rows not in agg.accepts:
        raise CompositionError(
            f"{_name(aggregator)} cannot aggregate the rows {source} produces ({rows!r}; it takes {agg.accepts}): "
            + ("modular integers need an exact modular sum (ModularSum, or SecAgg with integer_input=True)"
               if rows == "modular" else "give it real-valued updates")
        )
    for t in aggregate_transforms:
        c = contract_of(t)
        if c.needs_output is not None and agg.output not in c.needs_output:
            raise CompositionError(
                f"{_name(t)} is calibrated for an aggregate of kind {c.needs_output}, but {_name(aggregator)} "
                f"outputs {agg.output!r}, so the result would be wrong"
            )
        if c.needs_sensitivity:
            _check_sensitivity(t, aggregator, agg, bounded_by, unbounded_by)


def _check_sensitivity(
    transform: object, aggregator: object, agg: StageContract, bounded_by: str | None, unbounded_by: str
) -> None:
    """Server noise needs bounded rows and an aggregator whose sensitivity follows from the bound."""
    if bounded_by is None:
        raise CompositionError(
            f"{_name(transform)} is sized by the aggregate's sensitivity, but the rows reaching "
            f"{_name(aggregator)} are unbounded ({unbounded_by}): clip them last, after any attack or noise"
        )
    if not agg.bounded:
        raise CompositionError(
            f"{_name(transform)} is sized by the aggregate's sensitivity, but {_name(aggregator)} declares none "
            f"(its output can move arbitrarily far when one client changes), so the noise cannot be calibrated"
        )
