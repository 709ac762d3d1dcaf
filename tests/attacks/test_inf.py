"""Inf (byzfl): float32's largest finite value by default (valid, must be outvoted); +inf refused as invalid."""

import pytest
import torch

from attacks import AttackEnv, Inf, ThreatModel, build_attack
from attacks.byzantine import AttackView
from defenses.robust.krum import Krum
from defenses.robust.median import Median
from fl_core.aggregation import RoundContext, WeightedMean
from fl_core.errors import ConfigError, InvalidUpdateError
from fl_core.pipeline import Pipeline, Round

N, D = 7, 5
THREAT = ThreatModel(malicious=frozenset({1, 4}))
MAX32 = torch.finfo(torch.float32).max


def _cohort():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, D, generator=g) * 0.1 + 1.0


def _round(U, plan_kwargs, rule):
    plan = build_attack("inf", threat=THREAT, env=AttackEnv(num_classes=10), **plan_kwargs)
    pipe = Pipeline(attack=plan.update_transform, rule=rule)
    return pipe(U, torch.ones(N), Round(index=0, client_ids=tuple(range(N)), global_params=torch.zeros(D)))


def test_rows_are_the_largest_finite_value_of_the_dtype():
    for dtype in (torch.float32, torch.float64, torch.float16):
        own = torch.zeros(2, 3, dtype=dtype)
        ctx = RoundContext(0, (0, 1, 2), torch.ones(3), torch.zeros(3), torch.Generator())
        view = AttackView(own=own, benign=own[:1], n=3, f=2, ctx=ctx, aggregator=None)
        out = Inf().craft(view)
        assert out.dtype == dtype and bool((out == torch.finfo(dtype).max).all())
        assert bool((Inf(negative=True).craft(view) == -torch.finfo(dtype).max).all())
        assert bool((Inf(finite=False).craft(view) == float("inf")).all())


@pytest.mark.parametrize("rule", [Median(f=2), Krum(f=2)], ids=["median", "krum"])
def test_finite_rows_are_accepted_and_outvoted_by_robust_rules(rule):
    U = _cohort()
    honest = U[[0, 2, 3, 5, 6]]
    out = _round(U, {}, rule)
    rows = out.rows_seen
    assert bool((rows[[1, 4]] == MAX32).all())  # the attack reached the rule as valid input
    assert bool(torch.isfinite(out.delta).all())
    # f = 2 < n / 2: every coordinate stays within the honest range
    assert bool((out.delta >= honest.min(dim=0).values).all()) and bool((out.delta <= honest.max(dim=0).values).all())


def test_finite_rows_ruin_the_mean_without_overflow():
    U = _cohort()
    out = _round(U, {}, WeightedMean())
    # (2 MAX32 + sum of 5 honest) / 7, computed without overflow
    assert bool(torch.isfinite(out.delta).all())
    assert torch.allclose(out.delta.double(), torch.full((D,), 2 * MAX32 / 7, dtype=torch.float64), rtol=1e-6)


@pytest.mark.parametrize("rule", [WeightedMean(), Median(f=2), Krum(f=2)], ids=["mean", "median", "krum"])
def test_infinite_rows_are_refused_before_any_arithmetic(rule):
    with pytest.raises(InvalidUpdateError, match=r"updates contains 10 non-finite value\(s\).*first at index \(1, 0\)"):
        _round(_cohort(), {"finite": False}, rule)


def test_invalid_parameters_are_named():
    with pytest.raises(ConfigError, match="finite must be a bool, got 1"):
        Inf(finite=1)
    with pytest.raises(ConfigError, match="negative must be a bool, got 'yes'"):
        build_attack("inf", threat=THREAT, env=AttackEnv(num_classes=10), negative="yes")
    with pytest.raises(ConfigError, match=r"needs floating-point updates, got dtype torch\.int64"):
        Inf().value(torch.int64)
