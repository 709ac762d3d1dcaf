"""Grouped SecAgg+: the group means through SecAgg+, any robust rule over them; its guarantee and its refusals."""

from __future__ import annotations

import pytest
import torch

from defenses.robust import Krum, Median, TrimmedMean
from fl_core.aggregation import RoundContext, WeightedMean
from fl_core.contracts import CompositionError
from fl_core.errors import ConfigError, InvalidUpdateError, ToleranceError
from fl_core.pipeline import Pipeline, Round
from secure_agg import SecAggPlusAggregator
from secure_agg.grouped import GroupedSecAggPlus, random_groups
from secure_agg.registry import SECURE_PROTOCOLS

EXACT = {"gamma": 0.0, "delta": 0.0}


def _ctx(n: int, d: int, seed: int = 0) -> RoundContext:
    g = torch.Generator().manual_seed(seed)
    return RoundContext(3, tuple(range(100, 100 + n)), torch.ones(n), torch.zeros(d), g)


def test_random_groups_partition_the_cohort():
    for n, s in [(10, 3), (12, 4), (7, 7), (9, 2)]:
        groups = random_groups(n, s, torch.Generator().manual_seed(n))
        assert sorted(torch.cat(groups).tolist()) == list(range(n))
        assert len(groups) == n // s and all(s <= len(g) <= s + 1 for g in groups)


@pytest.mark.parametrize("rule", [Median(f=1), Krum(f=1), TrimmedMean(f=1), WeightedMean()])
def test_equals_the_plaintext_rule_over_the_same_group_means(rule):
    n, d, s = 12, 6, 2
    U = torch.randn(n, d, generator=torch.Generator().manual_seed(1)) * 0.2
    w = torch.arange(1.0, n + 1)
    got = GroupedSecAggPlus(group_size=s, clip=1.0, rule=rule, **EXACT).aggregate(U, w, ctx=_ctx(n, d))
    groups = random_groups(n, s, _ctx(n, d).generator)  # the same draw: the round generator's first use
    means = torch.stack([(w[g] @ U[g]) / w[g].sum() for g in groups])
    W = torch.stack([w[g].sum() for g in groups])
    want = rule.aggregate(means, W)
    assert torch.allclose(got.aggregate, want.aggregate.to(got.aggregate.dtype), atol=1e-4)  # quantisation
    for g, k in zip(groups, want.kept.tolist(), strict=True):
        assert got.kept[g].tolist() == [k] * len(g)
    # what the server sees besides the aggregate: every group's mean, and which group each client is in
    assert torch.allclose(got.seen, means.to(got.seen.dtype), atol=1e-4)
    for i, g in enumerate(groups):
        assert got.seen_owner[g].tolist() == [i] * len(g)


def test_median_over_group_means_stays_within_the_honest_bound_where_secagg_plus_does_not():
    """f = 2 attackers of 1e3 corrupt at most 2 of 5 group means; the median over 5 means tolerates 2."""
    n, d, s, f = 10, 8, 2, 2
    g = torch.Generator().manual_seed(7)
    center = torch.full((d,), 0.1)
    U = center + 0.05 * torch.randn(n, d, generator=g)
    U[:f] = 1e3  # clipped to [-c, c] by SecAgg+, still the largest possible push
    honest_radius = float((U[f:] - center).norm(dim=1).max())
    for seed in range(5):  # whatever the grouping
        out = GroupedSecAggPlus(group_size=s, clip=1.0, rule=Median(f=f), **EXACT).aggregate(
            U, torch.ones(n), ctx=_ctx(n, d, seed)).aggregate
        assert float((out - center).norm()) <= honest_radius
    plain = SecAggPlusAggregator(clip=1.0, **EXACT).aggregate(U, torch.ones(n), ctx=_ctx(n, d)).aggregate
    assert float((plain - center).norm()) > 2.5 * honest_radius  # measured 0.49 vs a radius of 0.17


def test_a_pipeline_accepts_a_rule_after_grouped_secagg_and_hides_the_rows():
    n, d = 10, 5
    U = torch.randn(n, d, generator=torch.Generator().manual_seed(2)) * 0.1
    pipe = Pipeline(secure=GroupedSecAggPlus(group_size=2, clip=1.0, **EXACT), rule=Median(f=2), seed=1)
    assert isinstance(pipe.aggregator, GroupedSecAggPlus) and isinstance(pipe.aggregator.rule, Median)
    out = pipe(U, torch.ones(n), Round(index=0, client_ids=tuple(range(n)), global_params=torch.zeros(d)))
    assert out.rows_seen is None and out.metrics["groups"] == 5.0
    with pytest.raises(CompositionError, match="Median needs the plaintext rows"):
        Pipeline(secure=SecAggPlusAggregator(clip=1.0), rule=Median(f=2))


def test_tolerance_is_checked_on_the_number_of_groups_before_any_training():
    pipe = Pipeline(secure=GroupedSecAggPlus(group_size=3, clip=1.0, **EXACT), rule=Krum(f=1))
    with pytest.raises(ToleranceError, match=r"n=3"):  # 10 clients in groups of 3: 3 means, Krum needs > 4
        pipe.check_cohort_size(10)
    pipe.check_cohort_size(18)  # 6 means
    with pytest.raises(ToleranceError, match="n >= group_size=3"):
        pipe.check_cohort_size(2)


def test_bad_parameters_are_refused():
    with pytest.raises(ConfigError, match="group_size must be"):
        GroupedSecAggPlus(group_size=1, clip=1.0)
    with pytest.raises(ConfigError, match=r"unknown SecAgg\+ parameters \['dropout_rate'\]"):
        GroupedSecAggPlus(group_size=2, clip=1.0, dropout_rate=0.1)
    with pytest.raises(ConfigError, match="rule must be an Aggregator"):
        GroupedSecAggPlus(group_size=2, clip=1.0, rule=SecAggPlusAggregator(clip=1.0))
    with pytest.raises(Exception, match="no \\(k, t\\)"):  # default SecAgg+ tolerances cannot run in groups of 3
        GroupedSecAggPlus(group_size=3, clip=1.0).check_tolerance(9)
    entry = SECURE_PROTOCOLS.get("grouped-secagg-plus")
    assert entry.obj is GroupedSecAggPlus and "any" in entry.tags["robust_rules"]


def test_extreme_and_invalid_rows():
    """A 3e38 row is clipped by SecAgg+ and outvoted by the median; NaN rows and a wrong weight shape are refused."""
    n, d = 10, 4
    U = torch.randn(n, d, generator=torch.Generator().manual_seed(5)) * 0.05
    U[3] = 3e38
    agg = GroupedSecAggPlus(group_size=2, clip=1.0, rule=Median(f=1), **EXACT)
    out = agg.aggregate(U, torch.ones(n), ctx=_ctx(n, d))
    assert torch.isfinite(out.aggregate).all() and float(out.aggregate.abs().max()) < 0.2
    bad = U.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(InvalidUpdateError, match="non-finite"):
        agg.aggregate(bad, torch.ones(n), ctx=_ctx(n, d))
    with pytest.raises(InvalidUpdateError):
        agg.aggregate(U, torch.ones(n - 1), ctx=_ctx(n, d))
