"""Combinations of round stages that cannot work are refused when they are built (issue 14's three cases).

Each used to run without error and give a wrong result: NNM mixing plaintext rows
before a "secure" sum; a robust rule between DDG's encoder and decoder (wrong sum,
wrong accounting); server noise sized for the fixed-denominator mean after Krum
(under-noised: the noise now follows the rule's own sensitivity, and a rule without one is
refused). A robust rule after a secure protocol that does not support it is refused. The
valid counterparts are accepted, so the check is not a blanket refusal.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from defenses.dp import CentralDPFedAvg, DistributedDiscreteGaussian
from defenses.dp.distributed import ModularSum
from defenses.robust import NNM, Bucketing, CenteredClipping, Compose, FoolsGold, Krum, Mean, Median
from fl_core import Federation, load_dataset, make_clients
from fl_core.contracts import CompositionError, check_round
from fl_core.pipeline import Pipeline, Round
from secure_agg import BFVAggregator, SecAggPlusAggregator


def _ddg() -> DistributedDiscreteGaussian:
    return DistributedDiscreteGaussian(clip_norm=1.0, noise_multiplier=0.5, expected_clients=9, bits=20,
                                       sample_rate=1.0, delta=1e-5, seed=7)


def _central() -> CentralDPFedAvg:
    return CentralDPFedAvg(clip_norm=1.0, noise_multiplier=1.0, expected_clients=9, sample_rate=1.0, delta=1e-5)


@pytest.mark.parametrize("secure", [SecAggPlusAggregator(clip=1.0), BFVAggregator(clip=1.0)])
def test_pre_aggregation_before_a_secure_sum_is_refused(secure):
    with pytest.raises(CompositionError, match=rf"NNM reads and mixes the plaintext rows .* {type(secure).__name__}"):
        Compose(NNM(f=1), secure)
    Compose(NNM(f=1), Krum(f=1))  # before a rule that reads plaintext rows it is fine


@pytest.mark.parametrize("rule", [Krum(f=1), Median(f=1), Mean()])
def test_a_rule_between_ddg_encode_and_decode_is_refused(rule):
    ddg = _ddg()
    with pytest.raises(CompositionError, match=rf"{type(rule).__name__} cannot aggregate the rows DDGEncode produces"):
        check_round(update_transforms=[ddg.encoder], aggregator=rule, aggregate_transforms=[ddg.decoder])
    for exact_sum in (ModularSum(modulus=2**20), SecAggPlusAggregator(clip=1.0, integer_input=True, ring_bits=20)):
        check_round(update_transforms=[ddg.encoder], aggregator=exact_sum, aggregate_transforms=[ddg.decoder])


def test_ddg_decode_after_a_real_valued_aggregate_is_refused():
    with pytest.raises(CompositionError, match=r"DDGDecode is calibrated for .*modular_sum.* outputs 'mean'"):
        check_round(update_transforms=[], aggregator=Mean(), aggregate_transforms=[_ddg().decoder])


def _dp_round(pipe: Pipeline, n: int = 9, d: int = 20_000):
    U = torch.randn(n, d, generator=torch.Generator().manual_seed(1))
    return pipe(U, torch.ones(n), Round(index=0, client_ids=tuple(range(n)), global_params=torch.zeros(d)))


@pytest.mark.parametrize(
    ("rule", "sensitivity"),
    [
        (None, 1.0 / 9),  # the fixed-denominator mean: C / m
        (Mean(), 2.0),  # a weighted mean stays in the ball: 2C
        (Krum(f=1), 2.0),  # a selected row: 2C, m = 18 times the mean's
        (Compose(NNM(f=1), Krum(f=1)), 2.0),  # NNM's rows are means of rows: still in the ball
        (Median(f=1), 2.0 * 3.0),  # coordinate-wise: 2C sqrt(n), n = 9
    ],
)
def test_central_noise_is_sized_for_the_rule_actually_used(rule, sensitivity):
    out = _dp_round(_central().pipeline(rule=rule, seed=5))
    assert out.metrics["dp_sensitivity"] == pytest.approx(sensitivity)
    assert out.metrics["dp_noise_std"] == pytest.approx(sensitivity)  # z = 1
    noise = (out.delta - out.result.aggregate).double()
    # d = 20000 draws: the sample std is within 3% of sigma with overwhelming probability
    assert float(noise.std()) == pytest.approx(sensitivity, rel=0.03)


@pytest.mark.parametrize("rule", [CenteredClipping(f=1), FoolsGold(f=1), Compose(Bucketing(s=2), FoolsGold(f=1))])
def test_central_noise_refuses_a_rule_without_a_known_sensitivity(rule):
    with pytest.raises(CompositionError, match=rf"CentralGaussianNoise .* but {re.escape(rule.label)} declares none"):
        _central().pipeline(rule=rule)


def test_central_noise_refuses_rows_an_attack_changed_after_the_clip():
    dp, attack = _central(), SignFlipAfterClip()
    with pytest.raises(CompositionError, match=r"unbounded \(SignFlipAfterClip runs after any clip"):
        Pipeline(client=[dp.clip, attack], rule=dp.aggregator, server=[dp.noise])
    with pytest.raises(CompositionError, match="no client transform bounds the rows"):
        Pipeline(rule=dp.aggregator, server=[dp.noise])
    Pipeline(attack=attack, client=[dp.clip], rule=dp.aggregator, server=[dp.noise])  # attack, then clip: fine


class SignFlipAfterClip:
    """A stand-in attack transform (it declares no contract, so it bounds nothing)."""

    def __call__(self, updates, ctx):
        return -updates


@pytest.mark.parametrize("secure", [SecAggPlusAggregator(clip=1.0), BFVAggregator(clip=1.0)])
@pytest.mark.parametrize("rule", [Krum(f=1), Median(f=1), Compose(NNM(f=1), Mean())])
def test_a_robust_rule_after_a_secure_protocol_that_does_not_support_it_is_refused(secure, rule):
    name = type(secure).__name__
    with pytest.raises(CompositionError, match=rf"{type(rule).__name__} needs the plaintext rows, which {name} hides"):
        Pipeline(secure=secure, rule=rule)
    assert Pipeline(secure=secure).aggregator is secure


def test_slots_hold_their_kind():
    with pytest.raises(CompositionError, match="pass it as secure="):
        Pipeline(rule=SecAggPlusAggregator(clip=1.0))
    with pytest.raises(CompositionError, match="pass it as rule="):
        Pipeline(secure=Krum(f=1))


def test_federation_refuses_the_combination_before_any_training(monkeypatch):
    split = load_dataset("digits")
    clients = make_clients(split.train, [np.arange(i * 20, (i + 1) * 20) for i in range(9)])
    monkeypatch.setattr("fl_core.federation.local_train", lambda *a, **k: pytest.fail("trained"))
    dp = _central()
    with pytest.raises(CompositionError, match="CenteredClipping declares none"):
        Federation(model_name="mlp", clients=clients, test_data=split.test, clients_per_round=9,
                   update_transforms=[dp.clip], aggregator=CenteredClipping(f=1), aggregate_transforms=[dp.noise])
    with pytest.raises(CompositionError, match="Krum needs the plaintext rows"):
        Federation(model_name="mlp", clients=clients, test_data=split.test, clients_per_round=9,
                   pipeline=Pipeline(secure=SecAggPlusAggregator(clip=1.0), rule=Krum(f=1)))


@pytest.mark.parametrize(("rule", "want"), [(Krum(f=2), 2 * 2.0), (None, None)])
def test_central_dp_after_two_server_sharing_is_sized_by_the_rules_sensitivity(rule, want):
    from secure_agg.twoserver import TwoServerAggregator
    from secure_agg.twoserver.aggregator import GeometricMean

    dp = CentralDPFedAvg(noise_multiplier=0.5, expected_clients=10, sample_rate=1.0, delta=1e-5, clip_norm=2.0)
    pipe = Pipeline(client=[dp.clip], secure=TwoServerAggregator(bound=5.0), rule=rule, server=[dp.noise])
    # Krum outputs one client's row (inside the ball of radius C = 2): sensitivity 2C; the mean: the weighted mean's
    expected = want if want is not None else GeometricMean().sensitivity(2.0, 10)
    assert expected is not None and pipe.aggregator.sensitivity(2.0, 10) == expected
    # a clip above the protocol's bound: validation rejects rows longer than 5, so the noise is sized by 5
    assert pipe.aggregator.sensitivity(9.0, 10) == (2 * 5.0 if want else GeometricMean().sensitivity(5.0, 10))
