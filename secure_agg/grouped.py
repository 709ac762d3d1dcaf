"""Grouped SecAgg+: secure aggregation inside random groups, any robust rule over the group means.

One server. Each round the cohort of ``n`` clients is split at random (the round's
generator) into ``G = floor(n / s)`` groups of at least ``s`` clients (the ``n mod s``
left over join the first groups, one each); SecAgg+ (:class:`~secure_agg.aggregator.SecAggPlusAggregator`)
runs inside each group, so the server learns only each group's weighted mean; a
robust rule then runs over the ``G`` group means (Velicheti, Xia, Koyejo 2021,
"Secure Byzantine-robust federated learning"; the bucketing argument of
Karimireddy, He, Jaggi, ICLR 2022).

**What the server learns**: the weighted mean of each group of at least ``s``
clients (with its total weight), and the rule's output. It never sees a single
client's update unless ``s = 1``, which is refused (``s >= 2``).

**Robustness**: ``f`` Byzantine clients corrupt at most ``f`` group means, whatever
the grouping, so a rule that tolerates ``f`` of ``G`` rows (Krum needs
``G > 2f + 2``, the median ``G > 2f``) keeps its guarantee over the means, which
are themselves less spread than single updates (variance divided by ``s``).
:meth:`check_tolerance` checks the rule against ``G`` before any training.

This is the first protocol that declares robust rules it supports: in a
:class:`~fl_core.pipeline.Pipeline`, ``Pipeline(secure=GroupedSecAggPlus(...), rule=Median(f=2))``
is accepted (``supports_rule`` / ``with_rule``) where plain SecAgg+ refuses.

Examples
--------
>>> import torch
>>> from fl_core.aggregation import RoundContext, WeightedMean
>>> agg = GroupedSecAggPlus(group_size=3, clip=1.0, rule=WeightedMean(), gamma=0.0, delta=0.0)
>>> U = torch.linspace(-0.5, 0.5, 18).reshape(6, 3)
>>> ctx = RoundContext(0, tuple(range(6)), torch.ones(6), torch.zeros(3), torch.Generator().manual_seed(0))
>>> res = agg.aggregate(U, torch.ones(6), ctx=ctx)
>>> bool(torch.allclose(res.aggregate, U.mean(0), atol=1e-4)), res.metrics["groups"]
(True, 2.0)
"""

from __future__ import annotations

from typing import Any

import torch

from fl_core.aggregation import AggregationResult, Aggregator, RoundContext, WeightedMean
from fl_core.checks import as_int
from fl_core.contracts import StageContract, contract_of
from fl_core.errors import ConfigError, ToleranceError
from fl_core.state import RoundCounterState
from secure_agg.aggregator import SecAggPlusAggregator

__all__ = ["GROUP_SPACE", "GroupedSecAggPlus", "random_groups"]

#: Group ``g`` of round ``r`` runs the protocol round ``r * GROUP_SPACE + g`` (distinct ids, so distinct keys).
GROUP_SPACE = 65_536

#: The SecAgg+ parameters a grouped round passes through (its defaults are SecAgg+'s).
SECAGG_PARAMETERS = ("ring_bits", "gamma", "delta", "sigma", "eta", "active")


