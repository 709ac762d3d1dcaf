"""Centered clipping (Karimireddy, He, Jaggi, ICML 2021).

Examples
--------
>>> import torch
>>> cc = CenteredClipping(tau=1.0)
>>> cc(torch.tensor([[0.5], [0.5], [100.0]]))
tensor([0.6667])
>>> cc.reset()
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from defenses.robust.base import RobustAggregator, all_kept, check_count, check_positive, require
from defenses.robust.errors import StateMismatchError
from defenses.robust.registry import register
from fl_core.aggregation import AggregationResult, RoundContext
from fl_core.geometry import Decision, GeometricRule, Geometry, Needs
from fl_core.numerics import WIDE, combine, row_norms
from fl_core.state import check_state, state_tensor

__all__ = ["CenteredClipping"]


@register(
    "centered_clipping",
    kind="rule",
    description="clip updates around the previous aggregate, L iterations (Karimireddy et al. 2021); stateful; n > 2f",
)
class CenteredClipping(GeometricRule, RobustAggregator):
    """Centered clipping around a reference kept across rounds.

    Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust
    Optimization", ICML 2021. Starting from the reference ``v_0`` (the previous
    round's aggregate; zero in the first round and after :meth:`reset`)::

        v_{l+1} = v_l + (1/n) sum_i (x_i - v_l) min(1, tau / ||x_i - v_l||)

    for ``l = 0..L-1``; the output ``v_L`` becomes the next round's reference.
    Clients are expected to send momentum (as in the paper); the rule itself
    is unweighted. Each client moves the output by at most ``tau / n`` per
    iteration, whatever its magnitude: the distances are float64 and the
    clipped sum is formed without overflow (:mod:`fl_core.numerics`),
    so that bound holds for any finite input.

    Parameters
    ----------
    f : int
        Byzantine clients assumed; the rule needs an honest majority,
        ``n > 2f`` (the paper's analysis needs ``f / n <= 0.1`` or so).
    tau : float
        Clipping radius ``tau > 0`` (``float('inf')`` gives the mean).
    L : int
        Clipping iterations per round (the paper uses 1).

    Notes
    -----
    ``scores`` are the distances ``||x_i - v_0||`` to the reference;
    ``metrics['clipped']`` counts the updates clipped in the first iteration.

    Examples
    --------
    >>> import numpy as np
    >>> CenteredClipping(tau=float("inf"))(np.array([[1.0], [3.0]]))
    array([2.])

    The reference survives a restart through :meth:`state_dict` / :meth:`load_state_dict`:

    >>> cc = CenteredClipping(tau=1.0)
    >>> _ = cc(np.array([[1.0], [3.0]]))
    >>> resumed = CenteredClipping(tau=1.0)
    >>> resumed.load_state_dict(cc.state_dict())
    >>> resumed.reference.tolist()
    [1.0]
    """


    #: Layout version of :meth:`state_dict`.
    STATE_VERSION: ClassVar[int] = 1

    def __init__(self, *, f: int = 0, tau: float = 10.0, L: int = 1) -> None:
        super().__init__(f=f)
        self.tau = check_positive("tau", tau, allow_inf=True)
        self.L = check_count("L", L, minimum=1)
        self._v: torch.Tensor | None = None

    @property
    def reference(self) -> torch.Tensor | None:
        """The current reference ``v_0`` (``None`` before the first round)."""
        return self._v

    def reset(self) -> None:
        """Forget the reference: the next round starts from zero."""
        self._v = None

    def _config(self) -> dict[str, Any]:
        return {"f": self.f, "tau": self.tau, "L": self.L}

    def state_dict(self) -> dict[str, Any]:
        """The reference ``v_0`` (key ``reference``): a clone of the ``(d,)`` tensor, or ``None`` before round 1.

        The rest (kind, version, config) is JSON-serialisable; ``tau = inf``
        is written as JSON's non-standard ``Infinity``.
        """
        return {
            "kind": type(self).__name__,
            "version": self.STATE_VERSION,
            "config": self._config(),
            "reference": None if self._v is None else self._v.detach().clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a reference saved by :meth:`state_dict` of a rule with the same ``f``, ``tau`` and ``L``.

        Raises
        ------
        fl_core.state.StateError
            Another kind, version or configuration, missing or unexpected keys, or a
            reference that is not a finite floating-point ``(d,)`` tensor.
        """
        kind = type(self).__name__
        state = check_state(state, kind=kind, version=self.STATE_VERSION, keys=("reference",),
                            config=self._config())
        self._v = state_tensor(state, "reference", kind=kind, ndim=1, allow_none=True)

    def check_tolerance(self, n: int) -> None:
        require(n > 2 * self.f, f"CenteredClipping needs n > 2f, got n={n}, f={self.f}")

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        n, d = updates.shape
        v = self._reference(d).to(device=updates.device, dtype=updates.dtype)
        scores = None
        clipped = 0.0
        for it in range(self.L):
            diff = updates - v
            norms = row_norms(updates, center=v, diff=diff)
            over = norms > self.tau
            scale = torch.where(over, self.tau / norms, torch.ones_like(norms))
            if it == 0:
                scores = norms
                clipped = float(over.sum())
            # no entry of x_i - v exceeds ||x_i - v||: if every norm fits the dtype, diff did not overflow
            exact_diff = bool((norms <= torch.finfo(updates.dtype).max).all())
            v = v + (combine(scale / n, diff) if exact_diff else combine(scale / n, updates, center=v))
        self._v = v.detach().clone()
        return AggregationResult(
            aggregate=v,
            kept=all_kept(n, updates.device),
            scores=scores,
            metrics={"clipped": clipped},
        )

    def _reference(self, d: int) -> torch.Tensor:
        if self._v is None:
            return torch.zeros(d, dtype=WIDE)
        if self._v.shape[0] != d:
            raise StateMismatchError(
                f"CenteredClipping holds a reference of d={self._v.shape[0]} but got d={d}; call reset() between runs"
            )
        return self._v

    def geometry_needs(self) -> Needs:
        """Distances to ``v_0`` (the references) for ``L = 1``; every inner product for ``L > 1``."""
        return Needs.REFERENCES if self.L == 1 else Needs.GRAM

    def references(self, d: int, ctx: RoundContext | None) -> torch.Tensor:
        """The reference ``v_0`` (the previous aggregate, public to the servers)."""
        return self._reference(d).to(WIDE)[None]

    def decide(self, geometry: Geometry, weights: torch.Tensor, ctx: RoundContext | None) -> Decision:
        """The ``L`` iterations on coefficients over ``[x_1..x_n, v_0]``: ``v_l = c_l @ [X; v_0]``."""
        n = geometry.n
        coef = torch.zeros(n + geometry.r, dtype=WIDE, device=geometry.gram.device)
        coef[n] = 1.0
        sq, scores, clipped = geometry.norms2(), None, 0.0
        for it in range(self.L):
            dots = geometry.dots_with(coef)
            nz = coef != 0
            dist = (sq - 2.0 * dots[:n] + coef[nz] @ dots[nz]).clamp_min(0.0).sqrt()
            over = dist > self.tau
            scale = torch.where(over, self.tau / dist, torch.ones_like(dist)) / n
            if it == 0:
                scores, clipped = dist, float(over.sum())
            coef = coef * (1.0 - scale.sum())
            coef[:n] += scale
        return Decision(coef=coef, kept=all_kept(n, coef.device), scores=scores, metrics={"clipped": clipped})

    def observe(self, aggregate: torch.Tensor) -> None:
        """The opened aggregate is the next round's reference."""
        self._v = aggregate.detach().clone()

    def __repr__(self) -> str:
        return f"CenteredClipping(f={self.f}, tau={self.tau}, L={self.L})"
