"""Bad input found getting through or failing late (issue 13): each gets a specific error, before any work.

Covers the fl_core, DP and suite entry points; the robust rules and the protocols
have their own files beside this one.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.suite import SuiteError, parse_suite, render_report, run_suite
from defenses.dp import SkellamMechanism
from defenses.dp.clipping import L2Clip, clip_rows
from defenses.dp.errors import PrivacyConfigError, check_delta
from defenses.dp.ledger import PrivacyLedger
from defenses.robust import Krum
from fl_core import Federation, LocalTrainingConfig, make_clients
from fl_core.checks import as_int, as_real
from fl_core.errors import ConfigError, InvalidUpdateError, ToleranceError
from fl_core.training import DPSGDConfig

SUITE = """
name = "bad"
[setting]
dataset = "digits"
clients = 4
rounds = 1
{setting}
[[attacks]]
name = "{attack}"
{attack_params}
[[defenses]]
name = "median"
"""


def _suite(setting: str = "", attack: str = "none", attack_params: str = "") -> str:
    return SUITE.format(setting=setting, attack=attack, attack_params=attack_params)


# --------------------------------------------------------------------------- suites


@pytest.mark.parametrize(
    ("setting", "key", "message"),
    [
        ("lr = inf", "setting.lr", "finite"),
        ("lr = nan", "setting.lr", "finite"),
        ("server_lr = -1.0", "setting.server_lr", "> 0"),
        ("shards_per_client = 0", "setting.shards_per_client", ">= 1"),
        ('data_path = "/nonexistent/fmnist"', "setting.data_path", "no such directory"),
        ('device = "tpu"', "setting.device", "tpu"),
        ("alpha = inf", "setting.alpha", "finite"),
        ("local_epochs = 1.5", "setting.local_epochs", "must be int"),
    ],
)
def test_suite_setting_values_name_the_key(setting, key, message, tmp_path):
    with pytest.raises(SuiteError) as err:
        parse_suite(_suite(setting))
    assert err.value.key == key and message in str(err.value)


@pytest.mark.parametrize(
    ("attack", "params", "key", "message"),
    [
        ("alie", 'params = { z = "high" }', "attacks[0].params.z", "expects float | None, got 'high'"),
        ("ipm", "params = { epsilon = true }", "attacks[0].params.epsilon", "expects float"),
        ("label-flip", "params = { target = 1.5 }", "attacks[0].params.target", "got 1.5"),
        ("min-max", "params = { perturbation = 3 }", "attacks[0].params.perturbation", "expects str"),
    ],
)
def test_suite_attack_parameter_types_are_checked_before_any_cell(attack, params, key, message):
    with pytest.raises(SuiteError) as err:
        parse_suite(_suite(attack=attack, attack_params=params))
    assert err.value.key == key and message in str(err.value)


def test_suite_defense_parameter_types_are_checked():
    text = _suite().replace('name = "median"', 'name = "krum"\nparams = { f = "one" }')
    with pytest.raises(SuiteError) as err:
        parse_suite(text)
    assert err.value.key == "defenses[0].params.f" and "'one'" in str(err.value)


def test_suite_attack_value_out_of_range_fails_before_the_output_directory_exists(tmp_path):
    # the type is right, the value is refused by the attack on the real data (10 classes)
    spec = parse_suite(_suite(attack="label-flip", attack_params='params = { mode = "all-to-one", target = 12 }'))
    out = tmp_path / "out"
    with pytest.raises(SuiteError) as err:
        run_suite(spec, out=out, progress=False)
    assert err.value.key == "attacks[0]" and "12" in str(err.value)
    assert not out.exists()


def test_suite_report_names_a_damaged_cell_file(tmp_path):
    spec = parse_suite(_suite())
    out = tmp_path / "out"
    run_suite(spec, out=out, progress=False)
    (cell,) = (out / "cells").glob("*.json")
    good = cell.read_text()
    for damage in (good[: len(good) // 2], "[1, 2]", json.dumps({"cell_id": cell.stem})):
        cell.write_text(damage)
        with pytest.raises(SuiteError) as err:
            render_report(out)
        assert str(cell) in str(err.value) and "damaged cell file" in str(err.value)
    # a re-run recomputes the damaged cell, and the report renders again
    run_suite(spec, out=out, progress=False)
    assert render_report(out).is_file()


# --------------------------------------------------------------------------- fl_core


def test_local_training_config_refuses_non_integers_and_accepts_numpy_scalars():
    for kw, msg in [
        ({"epochs": 1.5}, "local epochs must be an int, got 1.5"),
        ({"batch_size": 2.5}, "batch_size must be an int, got 2.5"),
        ({"epochs": True}, "local epochs must be an int, got True"),
        ({"lr": math.inf}, "lr must be finite"),
        ({"momentum": 1.0}, "momentum must be < 1.0"),
        ({"max_steps": 0}, "max_steps must be >= 1"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            LocalTrainingConfig(**kw)
    cfg = LocalTrainingConfig(epochs=np.int64(2), batch_size=np.int32(8), lr=np.float32(0.5))
    assert (cfg.epochs, cfg.batch_size, cfg.lr) == (2, 8, 0.5)
    assert type(cfg.epochs) is int and type(cfg.lr) is float
    assert DPSGDConfig(noise_multiplier=np.float32(1.0), max_grad_norm=1, delta=np.float32(1e-5)).delta > 0


def test_federation_refuses_an_intolerable_rule_at_construction(monkeypatch):
    from fl_core.data.loaders import load_digits

    split = load_digits()
    parts = [np.arange(i * 20, (i + 1) * 20) for i in range(4)]
    clients = make_clients(split.train, parts)
    trained = []
    monkeypatch.setattr("fl_core.federation.local_train", lambda *a, **k: trained.append(1))
    with pytest.raises(ToleranceError, match=r"n=4, f=2"):
        Federation(model_name="mlp", clients=clients, test_data=split.test, clients_per_round=4,
                   aggregator=Krum(f=2))
    assert trained == []  # refused before any local training
    with pytest.raises(ConfigError, match="aggregator must be an fl_core Aggregator"):
        Federation(model_name="mlp", clients=clients, test_data=split.test, clients_per_round=4,
                   aggregator=lambda u: u.mean(0))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    value=st.one_of(
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.text(max_size=3),
        st.none(),
    ),
)
def test_scalar_checks_accept_exactly_the_valid_numbers(value):
    """``as_int`` / ``as_real`` either return a plain int/float within bounds or raise ConfigError."""
    for v in (value, np.float32(value) if isinstance(value, float) and not abs(value) > 3e38 else value):
        try:
            out = as_int("k", v, minimum=0)
            assert type(out) is int and out >= 0 and not isinstance(v, bool | float | str)
        except ConfigError as exc:
            assert "k must" in str(exc)
        try:
            out = as_real("x", v, low=0.0, high=10.0)
            assert type(out) is float and 0.0 <= out <= 10.0 and not isinstance(v, bool | str)
        except ConfigError as exc:
            assert "x must" in str(exc)


# --------------------------------------------------------------------------- DP


def test_clip_rows_refuses_nan_and_bounds_extreme_rows():
    with pytest.raises(InvalidUpdateError, match="non-finite"):
        clip_rows(torch.tensor([[float("nan"), 1.0], [0.0, 1.0]]), 1.0)
    with pytest.raises(InvalidUpdateError, match="non-finite"):
        L2Clip(clip_norm=1.0)(torch.tensor([[math.inf, 1.0]]), None)
    big = torch.finfo(torch.float32).max
    out, _ = clip_rows(torch.tensor([[big, -big, big], [1e-30, 0.0, 0.0], [0.0, 0.0, 0.0]]), 2.0)
    norms = torch.linalg.vector_norm(out.double(), dim=1)
    assert torch.isfinite(out).all() and norms[0] <= 2.0 and norms[0] > 1.99
    assert out[1, 0] == 1e-30 and (out[2] == 0).all()  # small rows are untouched (factor exactly 1)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    magnitude=st.floats(1e-30, 3.4e38),
    d=st.integers(1, 16),
    c=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**16),
)
def test_clip_rows_never_overflows_and_never_exceeds_the_bound(magnitude, d, c, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(5, d, generator=g, dtype=torch.float64) * 2 - 1) * magnitude
    x = x.to(torch.float32)
    out, _ = clip_rows(x, c)
    norms = torch.linalg.vector_norm(out.double(), dim=1)
    assert torch.isfinite(out).all() and bool((norms <= c).all())


def test_dp_checks_accept_numpy_scalars():
    assert check_delta(np.float32(1e-5)) == pytest.approx(1e-5)
    assert PrivacyLedger(delta=np.float64(1e-5)).delta == 1e-5
    with pytest.raises(PrivacyConfigError, match=r"delta must be < 1\.0"):
        check_delta(np.float32(1.0))


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    epsilon=st.floats(0.2, 10.0),
    delta=st.sampled_from([1e-3, 1e-5, 1e-7]),
    sensitivity=st.floats(0.5, 8.0),
    steps=st.integers(1, 5),
)
def test_skellam_calibration_and_ledger_agree(epsilon, delta, sensitivity, steps):
    """Calibrated for epsilon, one release: the ledger reports at most epsilon, within 0.1 %; k releases compose."""
    sk = SkellamMechanism.from_epsilon_delta(epsilon=epsilon, delta=delta, sensitivity=sensitivity)
    led = PrivacyLedger(delta=delta)
    led.record(sk.event())
    assert epsilon * 0.999 <= led.epsilon() <= epsilon
    many = PrivacyLedger(delta=delta)
    many.record(sk.event(steps=steps))
    assert many.epsilon() == pytest.approx(sk.epsilon(delta=delta, steps=steps), rel=1e-9)
