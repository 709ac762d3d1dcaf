"""The fl_core plug-ins: HE FedAvg equals plaintext FedAvg within the documented error bound."""

from __future__ import annotations

import pytest
import torch

from fl_core import Federation, LocalTrainingConfig, load_dataset, make_clients, partition
from fl_core.aggregation import Aggregator, RoundContext, WeightedMean
from fl_core.rng import numpy_generator
from secure_agg.he import BFVAggregator, CKKSAggregator
from secure_agg.he.errors import HEConfigError


def _ctx(n: int, seed: int) -> RoundContext:
    return RoundContext(round_idx=0, client_ids=tuple(range(n)), weights=torch.ones(n),
                        global_params=torch.zeros(1), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cls", [BFVAggregator, CKKSAggregator])
def test_matches_weighted_mean_and_reports_costs(cls) -> None:
    g = torch.Generator().manual_seed(0)
    U = torch.rand(7, 3000, generator=g) * 2 - 1
    w = torch.randint(1, 100, (7,), generator=g).float()
    agg = cls(clip=1.0)
    assert isinstance(agg, Aggregator)
    res = agg.aggregate(U, w, ctx=_ctx(7, 0))
    ref = WeightedMean().aggregate(U.double(), w.double()).aggregate
    assert (res.aggregate.double() - ref).abs().max().item() <= res.metrics["error_bound"] + 1e-7
    assert res.kept.all() and res.metrics["security_bits"] >= 128
    slots = res.metrics["poly_modulus_degree"] / (1 if cls is BFVAggregator else 2)
    raw = 2 * 8 * res.metrics["poly_modulus_degree"] * res.metrics["n_ciphertexts"]  # uncompressed ciphertexts
    assert res.metrics["n_ciphertexts"] == -(-3001 // slots)
    assert 4 < res.metrics["upload_bytes_per_param"] <= raw * 1.01 / 3000


def test_dropouts_and_bad_weights() -> None:
    g = torch.Generator().manual_seed(1)
    U = torch.rand(10, 40, generator=g) - 0.5
    w = torch.randint(1, 30, (10,), generator=g).float()
    res = BFVAggregator(clip=1.0, dropout_rate=0.2).aggregate(U, w, ctx=_ctx(10, 2))
    assert int((~res.kept).sum()) == 2
    ref = WeightedMean().aggregate(U[res.kept].double(), w[res.kept].double()).aggregate
    assert (res.aggregate.double() - ref).abs().max().item() <= res.metrics["error_bound"] + 1e-7
    with pytest.raises(HEConfigError, match="integer example counts"):
        BFVAggregator(clip=1.0)(U[:2], torch.tensor([0.5, 1.0]))
    with pytest.raises(HEConfigError, match="clip"):
        CKKSAggregator(clip=0.0)


class _Compare(Aggregator):
    """Runs the HE aggregator and records its distance to plaintext FedAvg on the same cohort."""

    def __init__(self, inner: Aggregator) -> None:
        self.inner = inner
        self.gaps: list[tuple[float, float]] = []

    def _aggregate(self, updates, weights, ctx):
        res = self.inner.aggregate(updates, weights, ctx=ctx)
        ref = WeightedMean().aggregate(updates.double(), weights.double()).aggregate
        self.gaps.append(((res.aggregate.double() - ref).abs().max().item(), res.metrics["error_bound"]))
        assert res.metrics["n_clipped"] == 0
        return res


def _fed(agg: Aggregator) -> Federation:
    split = load_dataset("digits")
    parts = partition(split.train.labels, scheme="dirichlet", alpha=0.5, n_clients=6,
                      generator=numpy_generator(0, 1))
    return Federation(model_name="mlp", clients=make_clients(split.train, parts), test_data=split.test,
                      clients_per_round=5, seed=0, aggregator=agg, eval_every=2,
                      local=LocalTrainingConfig(epochs=1, batch_size=32, lr=0.05, momentum=0.9, max_steps=8))


@pytest.fixture(scope="module")
def plain_fedavg() -> Federation:
    f = _fed(WeightedMean())
    f.run(rounds=2)
    return f


@pytest.mark.parametrize("cls", [BFVAggregator, CKKSAggregator])
def test_federation_on_digits_matches_plaintext_fedavg(cls, plain_fedavg: Federation) -> None:
    he = _Compare(cls(clip=10.0))
    f_he, f_plain = _fed(he), plain_fedavg
    f_he.run(rounds=2)
    assert len(he.gaps) == 2
    for gap, bound in he.gaps:
        assert gap <= bound + 1e-6  # + float32 rounding of the returned aggregate
    total = sum(b for _, b in he.gaps)
    assert (f_he.global_params - f_plain.global_params).abs().max().item() <= 100 * total + 1e-5
