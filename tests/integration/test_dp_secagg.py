"""Clip -> SecAgg+ with distributed discrete Gaussian noise -> server optimiser, in an fl_core Federation."""

from __future__ import annotations

import math

import torch

from defenses.dp import DistributedDiscreteGaussian, GaussianEvent, ModularSum, PrivacyLedger, planned_epsilon
from fl_core.data.loaders import load_dataset
from fl_core.data.partition import partition
from fl_core.federation import Federation, make_clients
from fl_core.rng import numpy_generator
from fl_core.training import LocalTrainingConfig
from secure_agg.aggregator import SecAggPlusAggregator


def _federation(aggregator, ddg: DistributedDiscreteGaussian) -> Federation:
    split = load_dataset("digits")
    parts = partition(split.train.labels, scheme="iid", n_clients=8, generator=numpy_generator(0))
    return Federation(
        model_name="mlp",
        clients=make_clients(split.train, parts),
        test_data=split.test,
        clients_per_round=4,
        seed=1,
        local=LocalTrainingConfig(max_steps=3, lr=0.1),
        update_transforms=[ddg.encoder],
        aggregator=aggregator,
        aggregate_transforms=[ddg.decoder],
    )


def _ddg() -> DistributedDiscreteGaussian:
    return DistributedDiscreteGaussian(clip_norm=1.0, noise_multiplier=0.5, expected_clients=4, bits=20,
                                       sample_rate=0.5, delta=1e-5, seed=11)


def test_distributed_dp_through_secagg_plus_equals_the_plain_modular_sum():
    ddg_sec, ddg_plain = _ddg(), _ddg()
    secure = SecAggPlusAggregator(clip=1.0, ring_bits=20, integer_input=True, gamma=0.0, delta=0.0)
    fed = _federation(secure, ddg_sec)
    hist = fed.run(rounds=2)
    ref = _federation(ModularSum(modulus=2**20), ddg_plain)
    ref.run(rounds=2)
    # secure aggregation sums the encoded integers exactly: same model as the sum in the clear
    assert torch.equal(fed.global_params, ref.global_params)
    recs = hist.records
    assert [r.metrics["n_survivors"] for r in recs] == [4.0, 4.0]
    assert recs[0].metrics["upload_bytes_per_param"] > 0
    eps = [r.metrics["dp_epsilon"] for r in recs]
    assert 0 < eps[0] < eps[1] < math.inf
    # no amplification by sampling for integer noise (conservative): at least the Gaussian q = 1 epsilon
    z_eq = ddg_sec.event(fed.global_params.numel()).noise_multiplier
    ref_led = PrivacyLedger(delta=1e-5)
    ref_led.record(GaussianEvent(noise_multiplier=z_eq, sample_rate=1.0, steps=2, gaussian_exact=False))
    assert eps[1] == ref_led.epsilon()
    assert eps[1] > planned_epsilon(noise_multiplier=z_eq, sample_rate=0.5, rounds=2, delta=1e-5)
    assert recs[-1].test_accuracy is not None and math.isfinite(recs[-1].train_loss)