def random_groups(n: int, s: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A random partition of ``0..n-1`` into ``floor(n / s)`` groups of ``s`` or ``s + 1`` indices.

    Examples
    --------
    >>> [len(g) for g in random_groups(7, 3, torch.Generator().manual_seed(0))]
    [4, 3]
    """
    count = n // s
    if count < 1:
        raise ToleranceError(f"grouped secure aggregation needs n >= group_size, got n={n}, group_size={s}")
    perm = torch.randperm(n, generator=generator)
    sizes = [s + (1 if g < n - count * s else 0) for g in range(count)]
    return list(torch.split(perm, sizes))


class GroupedSecAggPlus(RoundCounterState, Aggregator):
    """SecAgg+ within random groups of ``s`` clients, then a robust rule over the group means.

    Parameters
    ----------
    group_size : int
        ``s >= 2``: the fewest clients behind any mean the server sees.
    clip : float
        SecAgg+'s per-coordinate clip ``c`` (:class:`~secure_agg.aggregator.SecAggPlusAggregator`).
    rule : Aggregator, optional
        The rule over the group means (a robust rule of ``defenses.robust``, with its
        pre-aggregators); default the weighted mean. In a pipeline, give it as ``rule=``.
    seed : int
        Seed for rounds run without a :class:`RoundContext`.
    **secagg
        Further SecAgg+ parameters (``ring_bits``, ``gamma``, ``delta``, ``sigma``, ``eta``, ``active``).
    """

    def __init__(
        self, *, group_size: int, clip: float, rule: Aggregator | None = None, seed: int = 0, **secagg: Any
    ) -> None:
        self.group_size = as_int("group_size", group_size, minimum=2)
        self.seed = as_int("seed", seed, minimum=0)
        unknown = sorted(set(secagg) - set(SECAGG_PARAMETERS))
        if unknown:
            raise ConfigError(f"GroupedSecAggPlus got unknown SecAgg+ parameters {unknown}; valid: {SECAGG_PARAMETERS}")
        if rule is not None and (not isinstance(rule, Aggregator) or contract_of(rule).hides_rows):
            raise ConfigError(f"rule must be an Aggregator that reads the group means, got {type(rule).__name__}")
        self.rule: Aggregator = rule if rule is not None else WeightedMean()
        self.secagg = SecAggPlusAggregator(clip=clip, seed=seed, **secagg)
        self.clip, self._secagg_params, self._calls = clip, dict(secagg), 0

    def contract(self) -> StageContract:
        """Hides the rows (the server sees group means only); real-valued rows; the rule's kind of output."""
        rule = contract_of(self.rule)
        return StageContract(output=rule.output, hides_rows=True, bounded=rule.bounded)

    def supports_rule(self, rule: Aggregator) -> bool:
        """Any rule that reads plaintext rows: it runs over the group means."""
        return isinstance(rule, Aggregator) and not contract_of(rule).hides_rows

    def with_rule(self, rule: Aggregator) -> GroupedSecAggPlus:
        """The same protocol with ``rule`` over the group means."""
        return GroupedSecAggPlus(group_size=self.group_size, clip=self.clip, rule=rule, seed=self.seed,
                                 **self._secagg_params)

    def check_tolerance(self, n: int) -> None:
        """SecAgg+ must run in groups of ``s`` and the rule on ``floor(n / s)`` group means."""
        count = as_int("n", n, minimum=0) // self.group_size
        if count < 1:
            raise ToleranceError(f"grouped secure aggregation needs n >= group_size={self.group_size}, got n={n}")
        self.secagg.check_tolerance(self.group_size)
        self.rule.check_tolerance(count)

    def sensitivity(self, bound: float, n: int) -> float | None:
        """The rule's sensitivity over ``floor(n / s)`` group means.

        A group's weighted mean of rows of norm at most ``C`` has norm at most ``C``, and
        one client changes only its own group's mean: the rule sees one row change.
        """
        return self.rule.sensitivity(bound, max(1, int(n) // self.group_size))

    def _config(self) -> dict[str, Any]:
        return {"group_size": self.group_size, "clip": self.clip, "seed": self.seed, **self._secagg_params}

    def reset(self) -> None:
        self.rule.reset()

    def _group_ctx(self, ctx: RoundContext, g: int, idx: torch.Tensor, weights: torch.Tensor) -> RoundContext:
        # a distinct protocol round id per group, and a generator of the group's own
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=ctx.generator)))
        ids = tuple(ctx.client_ids[i] for i in idx.tolist())
        return RoundContext(ctx.round_idx * GROUP_SPACE + g, ids, weights[idx], ctx.global_params, gen)

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        if ctx is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self._calls)
            ctx = RoundContext(self._calls, tuple(range(updates.shape[0])), weights,
                               torch.zeros(updates.shape[1]), g)
        self._calls += 1
        groups = random_groups(updates.shape[0], self.group_size, ctx.generator)
        means, group_w, survived = [], [], torch.zeros(updates.shape[0], dtype=torch.bool, device=updates.device)
        for g, idx in enumerate(groups):
            res = self.secagg.aggregate(updates[idx], weights[idx], ctx=self._group_ctx(ctx, g, idx, weights))
            means.append(res.aggregate)
            group_w.append(weights[idx][res.kept].sum())
            survived[idx[res.kept]] = True
        M, W = torch.stack(means), torch.stack(group_w).to(weights.dtype)
        rule_ctx = RoundContext(ctx.round_idx, tuple(range(len(groups))), W, ctx.global_params, ctx.generator)
        out = self.rule.aggregate(M, W, ctx=rule_ctx)
        kept = survived.clone()
        for g, idx in enumerate(groups):
            kept[idx] &= bool(out.kept[g])
        metrics = {**out.metrics, "groups": float(len(groups)), "group_size_min": float(min(map(len, groups)))}
        owner = torch.empty(updates.shape[0], dtype=torch.long, device=updates.device)
        for g, idx in enumerate(groups):
            owner[idx] = g
        # the server sees every group's mean: say so, for whoever measures what it can recover
        return AggregationResult(aggregate=out.aggregate, kept=kept, metrics=metrics, seen=M, seen_owner=owner)
