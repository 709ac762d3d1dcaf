"""The two-server protocol as a pipeline stage: ``Pipeline(secure=TwoServerAggregator(bound=...), rule=Krum(f=2))``.

Examples
--------
>>> import torch
>>> from fl_core.aggregation import RoundContext
>>> agg = TwoServerAggregator(bound=4.0)
>>> U = torch.tensor([[0.5, -1.0], [1.5, 3.0], [40.0, 0.0]])
>>> res = agg.aggregate(U)
>>> [round(v, 4) for v in res.aggregate.tolist()], res.kept.tolist(), res.metrics["rejected"]
([1.0, 1.0], [True, True, False], 1.0)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from fl_core.aggregation import AggregationResult, Aggregator, RoundContext, WeightedMean
from fl_core.checks import as_int
from fl_core.contracts import StageContract, contract_of
from fl_core.errors import ConfigError
from fl_core.geometry import Decision, GeometricRule, Geometry, Needs, supports_geometry
from fl_core.state import RoundCounterState
from secure_agg.twoserver.params import TwoServerParams
from secure_agg.twoserver.runner import Network, RoundCost, TwoServerRound

__all__ = ["GeometricMean", "TwoServerAggregator"]


class GeometricMean(GeometricRule, WeightedMean):
    """The weighted mean as a geometric rule (norms are read only to validate them); its contract and
    sensitivity are :class:`~fl_core.aggregation.WeightedMean`'s.

    Examples
    --------
    >>> GeometricMean()(torch.tensor([[1.0], [3.0]]))
    tensor([2.])
    """

    def geometry_needs(self) -> Needs:
        return Needs.NORMS

    def __repr__(self) -> str:  # stable: S1 compares its rule with S0's by repr
        return "GeometricMean()"

    def decide(self, geometry: Geometry, weights: torch.Tensor, ctx: RoundContext | None) -> Decision:
        w = weights.to(torch.float64)
        coef = torch.cat([w / w.sum(), torch.zeros(geometry.r, dtype=torch.float64)])
        return Decision(coef=coef, kept=torch.ones(geometry.n, dtype=torch.bool))

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        w = weights.to(torch.float64)
        agg = (w / w.sum()) @ updates.to(torch.float64)
        return AggregationResult(aggregate=agg.to(updates.dtype), kept=torch.ones(updates.shape[0], dtype=torch.bool))


class TwoServerAggregator(RoundCounterState, Aggregator):
    """Two non-colluding servers aggregate secret shares; a robust rule runs on the opened inner products.

    Threat model: the two servers are semi-honest and do not collude; clients are fully
    malicious (any ring vector), but a client cannot lie about its norm, distances or
    cosines, because the servers compute them from its shares after checking that its
    norm is at most ``bound`` (:mod:`secure_agg.twoserver.ring`); a client that does not
    deliver both shares intact is absent. The dealer is semi-honest (see
    :mod:`secure_agg.twoserver.dealer`). What each server learns, per rule, is listed in
    :mod:`secure_agg.twoserver` and the README.

    Parameters
    ----------
    bound : float
        Largest valid L2 norm of an update; clients above it are out of the round.
    rule : Aggregator, optional
        A rule that decides from the geometry (:func:`fl_core.geometry.supports_geometry`):
        norm bounding, Krum, Multi-Krum, FLTrust, centered clipping, FLAME, ``Compose(NNM, ...)``.
        Default: the weighted mean.
    frac_bits : int, optional
        Fixed-point fractional bits (default: the most ``bound`` allows, ``30 - ceil(log2 bound)``).
    seed : int
        Seed of the servers' noise generators when no round context is given.
    rejected_are_byzantine : bool
        Clients rejected for a norm over ``bound`` count among the rule's ``f``: Krum(f=2)
        with one rejected client decides as Krum(f=1) on the rest (default ``True``; right
        when ``bound`` is above every honest norm). ``False`` keeps ``f``.
    """

    def __init__(self, *, bound: float, rule: Aggregator | None = None, frac_bits: int | None = None,
                 seed: int = 0, rejected_are_byzantine: bool = True) -> None:
        if not (isinstance(bound, int | float) and math.isfinite(bound) and bound > 0):
            raise ConfigError(f"bound must be a finite number > 0, got bound={bound!r}")
        rule = GeometricMean() if rule is None else rule
        if not supports_geometry(rule):
            raise ConfigError(f"{type(rule).__name__} cannot run under two-server sharing: it needs more than "
                              "norms, inner products and cosines (supported: norm bounding, Krum, Multi-Krum, "
                              "FLTrust, centered clipping, FLAME, NNM before one of them)")
        TwoServerParams.from_bound(d=1, bound=bound, frac_bits=frac_bits)
        self.bound, self.rule, self.frac_bits = float(bound), rule, frac_bits
        self.seed = as_int("seed", seed, minimum=0)
        if not isinstance(rejected_are_byzantine, bool):
            raise ConfigError(f"rejected_are_byzantine must be a bool, got {rejected_are_byzantine!r}")
        self.rejected_are_byzantine = rejected_are_byzantine
        self._calls = 0
        self._round: TwoServerRound | None = None
        self.network: Network | None = None
        self.last_cost: RoundCost | None = None

    def contract(self) -> StageContract:
        """Hides the rows; the rule's kind of output and whether its sensitivity is bounded."""
        inner = contract_of(self.rule)
        return StageContract(output=inner.output, bounded=inner.bounded, hides_rows=True)

    def supports_rule(self, rule: Aggregator) -> bool:
        """Rules that decide from norms, inner products and cosines."""
        return supports_geometry(rule)

    def with_rule(self, rule: Aggregator) -> TwoServerAggregator:
        return TwoServerAggregator(bound=self.bound, rule=rule, frac_bits=self.frac_bits, seed=self.seed,
                                   rejected_are_byzantine=self.rejected_are_byzantine)

    def check_tolerance(self, n: int) -> None:
        self.rule.check_tolerance(n)

    def sensitivity(self, bound: float, n: int) -> float | None:
        """The rule's, on rows no longer than ``min(bound, self.bound)`` (validation enforces ``self.bound``)."""
        return self.rule.sensitivity(min(bound, self.bound), n)

    def reset(self) -> None:
        self.rule.reset()

    def _config(self) -> dict[str, Any]:
        return {"bound": self.bound, "frac_bits": self.frac_bits, "seed": self.seed,
                "rejected_are_byzantine": self.rejected_are_byzantine}

    def _protocol(self, d: int) -> TwoServerRound:
        if self._round is None or self._round.params.d != d:
            self._round = TwoServerRound(bound=self.bound, d=d, rule=self.rule, frac_bits=self.frac_bits,
                                         seed=self.seed, rejected_are_byzantine=self.rejected_are_byzantine)
        return self._round

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        n, d = updates.shape
        round_id = self._calls if ctx is None else int(ctx.round_idx)
        ids = tuple(range(n)) if ctx is None else tuple(int(c) for c in ctx.client_ids)
        self._calls += 1
        protocol = self._protocol(d)
        rows = updates.detach().to(torch.float64).cpu().numpy()
        out, cost = protocol.run(rows, weights.detach().to(torch.float64).cpu().numpy(), round_id=round_id,
                                 client_ids=ids, ctx=ctx, network=self.network)
        self.last_cost = cost
        self.rule.observe(torch.from_numpy(out.aggregate))  # type: ignore[attr-defined]
        kept = torch.zeros(n, dtype=torch.bool)
        scores = torch.full((n,), float("nan"), dtype=torch.float64)
        pos = {cid: i for i, cid in enumerate(ids)}
        acc_rows = [pos[c] for c, ok in zip(out.cohort, out.accepted, strict=True) if ok]
        kept[acc_rows] = out.decision.kept.cpu()
        if out.decision.scores is not None:
            scores[acc_rows] = out.decision.scores.to(torch.float64).cpu()
        metrics = {**out.decision.metrics, "rejected": float(len(out.rejected)), "dropped": float(len(out.dropped)),
                   "client_upload_bytes": float(np.mean(cost.client_bytes)),
                   "server_peer_bytes": float(sum(cost.peer_bytes))}
        agg = torch.from_numpy(out.aggregate).to(device=updates.device, dtype=updates.dtype)
        return AggregationResult(aggregate=agg, kept=kept.to(updates.device), scores=scores.to(updates.device),
                                 metrics=metrics)
