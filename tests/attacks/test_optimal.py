"""Optimal ALIE / IPM (byzfl): the bounded scale search and the adaptive attacks built on it."""

import math

import pytest
import torch

from attacks import ALIE, IPM, AttackEnv, ByzantineTransform, OptimalALIE, OptimalIPM, ThreatModel, build_attack
from attacks.byzantine import AttackView
from attacks.optimal import search_scale
from defenses.robust.krum import Krum
from defenses.robust.median import Median
from fl_core.aggregation import AggregationResult, RoundContext, WeightedMean
from fl_core.errors import ConfigError

N, F, D = 12, 3, 20
MALICIOUS = frozenset({2, 7, 11})


def _cohort():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, D, generator=g) * 0.5 + 0.3


def _ctx(n=N, d=D):
    return RoundContext(0, tuple(range(n)), torch.ones(n), torch.zeros(d), torch.Generator().manual_seed(1))


def _view(benign, f, agg):
    n = benign.shape[0] + f
    return AttackView(own=benign[:f], benign=benign, n=n, f=f, ctx=_ctx(n, benign.shape[1]), aggregator=agg)


def _live_distance(attack, agg):
    """Distance of the live defense's output from the honest mean, attack rows interleaved in the cohort."""
    U = _cohort()
    threat = ThreatModel(malicious=MALICIOUS)
    rows = ByzantineTransform(attack=attack, threat=threat, aggregator=agg)(U, _ctx())
    honest = U[[i for i in range(N) if i not in MALICIOUS]].double().mean(dim=0)
    return float((agg.aggregate(rows).aggregate.double() - honest).norm())


# --- the search -------------------------------------------------------------------------------------------


def test_search_finds_an_interior_maximum_and_counts_evaluations():
    r = search_scale(lambda s: -((s - 2.7) ** 2), low=0.0, high=10.0, points=11, refine=40)
    assert r.scale == pytest.approx(2.7, abs=1e-6)
    assert r.evaluations == 11 + 2 + 40


def test_search_on_an_increasing_objective_returns_the_top_end():
    r = search_scale(lambda s: s, low=-1.0, high=3.0, points=5, refine=8)
    assert r.scale == 3.0 and r.distance == 3.0


def test_search_evaluates_the_extra_point_and_keeps_it_when_best():
    # a spike at 0.1 that neither the grid (step 1) nor the refinement around it can see
    spike = lambda s: 5.0 if s == 0.1 else 0.0
    assert search_scale(spike, low=0.0, high=10.0, extra=(0.1,)).scale == 0.1
    assert search_scale(spike, low=0.0, high=10.0).distance == 0.0
    # an extra point outside the interval is not evaluated
    assert search_scale(spike, low=1.0, high=10.0, extra=(0.1,), refine=0).evaluations == 11


def test_search_ties_go_to_the_first_evaluated_and_is_deterministic():
    flat = lambda s: 1.0
    assert search_scale(flat, low=2.0, high=4.0).scale == 2.0
    wavy = lambda s: math.sin(3 * s) + 0.1 * s
    assert search_scale(wavy, low=0.0, high=6.0) == search_scale(wavy, low=0.0, high=6.0)


def test_search_skips_infeasible_scales_and_refuses_when_none_is_feasible():
    r = search_scale(lambda s: s if s <= 4.5 else -math.inf, low=0.0, high=10.0, refine=30)
    assert r.scale == pytest.approx(4.5, abs=1e-4) and r.scale <= 4.5
    with pytest.raises(ConfigError, match=r"no feasible scale in \[0.0, 1.0\]"):
        search_scale(lambda s: -math.inf, low=0.0, high=1.0)
    with pytest.raises(ConfigError, match=r"NaN at scale 0\.0"):
        search_scale(lambda s: math.nan, low=0.0, high=1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"low": math.nan}, "low must be a finite number, got nan"),
        ({"high": math.inf}, "high must be a finite number, got inf"),
        ({"low": 3.0, "high": 2.0}, "needs low < high, got low=3.0, high=2.0"),
        ({"points": 1}, "points must be an int >= 2 .*got 1"),
        ({"points": 2.5}, "points must be an int >= 2 .*got 2.5"),
        ({"refine": -1}, "refine must be an int >= 0, got -1"),
    ],
)
def test_invalid_search_parameters_are_named(kwargs, message):
    params = {"low": 0.0, "high": 1.0, **kwargs}
    with pytest.raises(ConfigError, match=message):
        search_scale(lambda s: s, **params)
    for cls in (OptimalALIE, OptimalIPM):
        with pytest.raises(ConfigError, match=message):
            cls(**params)


# --- the attacks ---------------------------------------------------------------------------------------


