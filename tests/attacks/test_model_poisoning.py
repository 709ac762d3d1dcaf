import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attacks import (
    ALIE,
    IPM,
    AttackView,
    ByzantineTransform,
    ConstrainedScaling,
    FangGaussian,
    FangKrum,
    FangTrimmedMean,
    GaussianNoise,
    MinMax,
    MinSum,
    Scaling,
    SignFlip,
    ThreatModel,
)
from attacks.threat import AttackSchedule
from fl_core.aggregation import AggregationResult, Aggregator, RoundContext
from fl_core.errors import ConfigError


def _ctx(n, d=3, seed=0, r=0):
    return RoundContext(r, tuple(range(n)), torch.ones(n), torch.zeros(d), torch.Generator().manual_seed(seed))


def _view(benign, f=1, own=None, agg=None, seed=0):
    own = benign[:f] if own is None else own
    n = benign.shape[0] + f
    return AttackView(own=own, benign=benign, n=n, f=f, ctx=_ctx(n, benign.shape[1], seed), aggregator=agg)


def test_sign_flip_scaling_and_constrained():
    own = torch.tensor([[3.0, 4.0]])
    v = _view(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), own=own)
    assert SignFlip(scale=2.0).craft(v).tolist() == [[-6.0, -8.0]]
    assert Scaling().craft(v).tolist() == [[9.0, 12.0]]  # gamma = n / eta = 3
    assert Scaling(eta=0.5).craft(v).tolist() == [[18.0, 24.0]]
    c = ConstrainedScaling(norm_bound=10.0).craft(v)  # 3 * ||(3,4)|| = 15 > 10
    assert math.isclose(float(c.norm()), 10.0, rel_tol=1e-6)
    assert torch.allclose(c / c.norm(), own / own.norm())


def test_fang_gaussian_follows_each_coordinates_benign_mean_and_spread():
    benign = torch.tensor([[1.0, 10.0, -2.0], [3.0, 10.0, 2.0], [2.0, 10.0, 0.0]])  # means 2, 10, 0
    sd = benign.std(dim=0, unbiased=False)  # sqrt(2/3), 0, sqrt(8/3)
    g = FangGaussian().craft(_view(benign, f=20000))
    assert g.shape == (20000, 3) and bool((g[:, 1] == 10.0).all())  # no benign spread: sent exactly
    # 20,000 independent draws per coordinate: standard error of the mean sd / 141, of the std sd / 200
    for j in (0, 2):
        assert abs(float(g[:, j].mean()) - float(benign[:, j].mean())) < 5 * float(sd[j]) / 141
        assert abs(float(g[:, j].std()) - float(sd[j])) < 5 * float(sd[j]) / 200
    assert float(torch.corrcoef(g[:, [0, 2]].T)[0, 1]) ** 2 < 25 / 20000  # coordinates drawn independently
    same = FangGaussian().craft(_view(benign, f=4, seed=7))
    assert torch.equal(same, FangGaussian().craft(_view(benign, f=4, seed=7)))  # the round's generator, no global RNG
    assert not torch.equal(same[0], same[1])  # each attacker its own draw
    huge = FangGaussian().craft(_view(torch.tensor([[1e38, 0.0], [-1e38, 0.0]]), f=50))
    assert bool(torch.isfinite(huge).all()) and huge.dtype == torch.float32  # a 1e38 row: finite rows, no NaN
    with pytest.raises(ConfigError, match="at least 2 benign reference updates for a variance, got 1"):
        FangGaussian().craft(_view(benign[:1], f=1))


def test_gaussian_noise_statistics():
    v = _view(torch.zeros(4, 20000), f=2)
    g = GaussianNoise(sigma=3.0).craft(v)
    assert g.shape == (2, 20000)
    # std of 40,000 N(0, 9) draws: standard error of the std ~ 3 / sqrt(2 * 40000) = 0.011
    assert abs(float(g.std()) - 3.0) < 0.05 and abs(float(g.mean())) < 0.05


@pytest.mark.parametrize("n, f, z", [(50, 10, 0.4677), (50, 24, 1.7507), (10, 2, 0.2533), (25, 5, 0.4677)])
def test_alie_z_max_known_values(n, f, z):
    # s = floor(n/2 + 1) - f ; z = Phi^{-1}((n - s)/n)
    assert ALIE.z_max(n=n, f=f) == pytest.approx(z, abs=1e-4)


def test_alie_crafts_mean_minus_z_std():
    B = torch.tensor([[0.0, 2.0], [2.0, 2.0], [4.0, 2.0]])
    v = _view(B, f=2)
    out = ALIE().craft(v)
    z = ALIE.z_max(n=5, f=2)
    expected = torch.tensor([2.0 - z * math.sqrt(8 / 3), 2.0])
    assert out.shape == (2, 2) and torch.allclose(out, expected.expand(2, -1), atol=1e-6)
    assert ALIE(z=1.0).craft(v)[0].tolist() == pytest.approx([2.0 - math.sqrt(8 / 3), 2.0])


def test_ipm():
    B = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert IPM(epsilon=0.5).craft(_view(B, f=2)).tolist() == [[-1.0, -1.5], [-1.0, -1.5]]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), h=st.integers(3, 12), kind=st.sampled_from(["unit_vec", "std", "sign"]))
