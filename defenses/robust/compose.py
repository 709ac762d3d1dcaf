"""Compose pre-aggregators with a rule: ``Compose(NNM(f=2), Krum(f=2))``.

Examples
--------
>>> import torch
>>> from defenses.robust import NNM, Krum
>>> rule = Compose(NNM(f=1), Krum(f=1))
>>> rule
Compose(NNM(f=1), Krum(f=1))
>>> rule(torch.tensor([[0.0], [0.2], [0.4], [0.6], [90.0]]))
tensor([0.3000])
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace

import torch

from defenses.robust.base import PreAggregator, RobustAggregator
from fl_core.aggregation import AggregationResult, Aggregator, RoundContext
from fl_core.contracts import CompositionError, StageContract
from fl_core.errors import ConfigError
from fl_core.geometry import Decision, GeometricMixer, GeometricRule, Geometry, Needs, supports_geometry

__all__ = ["Compose"]


class Compose(GeometricRule, RobustAggregator):
    """Apply pre-aggregators in order, then a rule.

    ``Compose(p_1, ..., p_k, rule)`` runs ``p_1`` on the cohort, ``p_2`` on its
    output, ..., then ``rule`` on the final ``(m, d)`` cohort. Each stage
    checks its own tolerance bound with the number of rows it receives, so a
    rule after :class:`~defenses.robust.preagg.Bucketing` sees ``m`` buckets.

    The result's ``kept`` and ``scores`` are mapped back to the ``n`` input
    clients through each pre-aggregator's ``owner`` map: client ``i`` is kept
    if the row that represents it (its own mixed row for NNM/ARC, its bucket
    for bucketing) was kept by the rule. When a stage changes the number of
    rows, the rule receives a context whose ``client_ids`` are the row indices
    ``0..m-1`` and whose ``weights`` are the rows' weights.

    Parameters
    ----------
    *stages : PreAggregator..., Aggregator
        Zero or more pre-aggregators followed by exactly one aggregator.

    Raises
    ------
    ConfigError
        If the last stage is not an :class:`~fl_core.aggregation.Aggregator`
        or an earlier one is not a :class:`~defenses.robust.base.PreAggregator`.

    Examples
    --------
    >>> import numpy as np
    >>> from defenses.robust import ARC, Mean
    >>> Compose(ARC(f=1), Mean())(np.array([[1.0], [2.0], [100.0]]))
    array([1.66666667])
    """

    def __init__(self, *stages: PreAggregator | Aggregator) -> None:
        if not stages:
            raise ConfigError("Compose needs at least a rule")
        *pre, rule = stages
        if not isinstance(rule, Aggregator):
            raise ConfigError(f"the last stage of Compose must be an Aggregator, got {type(rule).__name__}")
        for i, p in enumerate(pre):
            if not isinstance(p, PreAggregator):
                raise ConfigError(f"stage {i} of Compose must be a PreAggregator, got {type(p).__name__}")
        if pre and rule.contract().hides_rows:
            raise CompositionError(
                f"{type(pre[0]).__name__} reads and mixes the plaintext rows on the server before "
                f"{type(rule).__name__} hides them: the secure aggregation would protect nothing. "
                "Pre-aggregate only before a rule that reads plaintext rows"
            )
        super().__init__(f=getattr(rule, "f", 0))
        self.pre: tuple[PreAggregator, ...] = tuple(pre)
        self.rule: Aggregator = rule

    def contract(self) -> StageContract:
        """The rule's contract; bounded only if every pre-aggregator keeps the rows in their ball."""
        c = self.rule.contract()
        return replace(c, bounded=c.bounded and all(p.KEEPS_BALL for p in self.pre))

    def sensitivity(self, bound: float, n: int) -> float | None:
        """The rule's, on at most ``n`` rows still bounded by ``C`` (``None`` if a pre-aggregator may grow them)."""
        if not all(p.KEEPS_BALL for p in self.pre):
            return None
        return self.rule.sensitivity(bound, n)

    @property
    def label(self) -> str:
        return "+".join(type(s).__name__ for s in (*self.pre, self.rule))

    def check_tolerance(self, n: int) -> None:
        """Each stage checks its own bound when it runs."""

    def reset(self) -> None:
        for p in self.pre:
            p.reset()
        self.rule.reset()

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        n = updates.shape[0]
        owner = torch.arange(n, device=updates.device)
        cohort, w, stage_ctx = updates, weights, ctx
        for p in self.pre:
            out = p.transform(cohort, w, ctx=stage_ctx)
            owner = out.owner[owner]
            if out.updates.shape[0] != cohort.shape[0] and stage_ctx is not None:
                stage_ctx = dataclasses.replace(
                    stage_ctx,
                    client_ids=tuple(range(out.updates.shape[0])),
                    weights=out.weights,
                )
            cohort, w = out.updates, out.weights
        res = self.rule.aggregate(cohort, w, ctx=stage_ctx)
        return AggregationResult(
            aggregate=res.aggregate,
            kept=res.kept[owner],
            scores=None if res.scores is None else res.scores[owner],
            metrics=dict(res.metrics),
        )

    def geometry_supported(self) -> bool:
        """When the rule decides from the geometry and every pre-aggregator mixes by it (NNM)."""
        return supports_geometry(self.rule) and all(isinstance(p, GeometricMixer) for p in self.pre)

    def geometry_needs(self) -> Needs:
        """The most any stage reads."""
        return max([self.rule.geometry_needs(), *(p.geometry_needs() for p in self.pre)])  # type: ignore[attr-defined]

    def references(self, d: int, ctx: RoundContext | None) -> torch.Tensor:
        """The rule's references."""
        return self.rule.references(d, ctx)  # type: ignore[attr-defined]

    def decide(self, geometry: Geometry, weights: torch.Tensor, ctx: RoundContext | None) -> Decision:
        """Mix through each pre-aggregator's matrix ``M`` (the rows' Gram becomes ``M G M^T``), then the rule."""
        if not self.geometry_supported():
            raise CompositionError(f"{self.label} cannot decide from the geometry alone")
        n = geometry.n
        total = torch.eye(n, dtype=torch.float64, device=geometry.gram.device)
        for p in self.pre:
            mix = p.mixing(geometry, weights, ctx)  # type: ignore[attr-defined]
            geometry, total = geometry.mixed(mix), mix @ total
        dec = self.rule.decide(geometry, weights, ctx)  # type: ignore[attr-defined]
        coef = torch.cat([dec.coef[: geometry.n] @ total, dec.coef[geometry.n :]])
        return dataclasses.replace(dec, coef=coef)

    def excluding(self, removed: int) -> Compose:
        """Every stage with ``f`` lowered by ``removed`` (:meth:`fl_core.geometry.GeometricRule.excluding`)."""
        if removed == 0:
            return self
        stages = [s.excluding(removed) for s in (*self.pre, self.rule)]  # type: ignore[attr-defined]
        return Compose(*stages)

    def observe(self, aggregate: torch.Tensor) -> None:
        """Passed on to the rule."""
        self.rule.observe(aggregate)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"Compose({', '.join(repr(s) for s in (*self.pre, self.rule))})"
