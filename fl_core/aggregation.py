"""The aggregation plug-in point of the server round.

The server round in :mod:`fl_core.federation` runs, for each round::

    sample -> broadcast -> local train -> update transforms -> aggregator
           -> aggregate transforms -> server optimiser

This module defines the three plug-in types:

* :class:`UpdateTransform` maps the cohort ``(n, d) -> (n, d)`` (client-side
  clipping, local DP noise, Byzantine attacks that replace some rows);
* :class:`Aggregator` maps the cohort to one ``(d,)`` aggregate and says what
  it decided (:class:`AggregationResult`): robust rules (``defenses``) and
  secure aggregation protocols (``secure_agg``) implement it;
* :class:`AggregateTransform` maps the aggregate ``(d,) -> (d,)`` (server-side
  DP noise).

Each receives a :class:`RoundContext` with the round's explicit random
generator, so that the same seed gives the same history.

Examples
--------
>>> import torch
>>> from fl_core.aggregation import WeightedMean
>>> WeightedMean().aggregate(torch.tensor([[0.0, 2.0], [2.0, 4.0]]), torch.tensor([1.0, 3.0])).aggregate
tensor([1.5000, 3.5000])
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from fl_core.contracts import StageContract
from fl_core.numerics import combine
from fl_core.updates import check_cohort, check_weights

__all__ = [
    "AggregateTransform",
    "AggregationResult",
    "Aggregator",
    "RoundContext",
    "StageOutput",
    "UpdateTransform",
    "WeightedMean",
]


@dataclass(frozen=True)
class RoundContext:
    """What a plug-in may know about the current round.

    Attributes
    ----------
    round_idx : int
        Zero-based round number.
    client_ids : tuple of int
        Ids of the sampled clients, in the row order of the cohort.
    weights : torch.Tensor
        ``(n,)`` example counts of the sampled clients.
    global_params : torch.Tensor
        ``(d,)`` flat global parameters broadcast this round.
    generator : torch.Generator
        Explicit generator of this stage in this round (on CPU); each stage of a
        :class:`~fl_core.pipeline.Pipeline` gets its own.
    bound : float or None
        An L2 bound every row of the cohort satisfies, as reported by the latest
        bounding client transform (a clip); ``None`` when the rows are unbounded.
    sensitivity : float or None
        For server-side transforms: the L2 sensitivity of the aggregate they receive
        (one client added or removed), from :meth:`Aggregator.sensitivity` and
        ``bound``; ``None`` when it is unknown.
    """

    round_idx: int
    client_ids: tuple[int, ...]
    weights: torch.Tensor
    global_params: torch.Tensor
    generator: torch.Generator
    bound: float | None = None
    sensitivity: float | None = None


@dataclass(frozen=True)
class StageOutput:
    """What a stage returns from ``apply``: its output and what it knows about it.

    Stages that have facts to report (a clip's bound, a noise's standard
    deviation) implement ``apply(x, ctx) -> StageOutput``; their ``__call__``
    returns ``apply(...).value``. These are return values, not attributes read
    after the call: the pipeline threads ``bound`` to the later stages and merges
    ``metrics`` into the round's record.

    Attributes
    ----------
    value : torch.Tensor
        The cohort ``(n, d)`` (client transforms) or the aggregate ``(d,)`` (server transforms).
    bound : float or None
        Client transforms: an L2 bound every output row satisfies (``None``: none known).
    metrics : dict of str to float
        Scalar facts of this call for the round history.
    """

    value: torch.Tensor
    bound: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class AggregationResult:
    """The aggregate and what the aggregator decided.

    Attributes
    ----------
    aggregate : torch.Tensor
        ``(d,)`` aggregated update.
    kept : torch.Tensor
        ``(n,)`` bool mask of the rows that entered the aggregate (all ``True``
        for rules that select nobody out).
    scores : torch.Tensor or None
        ``(n,)`` per-client scores where the rule has them (e.g. Krum scores,
        trust scores); ``None`` otherwise.
    metrics : dict of str to float
        Scalar facts recorded in the round history (bytes sent, survivors, ...).
    seen : torch.Tensor or None
        ``(m, d)`` what a secure protocol lets the server see besides the aggregate
        (grouped SecAgg+: each group's mean); ``None`` when it sees nothing more.
    seen_owner : torch.Tensor or None
        ``(n,)`` long: the row of ``seen`` that client ``i`` is part of.
    """

    aggregate: torch.Tensor
    kept: torch.Tensor
    scores: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    seen: torch.Tensor | None = None
    seen_owner: torch.Tensor | None = None

    @property
    def flagged(self) -> torch.Tensor:
        """``(n,)`` bool mask of the rows the rule left out or flagged."""
        return ~self.kept


class Aggregator(abc.ABC):
    """Base class of everything that turns a cohort into one aggregate.

    Subclasses implement :meth:`_aggregate`; :meth:`aggregate` validates the
    input first (shape, dtype, NaN/Inf, weights), so every rule rejects bad
    input the same way. ``__call__`` returns only the aggregate tensor.
    """

    def aggregate(
        self,
        updates: torch.Tensor,
        weights: torch.Tensor | None = None,
        *,
        ctx: RoundContext | None = None,
    ) -> AggregationResult:
        """Validate ``updates`` ``(n, d)`` and ``weights`` ``(n,)`` and aggregate them."""
        check_cohort(updates)
        w = check_weights(weights, updates.shape[0], like=updates)
        return self._aggregate(updates, w, ctx)

    @abc.abstractmethod
    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        """Aggregate validated input; ``weights`` is never ``None`` here."""

    def reset(self) -> None:
        """Forget any state kept across rounds (no-op for stateless rules)."""

    def contract(self) -> StageContract:
        """What this aggregator takes and outputs (:mod:`fl_core.contracts`): real rows, a mean, rows visible."""
        return StageContract()

    def sensitivity(self, bound: float, n: int) -> float | None:
        """L2 sensitivity of the output when every row has norm at most ``bound`` and there are about ``n`` rows.

        Adding or removing one client moves the output by at most this much; server-side
        noise (:class:`~defenses.dp.dp_fedavg.CentralGaussianNoise`) is sized by it. ``None``
        (the default) means no bound is known, and a pipeline with server noise refuses
        the aggregator. An output that always lies in the ball of radius ``R`` has
        sensitivity at most ``2 R``.
        """
        return None

    def check_tolerance(self, n: int) -> None:
        """Raise a :class:`~fl_core.errors.FlsecError` if this aggregator cannot run on cohorts of ``n`` clients.

        Callers that know ``n`` before any work (``Federation`` knows its clients per
        round) call it at construction. The base accepts any ``n >= 1``; robust rules
        check their Byzantine bound (Krum: ``n > 2f + 2``), secure aggregation its
        threshold.
        """

    def __call__(self, updates: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        return self.aggregate(updates, weights).aggregate


class WeightedMean(Aggregator):
    """Weighted mean of the updates: FedAvg's aggregation (McMahan et al., AISTATS 2017).

    ``sum_i w_i u_i / sum_i w_i`` with ``w_i`` the clients' example counts.
    Tolerates no Byzantine client (f = 0).

    Examples
    --------
    >>> import torch
    >>> WeightedMean()(torch.tensor([[1.0], [3.0]]))
    tensor([2.])
    """

    def contract(self) -> StageContract:
        """A mean of the real rows, with a known sensitivity (:meth:`sensitivity`)."""
        return StageContract(bounded=True)

    def sensitivity(self, bound: float, n: int) -> float | None:
        """``2 C``: a weighted mean of rows in the ball of radius ``C`` stays in it, whatever the weights."""
        return 2.0 * bound

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        # normalised in float64 and summed without overflow (fl_core.numerics.combine): the
        # mean of finite rows lies within their range, so it is finite for any finite input
        w = weights.to(torch.float64)
        agg = combine(w / w.sum(), updates)
        kept = torch.ones(updates.shape[0], dtype=torch.bool, device=updates.device)
        return AggregationResult(aggregate=agg, kept=kept)


@runtime_checkable
class UpdateTransform(Protocol):
    """Maps the cohort ``(n, d)`` to a cohort ``(n, d)`` before aggregation.

    A transform that reports facts (a bound, metrics) also has
    ``apply(updates, ctx) -> StageOutput``, which the pipeline calls instead.
    """

    def __call__(self, updates: torch.Tensor, ctx: RoundContext) -> torch.Tensor: ...


@runtime_checkable
class AggregateTransform(Protocol):
    """Maps the aggregate ``(d,)`` to ``(d,)`` before the server optimiser (``apply`` as for client transforms)."""

    def __call__(self, aggregate: torch.Tensor, ctx: RoundContext) -> torch.Tensor: ...


@runtime_checkable
class MetricsReporter(Protocol):
    """A plug-in that reports scalars for the round history (epsilon spent, bytes, ...).

    The federation calls ``round_metrics()`` on every plug-in that has it, after
    the round's aggregation, and merges the results into the round record.
    """

    def round_metrics(self) -> dict[str, float]: ...


def collect_metrics(plugins: Sequence[object]) -> dict[str, float]:
    """Merge ``round_metrics()`` of every plug-in that reports metrics (later ones win on clashes).

    Examples
    --------
    >>> class P:
    ...     def round_metrics(self):
    ...         return {"epsilon": 1.5}
    >>> collect_metrics([P(), object()])
    {'epsilon': 1.5}
    """
    out: dict[str, float] = {}
    for p in plugins:
        if isinstance(p, MetricsReporter):
            out.update({k: float(v) for k, v in p.round_metrics().items()})
    return out
