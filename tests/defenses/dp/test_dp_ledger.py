"""The privacy ledger against Opacus' accountants; calibration; budget errors; dropouts."""

from __future__ import annotations

import warnings

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from defenses.dp import (
    CentralDPFedAvg,
    DistributedDiscreteGaussian,
    GaussianEvent,
    PerClientLedger,
    PrivacyBudgetError,
    PrivacyConfigError,
    PrivacyLedger,
    PureDPEvent,
    calibrate_noise_multiplier,
    planned_epsilon,
)
from fl_core.errors import UnknownNameError


@pytest.mark.parametrize("accountant,cls", [("rdp", RDPAccountant), ("prv", PRVAccountant)])
def test_epsilon_agrees_with_opacus(accountant, cls):
    led = PrivacyLedger(delta=1e-5, accountant=accountant)
    ref = cls()
    for _ in range(50):
        led.record(GaussianEvent(noise_multiplier=1.1, sample_rate=0.1))
        ref.step(noise_multiplier=1.1, sample_rate=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = ref.get_epsilon(delta=1e-5) if accountant == "rdp" else ref.get_epsilon(delta=1e-5, eps_error=0.01)
    assert led.epsilon() == pytest.approx(want, rel=1e-9)
    assert led.round_metrics()["dp_epsilon"] == pytest.approx(want, rel=1e-9)
    assert led.releases == 50


def test_standard_setting_known_value():
    # DP-FedAvg, 100 clients, 10 per round, z = 1, 100 rounds: Opacus RDP gives epsilon ~ 7.9 at delta = 1e-5
    eps = planned_epsilon(noise_multiplier=1.0, sample_rate=0.1, rounds=100, delta=1e-5)
    assert eps == pytest.approx(7.9, abs=0.05)


@pytest.mark.parametrize("target", [1.0, 4.0, 8.0])
def test_calibration_round_trip(target):
    z = calibrate_noise_multiplier(target_epsilon=target, delta=1e-5, sample_rate=0.1, rounds=200)
    eps = planned_epsilon(noise_multiplier=z, sample_rate=0.1, rounds=200, delta=1e-5)
    assert target * 0.99 <= eps <= target


def test_budget_errors_before_training():
    with pytest.raises(PrivacyBudgetError, match=r"target 1\.0"):
        CentralDPFedAvg(
            clip_norm=1.0,
            noise_multiplier=0.3,
            expected_clients=10,
            sample_rate=0.1,
            delta=1e-5,
            target_epsilon=1.0,
            planned_rounds=500,
        )
    with pytest.raises(PrivacyConfigError, match="noise multiplier 0"):
        CentralDPFedAvg(
            clip_norm=1.0,
            noise_multiplier=0.0,
            expected_clients=10,
            sample_rate=0.1,
            delta=1e-5,
            target_epsilon=1.0,
            planned_rounds=5,
        )
    for bad in (dict(target_epsilon=0.0), dict(target_epsilon=-2.0), dict(delta=0.0), dict(delta=1.5)):
        kw = {"target_epsilon": 1.0, "delta": 1e-5, "sample_rate": 0.1, "rounds": 10, **bad}
        with pytest.raises(PrivacyConfigError):
            calibrate_noise_multiplier(**kw)
    with pytest.raises(PrivacyConfigError, match="clip_norm"):
        CentralDPFedAvg(clip_norm=0.0, noise_multiplier=1.0, expected_clients=10, sample_rate=0.1, delta=1e-5)
    with pytest.raises(UnknownNameError, match="rdp"):
        PrivacyLedger(delta=1e-5, accountant="rpd")


def test_integer_noise_is_rdp_only_and_not_amplified_by_default():
    ev = GaussianEvent(noise_multiplier=2.0, sample_rate=0.1, gaussian_exact=False, mechanism="skellam")
    with pytest.raises(PrivacyConfigError, match="rdp"):
        PrivacyLedger(delta=1e-5, accountant="prv").record(ev)
    led = PrivacyLedger(delta=1e-5)
    led.record(ev)
    full = PrivacyLedger(delta=1e-5)
    full.record(GaussianEvent(noise_multiplier=2.0, sample_rate=1.0, gaussian_exact=False))
    assert led.epsilon() == pytest.approx(full.epsilon())
    assert any("without amplification" in n for n in led.notes)
    amp = PrivacyLedger(delta=1e-5, amplify_integer_noise=True)
    amp.record(ev)
    assert amp.epsilon() < led.epsilon() and amp.round_metrics()["dp_integer_noise_amplified"] == 1.0


def test_pure_events_compose_by_sum_and_per_client_ledgers():
    led = PrivacyLedger(delta=1e-5)
    led.record(PureDPEvent(epsilon=0.25, steps=4))
    assert led.epsilon() == pytest.approx(1.0)
    pc = PerClientLedger(delta=1e-5)
    for _ in range(3):
        pc.record(1, GaussianEvent(noise_multiplier=2.0))
    pc.record(2, GaussianEvent(noise_multiplier=2.0))
    assert pc.epsilon(1) == pytest.approx(planned_epsilon(noise_multiplier=2.0, sample_rate=1.0, rounds=3, delta=1e-5))
    assert pc.epsilon(1) > pc.epsilon(2) > pc.epsilon(3) == 0.0
    assert pc.round_metrics()["dp_local_max_epsilon"] == pytest.approx(pc.epsilon(1))


def test_dropouts_are_flagged_conservative():
    ddg = DistributedDiscreteGaussian(
        clip_norm=1.0, noise_multiplier=1.0, expected_clients=10, min_survivors=8, sample_rate=0.1, delta=1e-5
    )
    assert ddg.ledger.round_metrics()["dp_conservative_dropouts"] == 1.0
    assert any("conservative" in n for n in ddg.ledger.notes)
    # each client carries the noise share of 8, so 10 clients add more than the target
    assert ddg.local_std == pytest.approx(1.0 / 8**0.5)


def test_skellam_curve_composes_with_gaussian_history_as_one_rdp_sum():
    """A Skellam release after Gaussian rounds: epsilon from the summed curves (Opacus' conversion)."""
    import numpy as np
    from opacus.accountants.analysis import rdp as opacus_rdp

    from defenses.dp.mechanisms import INTEGER_ORDERS, SkellamMechanism

    sk = SkellamMechanism(mu=400.0, sensitivity=2.0)
    led = PrivacyLedger(delta=1e-5)
    led.record(GaussianEvent(noise_multiplier=1.5, sample_rate=0.2, steps=5))
    led.record(sk.event(steps=3))
    orders = list(INTEGER_ORDERS)
    curve = 3 * sk.rdp() + opacus_rdp.compute_rdp(q=0.2, noise_multiplier=1.5, steps=5, orders=orders)
    want, _ = opacus_rdp.get_privacy_spent(orders=orders, rdp=curve, delta=1e-5)
    assert led.epsilon() == pytest.approx(float(want), rel=1e-12)
    assert led.releases == 8
    # the dominating Gaussian would have claimed far more
    loose = PrivacyLedger(delta=1e-5)
    loose.record(GaussianEvent(noise_multiplier=1.5, sample_rate=0.2, steps=5))
    loose.record(GaussianEvent(noise_multiplier=sk.gaussian_equivalent_multiplier, steps=3, gaussian_exact=False))
    assert loose.epsilon() > 1.1 * led.epsilon()
    assert np.isfinite(led.epsilon())


def test_renyi_events_are_rdp_only_and_checked():
    from defenses.dp.events import RenyiEvent
    from defenses.dp.mechanisms import SkellamMechanism

    with pytest.raises(PrivacyConfigError, match="only the 'rdp' accountant"):
        PrivacyLedger(delta=1e-5, accountant="prv").record(SkellamMechanism(mu=100.0).event())
    with pytest.raises(PrivacyConfigError, match="one rdp value per order"):
        RenyiEvent(orders=(2, 3), rdp=(0.1,))
    with pytest.raises(PrivacyConfigError, match="finite and >= 0"):
        RenyiEvent(orders=(2,), rdp=(float("nan"),))
    led = PrivacyLedger(delta=1e-5)
    led.record(SkellamMechanism(mu=100.0).event(sample_rate=0.1))
    assert any("without amplification" in n for n in led.notes)
