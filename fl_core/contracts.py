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
  calibrated for; any other is refused (server DP noise sized for a mean is too
  small for Krum's larger sensitivity).

Examples
--------
>>> check_round(update_transforms=[], aggregator=None, aggregate_transforms=[])
>>> contract_of(object())
StageContract(rows='real', accepts=('real',), output='mean', hides_rows=False, needs_output=None)
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
    for t in update_transforms:
        c = contract_of(t)
        if c.rows != rows:
            rows, source = c.rows, _name(t)
    if rows not in agg.accepts:
        raise CompositionError(
            f"{_name(aggregator)} cannot aggregate the rows {source} produces ({rows!r}; it takes {agg.accepts}): "
            + ("modular integers need an exact modular sum (ModularSum, or SecAgg with integer_input=True)"
               if rows == "modular" else "give it real-valued updates")
        )
    for t in aggregate_transforms:
        need = contract_of(t).needs_output
        if need is not None and agg.output not in need:
            raise CompositionError(
                f"{_name(t)} is calibrated for an aggregate of kind {need}, but {_name(aggregator)} outputs "
                f"{agg.output!r}: its sensitivity differs, so the result would be wrong (or under-noised)"
            )