def test_min_max_and_min_sum_meet_their_criterion_at_the_largest_gamma(seed, h, kind):
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(h, 30, generator=g) + 1.0
    for cls in (MinMax, MinSum):
        attack = cls(perturbation=kind)
        gamma, mal = attack.search_gamma(B)
        Bd, md = B.double(), mal.double().unsqueeze(0)
        d_mal = torch.cdist(md, Bd) ** 2
        d_ben = torch.cdist(Bd, Bd) ** 2
        if cls is MinMax:
            assert d_mal.max() <= d_ben.max() * (1 + 1e-6)
        else:
            assert d_mal.sum() <= d_ben.sum(dim=1).max() * (1 + 1e-6)
        assert gamma > 0
        # a clearly larger gamma breaks the criterion (the search found the boundary)
        bigger = (Bd.mean(0) + (gamma * 1.05 + 1e-3) * _dir(Bd, kind)).unsqueeze(0)
        d_big = torch.cdist(bigger, Bd) ** 2
        broken = d_big.max() > d_ben.max() if cls is MinMax else d_big.sum() > d_ben.sum(dim=1).max()
        assert broken


def _dir(B, kind):
    from attacks.optimized import perturbation_direction

    return perturbation_direction(B, kind)


def test_min_max_needs_two_reference_rows():
    with pytest.raises(ConfigError, match="at least 2 benign reference updates"):
        MinMax().craft(_view(torch.ones(1, 3)))


class _TinyKrum(Aggregator):
    """Krum (Blanchard et al. 2017) as a test oracle: select the row with the least sum of
    squared distances to its n - f - 2 nearest neighbours."""

    def __init__(self, f):
        self.f = f
        self.calls = 0

    def _aggregate(self, updates, weights, ctx):
        self.calls += 1
        n = updates.shape[0]
        d2 = torch.cdist(updates, updates) ** 2
        scores = d2.sort(dim=1).values[:, 1 : n - self.f - 1].sum(dim=1)
        i = int(scores.argmin())
        kept = torch.zeros(n, dtype=torch.bool)
        kept[i] = True
        return AggregationResult(aggregate=updates[i], kept=kept, scores=scores)


def test_fang_krum_gets_selected_by_krum_and_reverses_direction():
    # spread-out benign updates (as under non-IID data): the attack's regime
    g = torch.Generator().manual_seed(0)
    benign = torch.randn(8, 50, generator=g) + 0.2
    s = torch.sign(benign.mean(0))
    krum = _TinyKrum(f=2)
    mal = FangKrum().craft(_view(benign, f=2, agg=krum))
    assert krum.calls == 0  # probes a copy, never the live defense
    chosen = _TinyKrum(f=2).aggregate(torch.cat([benign, mal]))
    assert bool(chosen.kept[8:].any())  # Krum picks a malicious row
    assert (chosen.aggregate * s < 0).all()  # which points against the benign direction everywhere
    lam = FangKrum.lambda_upper_bound(benign, n=10, f=2)
    assert 0 < float(mal[0].abs().max()) <= lam


def test_fang_krum_needs_the_defense():
    with pytest.raises(ConfigError, match="adaptive: pass the defense"):
        ByzantineTransform(attack=FangKrum(), threat=ThreatModel(malicious=frozenset({0})))


def test_fang_trimmed_mean_goes_beyond_the_benign_extremes():
    B = torch.tensor([[1.0, -1.0, 2.0], [2.0, -2.0, 3.0], [3.0, -3.0, -10.0]])  # signs of mean: +, -, -
    mal = FangTrimmedMean(b=2.0).craft(_view(B, f=4, seed=1))
    assert mal.shape == (4, 3)
    # coordinate 0: benign direction up -> below w_min = 1 (in [0.5, 1])
    assert ((mal[:, 0] >= 0.5) & (mal[:, 0] <= 1.0)).all()
    # coordinate 1: direction down -> above w_max = -1 (w_max < 0: in [-1, -0.5])
    assert ((mal[:, 1] >= -1.0) & (mal[:, 1] <= -0.5)).all()
    # coordinate 2: direction down -> above w_max = 3 (in [3, 6])
    assert ((mal[:, 2] >= 3.0) & (mal[:, 2] <= 6.0)).all()


def test_byzantine_transform_threat_models_and_schedule():
    U = torch.tensor([[1.0, 0.0], [3.0, 0.0], [10.0, 0.0], [20.0, 0.0]])
    ctx = _ctx(4, d=2)
    omni = ByzantineTransform(attack=IPM(epsilon=1.0), threat=ThreatModel(malicious=frozenset({2, 3})))
    assert omni(U, ctx)[2:].tolist() == [[-2.0, 0.0], [-2.0, 0.0]]  # -mean of honest rows 0, 1
    assert omni.apply(U, ctx).metrics == {"attack_active": 1.0, "malicious_in_cohort": 2.0}
    blind = ByzantineTransform(
        attack=IPM(epsilon=1.0), threat=ThreatModel(malicious=frozenset({2, 3}), omniscient=False)
    )
    assert blind(U, ctx)[2:].tolist() == [[-15.0, 0.0], [-15.0, 0.0]]  # -mean of its own rows
    assert torch.equal(blind(U, ctx)[:2], U[:2])
    later = ByzantineTransform(
        attack=IPM(), threat=ThreatModel(malicious=frozenset({2}), schedule=AttackSchedule(start=1))
    )
    assert torch.equal(later(U, ctx), U)
    assert later.apply(U, ctx).metrics["attack_active"] == 0.0