def test_against_the_mean_the_optimum_is_the_top_of_the_interval_with_the_hand_distance():
    B = _cohort()[:9]
    view = _view(B, F, WeightedMean())
    sigma = B.double().std(dim=0, unbiased=False)
    mu = B.double().mean(dim=0)
    alie = OptimalALIE(high=4.0).search(view)
    # mean of 9 honest + 3 rows mu - z sigma is mu - (3/12) z sigma
    assert alie.scale == 4.0 and alie.distance == pytest.approx(0.25 * 4.0 * float(sigma.norm()), rel=1e-5)
    ipm = OptimalIPM(high=4.0).search(view)
    # 3 rows -eps mu: the mean moves by (3/12)(1 + eps) ||mu||
    assert ipm.scale == 4.0 and ipm.distance == pytest.approx(0.25 * 5.0 * float(mu.norm()), rel=1e-5)


def test_crafted_rows_are_the_plain_attacks_rows_at_the_chosen_scale():
    B = _cohort()[:9]
    view = _view(B, F, Median(f=F))
    for opt, plain in ((OptimalALIE(), lambda s: ALIE(z=s)), (OptimalIPM(), lambda s: IPM(epsilon=s))):
        rows = opt.craft(view)
        assert opt.last is not None and opt.last.scale > 0
        assert torch.equal(rows, plain(opt.last.scale).craft(view))


@pytest.mark.parametrize("rule", [Median(f=F), Krum(f=F)], ids=["median", "krum"])
@pytest.mark.parametrize(
    ("optimal", "plain"), [(OptimalALIE(), ALIE()), (OptimalIPM(), IPM())], ids=["alie", "ipm"]
)
def test_optimal_moves_the_defense_at_least_as_far_as_the_default_scale(rule, optimal, plain):
    """A maximiser over an interval holding the default scale (z_max; epsilon = 0.1), measured on the live cohort."""
    d_opt, d_plain = _live_distance(optimal, rule), _live_distance(plain, rule)
    assert d_opt >= d_plain * (1 - 1e-6)
    # the live distance is the one the search predicted on its probe (the rules ignore row order)
    assert d_opt == pytest.approx(optimal.last.distance, rel=1e-6)


def test_known_gains_on_the_seeded_cohort():
    # known answers on the fixed cohort: the default scales are far from the best ones
    assert _live_distance(OptimalALIE(), Krum(f=F)) > 2.5 * _live_distance(ALIE(), Krum(f=F))
    assert _live_distance(OptimalIPM(), Krum(f=F)) > 1.2 * _live_distance(IPM(), Krum(f=F))
    assert _live_distance(OptimalALIE(), Median(f=F)) > 1.4 * _live_distance(ALIE(), Median(f=F))


class _CountingMean:
    """A stateful defense: counts its calls."""

    def __init__(self):
        self.calls = 0

    def aggregate(self, U, w=None, ctx=None):
        self.calls += 1
        return AggregationResult(aggregate=U.mean(dim=0), kept=torch.ones(U.shape[0], dtype=torch.bool))


def test_the_live_defense_is_never_called_only_copies():
    live = _CountingMean()
    attack = OptimalIPM(points=5, refine=3)
    attack.craft(_view(_cohort()[:9], F, live))
    assert live.calls == 0 and attack.last.evaluations == 5 + 1 + 2 + 3


def test_overflowing_scales_are_skipped_and_the_rows_stay_finite():
    # sigma = 2.5e38 in the first coordinate: mu - z sigma leaves float32 beyond z ~ 1.067
    B = torch.tensor([[3e38, 0.0], [-3e38, 1.0], [0.0, 2.0], [3e38, 3.0]])
    view = _view(B, 1, Median(f=1))
    rows = OptimalALIE().craft(view)
    assert bool(torch.isfinite(rows).all())
    # (7.5e37 + z 2.4875e38 <= 3.4e38: z <= 1.067)
    assert 0.0 <= OptimalALIE().search(view).scale <= 1.067


def test_registered_and_adaptive():
    threat = ThreatModel(malicious=frozenset({0}))
    env = AttackEnv(num_classes=10)
    plan = build_attack("optimal-alie", threat=threat, env=env, aggregator=Median(f=1), high=5.0, points=6)
    assert isinstance(plan.update_transform.attack, OptimalALIE) and plan.update_transform.attack.high == 5.0
    plan = build_attack("optimal-ipm", threat=threat, env=env, aggregator=Median(f=1), refine=0)
    assert isinstance(plan.update_transform.attack, OptimalIPM) and plan.update_transform.attack.refine == 0
    with pytest.raises(ConfigError, match="adaptive: pass the defense as aggregator="):
        build_attack("optimal-ipm", threat=threat, env=env)
    with pytest.raises(ConfigError, match=r"needs low < high, got low=2\.0, high=1\.0"):
        build_attack("optimal-alie", threat=threat, env=env, aggregator=Median(f=1), low=2.0, high=1.0)
