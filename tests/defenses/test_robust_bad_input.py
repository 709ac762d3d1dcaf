"""Bad input raises a specific error naming the offending values; nothing is clamped."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from robust_cases import MIN_N, RULES, gen

from defenses.robust import (
    ARC,
    FLAME,
    NNM,
    Bucketing,
    Bulyan,
    CenteredClipping,
    Compose,
    DnC,
    FLTrust,
    FoolsGold,
    GeometricMedian,
    Krum,
    LayerShapeError,
    Mean,
    Median,
    MissingGeneratorError,
    MissingServerUpdateError,
    MultiKrum,
    NormBound,
    StateMismatchError,
    TrimmedMean,
    make,
)
from fl_core.errors import ConfigError, InvalidUpdateError, ToleranceError, UnknownNameError

NAMES = sorted(RULES)


def good(name: str, d: int = 3) -> tuple[object, np.ndarray]:
    n = max(MIN_N[name](1), 3)
    x = np.random.default_rng(0).normal(size=(n, d))
    return RULES[name](1 if name != "mean" else 0, d), x


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rows_are_rejected(name: str, bad: float) -> None:
    rule, x = good(name)
    x[1, 2] = bad
    with pytest.raises(InvalidUpdateError, match=r"non-finite.*\(1, 2\)"):
        rule(x)
    with pytest.raises(InvalidUpdateError, match="non-finite"):
        rule(torch.from_numpy(x))


@pytest.mark.parametrize("name", NAMES)
def test_wrong_shapes_are_rejected(name: str) -> None:
    rule, x = good(name)
    with pytest.raises(InvalidUpdateError, match=r"shape \(n, d\), got \(3,\)"):
        rule(torch.zeros(3))
    with pytest.raises(InvalidUpdateError, match=r"shape \(n, d\), got \(2, 3, 4\)"):
        rule(torch.zeros(2, 3, 4))
    with pytest.raises(InvalidUpdateError, match=r"shape \(n, d\), got \(5,\)"):
        rule(np.zeros(5))
    with pytest.raises(InvalidUpdateError, match="floating point, got dtype int64"):
        rule(np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(InvalidUpdateError, match="d=0"):
        rule(torch.zeros(x.shape[0], 0))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("weights", "pattern"),
    [
        ("negative", "non-negative"),
        ("nan", "NaN/Inf"),
        ("inf", "NaN/Inf"),
        ("zero", "sum to zero"),
        ("short", r"shape \(\d+,\), got \(2,\)"),
    ],
)
def test_bad_weights_are_rejected(name: str, weights: str, pattern: str) -> None:
    rule, x = good(name)
    n = x.shape[0]
    w = {
        "negative": [-1.0] + [1.0] * (n - 1),
        "nan": [float("nan")] + [1.0] * (n - 1),
        "inf": [float("inf")] + [1.0] * (n - 1),
        "zero": [0.0] * n,
        "short": [1.0, 1.0],
    }[weights]
    with pytest.raises(InvalidUpdateError, match=pattern):
        rule(x, w)


def test_mismatched_layer_shapes_are_rejected() -> None:
    a = [np.zeros((2, 3), np.float32), np.zeros(4, np.float32)]
    b = [np.zeros((3, 2), np.float32), np.zeros(4, np.float32)]
    with pytest.raises(LayerShapeError, match=r"client 1 layer 0 has shape \(3, 2\).*\(2, 3\)"):
        Median()([a, b, a])
    with pytest.raises(LayerShapeError, match="client 2 has 1 layers but client 0 has 2"):
        Median()([a, a, a[:1]])
    with pytest.raises(LayerShapeError):
        Median()([np.zeros(3), np.zeros(4)])


def test_bad_list_forms_are_rejected() -> None:
    with pytest.raises(InvalidUpdateError, match="empty list"):
        Median()([])
    with pytest.raises(InvalidUpdateError, match="client 0 is a float"):
        Median()([1.0, 2.0])
    with pytest.raises(InvalidUpdateError, match="dtype bool"):
        Median()([[np.zeros(2, dtype=bool)], [np.zeros(2, dtype=bool)]])
    with pytest.raises(InvalidUpdateError, match="client 1 is a ndarray"):
        Median()([[np.zeros(2)], np.zeros(2)])
    with pytest.raises(InvalidUpdateError, match="got str"):
        Median()("not updates")
    with pytest.raises(InvalidUpdateError, match="non-finite"):
        Median()([[np.array([np.nan, 1.0])], [np.zeros(2)], [np.zeros(2)]])


INTOLERABLE = [
    (lambda: Krum(f=2), 6, "Krum needs n > 2f + 2, got n=6, f=2"),
    (lambda: MultiKrum(f=1), 4, "MultiKrum needs n > 2f + 2, got n=4, f=1"),
    (lambda: MultiKrum(f=1, m=9), 5, "MultiKrum needs m <= n, got n=5, m=9"),
    (lambda: Bulyan(f=2), 10, "Bulyan needs n >= 4f + 3, got n=10, f=2"),
    (lambda: Median(f=2), 4, "Median needs n > 2f, got n=4, f=2"),
    (lambda: TrimmedMean(f=3), 6, "TrimmedMean needs n > 2f, got n=6, f=3"),
    (lambda: GeometricMedian(f=2), 4, "GeometricMedian needs n > 2f, got n=4, f=2"),
    (lambda: CenteredClipping(f=2), 4, "CenteredClipping needs n > 2f, got n=4, f=2"),
    (lambda: NormBound(f=3, M=1.0), 3, "NormBound needs n > f, got n=3, f=3"),
    (lambda: FLAME(f=2, generator=gen()), 4, "FLAME needs n > 2f, got n=4, f=2"),
    (lambda: FLAME(generator=gen()), 2, "FLAME needs n >= 3 clients to cluster, got n=2"),
    (lambda: FoolsGold(), 1, "FoolsGold needs n >= 2 clients to compare, got n=1"),
    (lambda: DnC(f=2), 4, "DnC needs n > 2f, got n=4, f=2"),
    (lambda: DnC(f=1, c=3.0), 3, "DnC needs n - ceil(c*f) >= 1, got n=3, f=1, c=3.0"),
    (lambda: Compose(NNM(f=2), Mean()), 4, "NNM needs n > 2f, got n=4, f=2"),
    (lambda: Compose(ARC(f=2), Mean()), 4, "ARC needs n > 2f, got n=4, f=2"),
    (lambda: Compose(NNM(f=1), Krum(f=1)), 4, "Krum needs n > 2f + 2, got n=4, f=1"),
]


@pytest.mark.parametrize(("factory", "n", "message"), INTOLERABLE)
def test_intolerable_f_names_the_bound(factory, n: int, message: str) -> None:
    rule = factory()
    with pytest.raises(ToleranceError, match=re.escape(message)):
        rule(np.random.default_rng(0).normal(size=(n, 3)))


def test_fltrust_tolerance() -> None:
    rule = FLTrust(f=2, server_update=lambda ctx: np.ones(2))
    with pytest.raises(ToleranceError, match=re.escape("FLTrust needs n > f, got n=2, f=2")):
        rule(np.ones((2, 2)))


def test_mean_refuses_byzantine_clients() -> None:
    with pytest.raises(ToleranceError, match="needs f = 0, got f=1"):
        Mean(f=1)


@pytest.mark.parametrize(
    ("factory", "pattern"),
    [
        (lambda: Krum(f=-1), "f must be >= 0, got f=-1"),
        (lambda: Krum(f=1.5), "f must be an int, got 1.5"),
        (lambda: Krum(f=True), "f must be an int, got True"),
        (lambda: MultiKrum(f=1, m=0), "m must be >= 1, got m=0"),
        (lambda: CenteredClipping(tau=0.0), "tau must be a positive number, got tau=0.0"),
        (lambda: CenteredClipping(L=0), "L must be >= 1, got L=0"),
        (lambda: NormBound(M=-1.0), "M must be a finite positive number, got M=-1.0"),
        (lambda: NormBound(M=float("inf")), "M must be a finite positive number"),
        (lambda: GeometricMedian(nu=float("nan")), "nu must be a finite positive number"),
        (lambda: GeometricMedian(max_iter=0), "max_iter must be >= 1"),
        (lambda: FLAME(lam=-0.1), "lam must be a finite number >= 0, got lam=-0.1"),
        (lambda: FoolsGold(kappa=0), "kappa must be a finite positive number"),
        (lambda: DnC(b=0), "b must be >= 1, got b=0"),
        (lambda: DnC(c=0.0), "c must be a finite positive number"),
        (lambda: Bucketing(s=0), "s must be >= 1, got s=0"),
        (lambda: FLTrust(server_update=np.ones(3)), "server_update must be a callable"),
        (lambda: Compose(), "Compose needs at least a rule"),
        (lambda: Compose(Krum(f=1), Krum(f=1)), "stage 0 of Compose must be a PreAggregator"),
        (lambda: Compose(NNM(f=1)), "last stage of Compose must be an Aggregator"),
    ],
)
def test_bad_hyper_parameters(factory, pattern: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(pattern)):
        factory()


def test_hyper_parameters_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        Krum(2)  # type: ignore[misc]


def test_fltrust_needs_a_usable_server_update() -> None:
    x = np.ones((3, 2))
    with pytest.raises(MissingServerUpdateError, match="set_server_update"):
        FLTrust()(x)
    rule = FLTrust()
    with pytest.raises(InvalidUpdateError, match="non-finite"):
        rule.set_server_update(np.array([np.nan, 1.0]))
    rule.set_server_update(np.zeros(2))
    with pytest.raises(InvalidUpdateError, match="zero vector"):
        rule(x)
    rule.set_server_update(np.ones(5))
    with pytest.raises(InvalidUpdateError, match="length 5, expected d=2"):
        rule(x)
    with pytest.raises(InvalidUpdateError, match="length 3, expected d=2"):
        FLTrust(server_update=lambda ctx: np.ones(3))(x)
    with pytest.raises(ConfigError, match="do not also call set_server_update"):
        FLTrust(server_update=lambda ctx: np.ones(2)).set_server_update(np.ones(2))


@pytest.mark.parametrize("factory", [lambda: FLAME(), lambda: DnC(b=1), lambda: Compose(Bucketing(s=2), Median())])
def test_randomised_rules_need_a_generator(factory) -> None:
    with pytest.raises(MissingGeneratorError, match="explicit generator"):
        factory()(np.random.default_rng(0).normal(size=(5, 3)))


def test_dnc_with_b_at_least_d_needs_no_generator() -> None:
    out = DnC(f=1, b=3)(np.random.default_rng(0).normal(size=(5, 3)))
    assert out.shape == (3,)


def test_stateful_rules_reject_a_change_of_d() -> None:
    cc = CenteredClipping()
    cc(np.ones((3, 2)))
    with pytest.raises(StateMismatchError, match="d=2 but got d=4"):
        cc(np.ones((3, 4)))
    fg = FoolsGold()
    fg(np.eye(3))
    with pytest.raises(StateMismatchError, match="d=3 but got d=2"):
        fg(np.ones((3, 2)))
    fg.reset()
    assert fg(np.eye(2)).shape == (2,)


def test_unknown_rule_names_list_the_closest() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'krum'") as info:
        make("krun")
    assert "multi_krum" in str(info.value)
    with pytest.raises(UnknownNameError, match="'trimmed_mean'"):
        make("trimmed-means")


@pytest.mark.parametrize(
    ("name", "hyper", "pattern"),
    [
        ("krum", {"f": 1, "zz": 3}, "krum (Krum) got unknown parameter 'zz'; valid parameters: f"),
        ("multi-krum", {"f": 1, "k": 2, "q": 1}, "unknown parameters 'k', 'q'; valid parameters: f, m"),
        ("dnc", {"niter": 3}, "unknown parameter 'niter'; valid parameters: f, niters, b, c, generator"),
        ("nnm", {"s": 2}, "nnm (NNM) got unknown parameter 's'; valid parameters: f"),
        ("norm_bound", {"f": 1}, "norm_bound (NormBound) needs the parameter 'M'; valid parameters: f, M"),
    ],
)
def test_registry_names_unknown_and_missing_parameters(name: str, hyper: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(pattern)):
        make(name, **hyper)


def test_registry_builds_with_valid_parameters() -> None:
    assert repr(make("multi_krum", f=1, m=3)) == "MultiKrum(f=1, m=3)"
    assert make("norm_bound", M=2.0).M == 2.0


@pytest.mark.parametrize(
    ("factory", "attr", "expected"),
    [
        (lambda: Krum(f=np.int64(2)), "f", 2),
        (lambda: MultiKrum(f=np.int32(1), m=np.uint8(3)), "m", 3),
        (lambda: CenteredClipping(tau=np.float32(0.5), L=np.int64(2)), "tau", 0.5),
        (lambda: CenteredClipping(tau=np.float32(0.5), L=np.int64(2)), "L", 2),
        (lambda: NormBound(M=np.float16(2.0)), "M", 2.0),
        (lambda: NormBound(M=np.int64(3)), "M", 3.0),
        (lambda: GeometricMedian(nu=np.float64(1e-5), max_iter=np.int16(7)), "max_iter", 7),
        (lambda: FLAME(lam=np.float32(0.25)), "lam", 0.25),
        (lambda: DnC(niters=np.int64(2), c=np.float32(1.5)), "c", 1.5),
        (lambda: Bucketing(s=np.int64(3)), "s", 3),
        (lambda: ARC(f=np.int8(1)), "f", 1),
    ],
)
def test_numpy_scalars_are_accepted_as_python_numbers(factory, attr: str, expected: float) -> None:
    value = getattr(factory(), attr)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("factory", "pattern"),
    [
        (lambda: Krum(f=np.bool_(True)), "f must be an int, got np.True_ (bool)"),
        (lambda: Krum(f=np.float64(1.0)), "f must be an int, got"),
        (lambda: CenteredClipping(tau=np.bool_(True)), "tau must be a real number, got np.True_ (bool)"),
        (lambda: CenteredClipping(tau=np.float32("nan")), "tau must be a positive number"),
        (lambda: NormBound(M=np.complex64(1.0)), "M must be a real number"),
        (lambda: FLAME(lam=np.bool_(False)), "lam must be a finite number >= 0"),
        (lambda: Krum(f=np.int64(-1)), "f must be >= 0, got f=-1"),
    ],
)
def test_numpy_bools_and_non_reals_are_still_refused(factory, pattern: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(pattern)):
        factory()


def test_input_is_never_modified() -> None:
    x = np.random.default_rng(0).normal(size=(7, 4))
    before = x.copy()
    for name in NAMES:
        RULES[name](1, 4)(x)
    np.testing.assert_array_equal(x, before)
