"""Combinations of round stages that cannot work are refused when they are built (issue 14's three cases).

Each used to run without error and give a wrong result: NNM mixing plaintext rows
before a "secure" sum; a robust rule between DDG's encoder and decoder (wrong sum,
wrong accounting); server noise sized for the fixed-denominator mean after Krum
(under-noised). The valid counterparts are accepted, so the check is not a blanket refusal.
"""

from __future__ import annotations

import numpy as np
import pytest

from defenses.dp import CentralDPFedAvg, DistributedDiscreteGaussian
from defenses.dp.distributed import ModularSum
from defenses.robust import NNM, Compose, Krum, Mean, Median
from fl_core import Federation, load_dataset, make_clients
from fl_core.contracts import CompositionError, check_round
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


@pytest.mark.parametrize("rule", [Krum(f=1), Median(f=1), Compose(NNM(f=1), Krum(f=1)), Mean()])
def test_central_noise_sized_for_the_fixed_denominator_mean_refuses_other_rules(rule):
    dp = _central()
    with pytest.raises(CompositionError, match=r"CentralGaussianNoise is calibrated for .*fixed_denominator_mean"):
        check_round(update_transforms=[dp.clip], aggregator=rule, aggregate_transforms=[dp.noise])
    check_round(**dp.federation_kwargs())  # the pipeline it was sized for


def test_federation_refuses_the_combination_before_any_training(monkeypatch):
    split = load_dataset("digits")
    clients = make_clients(split.train, [np.arange(i * 20, (i + 1) * 20) for i in range(9)])
    monkeypatch.setattr("fl_core.federation.local_train", lambda *a, **k: pytest.fail("trained"))
    dp = _central()
    with pytest.raises(CompositionError, match="Krum"):
        Federation(model_name="mlp", clients=clients, test_data=split.test, clients_per_round=9,
                   update_transforms=[dp.clip], aggregator=Krum(f=1), aggregate_transforms=[dp.noise])
