"""The published parameters of ALIE (z from n and f) and min-max / min-sum (perturbation, gamma search):
known answers, the literal search of the paper as an oracle, and errors before any training."""

import math

import pytest
import torch

from attacks import ALIE
from attacks.optimized import MinMax, MinSum, perturbation_direction
from fl_core.errors import ConfigError


def _literal_search(attack, B, kind):
    """Shejwalkar & Houmansadr (NDSS 2021) Alg. 1 as written: halving search, every step with full cdist."""
    B = B.double()
    mu = B.mean(0)
    p = perturbation_direction(B, kind)
    d_ben = torch.cdist(B, B) ** 2
    bound = d_ben.max() if isinstance(attack, MinMax) else d_ben.sum(1).max()
    gamma, step, best = 50.0, 50.0, 0.0
    while abs(best - gamma) > 1e-5:
        d = torch.cdist((mu + gamma * p).unsqueeze(0), B) ** 2
        ok = (d.max() if isinstance(attack, MinMax) else d.sum()) <= bound
        if ok:
            best, gamma = gamma, gamma + step / 2
        else:
            gamma -= step / 2
        step /= 2
    return best


@pytest.mark.parametrize("cls", [MinMax, MinSum])
@pytest.mark.parametrize("kind", ["unit_vec", "std", "sign"])
def test_search_equals_the_papers_literal_search(cls, kind):
    g = torch.Generator().manual_seed(3)
    B = torch.randn(12, 500, generator=g) * 0.1 + 0.05
    gamma, mal = cls(perturbation=kind).search_gamma(B)
    assert gamma == pytest.approx(_literal_search(cls(perturbation=kind), B, kind), abs=1e-4)
    expected = B.double().mean(0) + gamma * perturbation_direction(B.double(), kind)
    torch.testing.assert_close(mal, expected.float())


def test_perturbation_directions_known_answers():
    B = torch.tensor([[1.0, -2.0, 0.0], [3.0, -2.0, 2.0]])  # mu = (2, -2, 1), population std = (1, 0, 1)
    torch.testing.assert_close(perturbation_direction(B, "unit_vec"), -torch.tensor([2.0, -2.0, 1.0]) / 3.0)
    torch.testing.assert_close(perturbation_direction(B, "std"), -torch.tensor([1.0, 0.0, 1.0]))
    torch.testing.assert_close(perturbation_direction(B, "sign"), torch.tensor([-1.0, 1.0, -1.0]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"perturbation": "inverse_std"}, "perturbation must be one of .*'inverse_std'"),
     ({"gamma_init": 0.0}, "gamma_init=0.0"), ({"gamma_init": math.inf}, "gamma_init=inf"),
     ({"tol": math.nan}, "tol=nan")],
)
@pytest.mark.parametrize("cls", [MinMax, MinSum])
def test_bad_agr_agnostic_parameters(cls, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize(("n", "f", "z"), [(20, 4, 0.38532), (10, 4, 0.84162), (100, 20, 0.49585)])
def test_alie_z_from_n_and_f(n, f, z):
    """Baruch et al. 2019: s = floor(n/2 + 1) - f, z = Phi^{-1}((n - s) / n); e.g. n=20, f=4: s=7, Phi^{-1}(0.65);
    n=100, f=20: s=31, Phi^{-1}(0.69)."""
    assert ALIE.z_max(n=n, f=f) == pytest.approx(z, abs=1e-5)


@pytest.mark.parametrize(("n", "f", "match"), [(10, 0, "0 < f < n, got n=10, f=0"), (4, 4, "got n=4, f=4")])
def test_alie_z_needs_attackers_among_clients(n, f, match):
    with pytest.raises(ConfigError, match=match):
        ALIE.z_max(n=n, f=f)
    with pytest.raises(ConfigError, match="z must be finite, got inf"):
        ALIE(z=math.inf)


def test_bad_attack_parameters_in_a_suite_stop_before_any_cell(tmp_path):
    from benchmarks.suite.runner import run_suite
    from benchmarks.suite.spec import SuiteError, parse_suite

    text = ('[setting]\ndataset = "digits"\nclients = 5\nrounds = 1\n[[attacks]]\nname = "min-max"\n'
            'params = { perturbation = "inverse_std" }\n[[defenses]]\nname = "median"\n')
    with pytest.raises(SuiteError, match=r"attacks\[0\].*perturbation must be one of"):
        run_suite(parse_suite(text), out=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SuiteError, match=r"attacks\[0\]\.params\.z: attack 'alie' expects"):
        parse_suite(text.replace('"min-max"', '"alie"').replace('perturbation = "inverse_std"', 'z = "big"'))
