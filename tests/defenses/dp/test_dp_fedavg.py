"""Central and local DP-FedAvg, clipping bounds, adaptive clipping, DP-SGD and the federation history."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from defenses.dp import (
    AdaptiveClip,
    CentralDPFedAvg,
    L2Clip,
    LocalGaussianDP,
    PerLayerClip,
    PrivacyConfigError,
    clip_rows,
    planned_epsilon,
)
from fl_core.aggregation import RoundContext, WeightedMean
from fl_core.data.dataset import ArrayDataset
from fl_core.data.loaders import load_dataset
from fl_core.data.partition import partition
from fl_core.federation import Federation, make_clients
from fl_core.models import build_model
from fl_core.params import flatten_params
from fl_core.pipeline import Round
from fl_core.rng import numpy_generator
from fl_core.training import DPSGDConfig, LocalTrainingConfig, local_train


def _ctx(n: int, d: int, seed: int = 0) -> RoundContext:
    return RoundContext(0, tuple(range(n)), torch.ones(n), torch.zeros(d), torch.Generator().manual_seed(seed))


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.lists(st.floats(-1e3, 1e3, width=32), min_size=5, max_size=5), min_size=1, max_size=6),
    c=st.floats(1e-3, 1e3),
)
def test_clipping_enforces_its_bound(rows, c):
    U = torch.tensor(rows, dtype=torch.float32)
    out = L2Clip(clip_norm=c)(U)
    norms = torch.linalg.vector_norm(out.double(), dim=1)
    assert bool((norms <= c).all())
    small = torch.linalg.vector_norm(U.double(), dim=1) <= c
    assert torch.equal(out[small], U[small])  # rows within the bound are untouched
    pl = PerLayerClip(layer_sizes=(2, 3), clip_norms=(c, c / 2))
    out = pl(U)
    assert bool((torch.linalg.vector_norm(out[:, :2].double(), dim=1) <= c).all())
    assert bool((torch.linalg.vector_norm(out[:, 2:].double(), dim=1) <= c / 2).all())
    assert bool((torch.linalg.vector_norm(out.double(), dim=1) <= pl.clip_norm * (1 + 1e-12)).all())


def test_noise_multiplier_zero_gives_fedavg_exactly():
    g = torch.Generator().manual_seed(0)
    U = torch.randn(5, 40, generator=g)
    dp = CentralDPFedAvg(clip_norm=1e6, noise_multiplier=0.0, expected_clients=5, sample_rate=0.5, delta=1e-5)
    ctx = _ctx(5, 40)
    out = dp.noise(dp.aggregator.aggregate(dp.clip(U, ctx), torch.full((5,), 30.0), ctx=ctx).aggregate, ctx)
    assert torch.equal(out, WeightedMean()(U))
    ldp = LocalGaussianDP(clip_norm=1e6, noise_multiplier=0.0, delta=1e-5)
    assert torch.equal(ldp(U, ctx), U)


def test_central_noise_std_and_sensitivity():
    C, z, m, d = 2.0, 1.3, 10, 200_000
    dp = CentralDPFedAvg(clip_norm=C, noise_multiplier=z, expected_clients=m, sample_rate=0.1, delta=1e-5)
    U = torch.zeros(m, d)
    out = dp.pipeline()(U, torch.ones(m), Round(index=0, client_ids=tuple(range(m)), global_params=torch.zeros(d)))
    assert float(out.delta.double().std()) == pytest.approx(z * C / m, rel=0.01)
    assert out.metrics["dp_sensitivity"] == C / m and out.metrics["dp_noise_std"] == pytest.approx(z * C / m)
    with pytest.raises(PrivacyConfigError, match="needs the aggregate's sensitivity, got None"):
        dp.noise(torch.zeros(d), _ctx(m, d))  # outside a pipeline nobody computed the sensitivity
    assert dp.ledger.epsilon() == pytest.approx(
        planned_epsilon(noise_multiplier=z, sample_rate=0.1, rounds=1, delta=1e-5)
    )


def test_local_dp_noise_and_per_client_ledgers():
    C, z, d = 0.5, 2.0, 100_000
    ldp = LocalGaussianDP(clip_norm=C, noise_multiplier=z, delta=1e-5)
    out = ldp(torch.zeros(2, d), _ctx(2, d))
    assert float(out.double().std()) == pytest.approx(z * 2 * C, rel=0.01)
    ldp(torch.zeros(2, d), RoundContext(1, (1, 7), torch.ones(2), torch.zeros(d), torch.Generator().manual_seed(1)))
    two = planned_epsilon(noise_multiplier=z, sample_rate=1.0, rounds=2, delta=1e-5)
    assert ldp.ledgers.epsilon(1) == pytest.approx(two)
    assert ldp.ledgers.epsilon(7) < two and ldp.round_metrics()["dp_local_max_epsilon"] == pytest.approx(two)


def test_adaptive_clip_tracks_the_quantile():
    clip = AdaptiveClip(
        initial_clip_norm=0.1, target_quantile=0.7, learning_rate=0.2, count_noise_std=1.0, expected_clients=100
    )
    g = torch.Generator().manual_seed(5)
    for r in range(300):
        U = torch.randn(100, 1, generator=g).abs() * 10.0  # norms ~ |N(0, 100)|
        clip(U, RoundContext(r, tuple(range(100)), torch.ones(100), torch.zeros(1), g))
    true_q = 10.0 * 1.0364  # 0.7-quantile of |N(0,1)| is 1.0364
    assert clip.clip_norm == pytest.approx(true_q, rel=0.15)
    # Andrew et al. (2021): z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)
    assert clip.update_noise_multiplier(1.0) == pytest.approx((1 - 0.25) ** -0.5)
    with pytest.raises(PrivacyConfigError, match="must exceed"):
        clip.update_noise_multiplier(3.0)


def test_clip_rows_known_answer_and_bad_clip():
    out, norms = clip_rows(torch.tensor([[3.0, 4.0], [0.0, 0.0]]), 1.0)
    assert norms.tolist() == [5.0, 0.0] and out[1].tolist() == [0.0, 0.0]
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(PrivacyConfigError):
            L2Clip(clip_norm=bad)


def test_federation_history_records_epsilon_each_round():
    split = load_dataset("digits")
    parts = partition(split.train.labels, scheme="iid", n_clients=10, generator=numpy_generator(0))
    dp = CentralDPFedAvg(clip_norm=1.0, noise_multiplier=1.0, expected_clients=3, sample_rate=0.3, delta=1e-5)
    fed = Federation(
        model_name="mlp",
        clients=make_clients(split.train, parts),
        test_data=split.test,
        clients_per_round=3,
        seed=0,
        local=LocalTrainingConfig(max_steps=2),
        pipeline=dp.pipeline(),
    )
    hist = fed.run(rounds=2)
    eps = [rec.metrics["dp_epsilon"] for rec in hist.records]
    want = [planned_epsilon(noise_multiplier=1.0, sample_rate=0.3, rounds=r, delta=1e-5) for r in (1, 2)]
    assert eps == pytest.approx(want)
    assert all(rec.metrics["clip_norm"] == 1.0 for rec in hist.records)


def test_dp_sgd_in_local_training_matches_opacus_accounting_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    data = ArrayDataset(
        x=torch.randn(64, 1, 8, 8, generator=g), y=torch.randint(0, 2, (64,), generator=g), num_classes=2, name="toy"
    )
    cfg = LocalTrainingConfig(
        epochs=2, batch_size=16, lr=0.1, dp_sgd=DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0)
    )

    def run():
        model = build_model("mlp", input_shape=(1, 8, 8), num_classes=2, generator=torch.Generator().manual_seed(1))
        res = local_train(model, data, config=cfg, generator=torch.Generator().manual_seed(2))
        return res, flatten_params(model), model

    r1, p1, model = run()
    r2, p2, _ = run()
    assert torch.equal(p1, p2) and r1 == r2
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    ref = RDPAccountant()
    for _ in range(r1.steps):
        ref.step(noise_multiplier=1.0, sample_rate=16 / 64)
    assert r1.dp_epsilon == pytest.approx(ref.get_epsilon(delta=1e-5))
    with pytest.raises(ValueError, match="max_grad_norm"):
        DPSGDConfig(noise_multiplier=1.0, max_grad_norm=0.0)
