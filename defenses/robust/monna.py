"""MoNNA: the mean of the n - f nearest neighbours of a trusted pivot (Farhadkhani et al., ICML 2023).

Examples
--------
>>> import torch
>>> MoNNA(f=1, pivot_id=0)(torch.tensor([[0.0], [1.0], [2.0], [50.0]]))
tensor([1.])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from defenses.robust.base import RobustAggregator, check_count, require
from defenses.robust.formats import to_vector
from defenses.robust.registry import register
from fl_core.aggregation import AggregationResult, RoundContext
from fl_core.errors import ConfigError
from fl_core.numerics import WIDE, combine, row_norms
from fl_core.updates import check_update

__all__ = ["MissingPivotError", "MoNNA", "nearest_to"]

PivotFn = Callable[[RoundContext | None], Any]


class MissingPivotError(ConfigError):
    """MoNNA has no trusted pivot: no ``pivot_id`` in the cohort, no ``server_update`` and no ``set_pivot``."""


def nearest_to(updates: torch.Tensor, pivot: torch.Tensor, k: int) -> torch.Tensor:
    """``(n,)`` mask of the ``k`` rows nearest to ``pivot`` (Euclidean; ties to the lower row index).

    Distances are :func:`~fl_core.numerics.row_norms` about the pivot, float64
    and exact in range for any finite input.

    Examples
    --------
    >>> import torch
    >>> nearest_to(torch.tensor([[0.0], [3.0], [-1.0]]), torch.tensor([0.5]), 2).tolist()
    [True, False, True]
    """
    dist = row_norms(updates, pivot)
    chosen = torch.argsort(dist, stable=True)[:k]
    kept = torch.zeros(updates.shape[0], dtype=torch.bool, device=updates.device)
    kept[chosen] = True
    return kept


@register(
    "monna",
    kind="rule",
    description="mean of the n-f nearest neighbours of a trusted pivot (Farhadkhani et al. 2023); n > 2f",
)
class MoNNA(RobustAggregator):
    """MoNNA (mean of nearest neighbours): average the ``n - f`` updates nearest to a trusted pivot.

    Farhadkhani, Guerraoui, Gupta, Hoang, Pinot, Stephan, "Robust Collaborative
    Learning with Linear Gradient Overhead", ICML 2023 (byzfl's ``MoNNA``). In
    the paper each honest node ``i`` aggregates its neighbours' vectors as::

        MoNNA_i(x_1, ..., x_n) = (1 / (n - f)) sum_{j in N_i} x_j

    where ``N_i`` is the set of the ``n - f`` vectors nearest to ``x_i``, the
    node's *own* vector (it knows it is correct). A server has no vector of its
    own among the clients', so the pivot is what the server trusts, one of:

    * ``pivot_id``: the id of a trusted client (``ctx.client_ids`` inside
      fl_core, else the row index); its own row is among its nearest neighbours;
    * ``server_update=fn`` with ``fn(ctx) -> p`` (as :class:`~defenses.robust.FLTrust`'s
      root-dataset update), or :meth:`set_pivot` before the call: a vector the
      server computed itself, not one of the rows.

    Ties at the ``(n - f)``-th distance go to the lower row index. ``f = 0``
    is the mean. Unweighted, as in the paper.

    Guarantee used in the tests: with an honest pivot ``p`` and at most ``f``
    Byzantine rows, the ``n - f`` honest rows all lie within
    ``R = max_honest ||x_i - p||`` of it, so every row averaged, and the
    aggregate, lies in the ball of radius ``R`` about ``p`` whatever the
    Byzantine rows hold (``3e38`` included).

    Parameters
    ----------
    f : int
        Byzantine clients to tolerate; needs ``n > 2f``.
    pivot_id : int, optional
        Client id of the trusted pivot.
    server_update : callable, optional
        ``fn(ctx) -> p``, the server's own pivot vector.

    Raises
    ------
    MissingPivotError
        No pivot at call time, or ``pivot_id`` not in the cohort.

    Examples
    --------
    >>> import numpy as np
    >>> rule = MoNNA(f=1, server_update=lambda ctx: np.array([0.0, 0.0]))
    >>> rule(np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [9.0, 9.0]])).tolist()
    [0.0, 0.3333333333333333]
    """

    OUTPUT_REGION = "hull"

    def __init__(self, *, f: int = 0, pivot_id: int | None = None, server_update: PivotFn | None = None) -> None:
        super().__init__(f=f)
        if pivot_id is not None and server_update is not None:
            raise ConfigError(
                "MoNNA takes one pivot: pivot_id (a trusted client) or server_update (a vector), not both"
            )
        if server_update is not None and not callable(server_update):
            raise ConfigError(
                f"server_update must be a callable ctx -> pivot, got {type(server_update).__name__}; "
                "use set_pivot(p) to give a fixed vector"
            )
        self.pivot_id = None if pivot_id is None else check_count("pivot_id", pivot_id)
        self.server_update = server_update
        self._pivot: torch.Tensor | None = None

    def set_pivot(self, pivot: Any) -> None:
        """Set the trusted pivot vector ``p`` used by the next calls (until :meth:`reset`)."""
        if self.pivot_id is not None or self.server_update is not None:
            raise ConfigError("MoNNA was built with pivot_id or server_update; do not also call set_pivot()")
        self._pivot = check_update(to_vector(pivot, name="MoNNA pivot"), name="MoNNA pivot")

    def reset(self) -> None:
        """Forget a pivot given by :meth:`set_pivot`."""
        self._pivot = None

    def check_tolerance(self, n: int) -> None:
        require(n > 2 * self.f, f"MoNNA needs n > 2f, got n={n}, f={self.f}")

    def _pivot_of(self, updates: torch.Tensor, ctx: RoundContext | None) -> torch.Tensor:
        n, d = updates.shape
        if self.pivot_id is not None:
            ids = list(ctx.client_ids) if ctx is not None else list(range(n))
            if self.pivot_id not in ids:
                raise MissingPivotError(
                    f"MoNNA's trusted client pivot_id={self.pivot_id} is not in this cohort "
                    f"({'client ids ' + str(ids) if ctx is not None else f'rows 0..{n - 1}'})"
                )
            return updates[ids.index(self.pivot_id)]
        if self.server_update is not None:
            pivot = to_vector(self.server_update(ctx), d=d, name="MoNNA pivot")
        elif self._pivot is not None:
            pivot = self._pivot
        else:
            raise MissingPivotError(
                "MoNNA needs a trusted pivot: MoNNA(pivot_id=...) for a trusted client, "
                "MoNNA(server_update=fn) or set_pivot(p) for the server's own vector"
            )
        check_update(pivot, d=d, name="MoNNA pivot")
        return pivot.to(device=updates.device, dtype=updates.dtype)

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        n = updates.shape[0]
        pivot = self._pivot_of(updates, ctx)
        kept = nearest_to(updates, pivot, n - self.f)
        agg = combine(kept.to(WIDE) / (n - self.f), updates)
        return AggregationResult(aggregate=agg, kept=kept, scores=row_norms(updates, pivot))

    def __repr__(self) -> str:
        return f"MoNNA(f={self.f}, pivot_id={self.pivot_id})"
