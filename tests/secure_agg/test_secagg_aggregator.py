"""The fl_core plug-ins: same weighted mean as plaintext FedAvg within the quantisation bound."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.aggregation import Aggregator, RoundContext, WeightedMean
from secure_agg.aggregator import SecAggAggregator, SecAggPlusAggregator
from secure_agg.errors import SecAggConfigError
from secure_agg.messages import Stage


def _ctx(n: int, seed: int, round_idx: int = 0) -> RoundContext:
    g = torch.Generator().manual_seed(seed)
    return RoundContext(
        round_idx=round_idx,
        client_ids=tuple(range(n)),
        weights=torch.ones(n),
        global_params=torch.zeros(1),
        generator=g,
    )


@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(4, 14),
    d=st.integers(1, 64),
    plus=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_plaintext_weighted_mean(n: int, d: int, plus: bool, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    U = torch.rand(n, d, generator=g) * 2 - 1
    w = torch.randint(1, 500, (n,), generator=g).float()
    cls = SecAggPlusAggregator if plus else SecAggAggregator
    agg = cls(clip=1.0)
    assert isinstance(agg, Aggregator)
    res = agg.aggregate(U, w, ctx=_ctx(n, seed))
    ref = WeightedMean().aggregate(U.double(), w.double()).aggregate
    err = (res.aggregate.double() - ref).abs().max().item()
    assert err <= res.metrics["quantization_error_bound"] + 1e-6  # float32 output rounding
    assert res.kept.all() and res.metrics["n_survivors"] == n
    # 4-byte ring words, the weight coordinate, a 34-byte header, the k peer ids it was
    # masked with (4 + 4k bytes) and the 32-byte channel MAC per message
    k = int(res.metrics["k"])
    assert res.metrics["masked_input_bytes_per_param"] == pytest.approx(4 + (74 + 4 * k) / d)


def test_dropouts_give_the_mean_of_the_survivors() -> None:
    n, d = 20, 30
    g = torch.Generator().manual_seed(1)
    U = torch.rand(n, d, generator=g) - 0.5
    w = torch.randint(1, 50, (n,), generator=g).float()
    agg = SecAggPlusAggregator(clip=1.0, dropout_rate=0.1, dropout_stage=Stage.MASKED_INPUT)
    res = agg.aggregate(U, w, ctx=_ctx(n, 2))
    assert int((~res.kept).sum()) == 2 and res.metrics["n_survivors"] == 18
    ref = WeightedMean().aggregate(U[res.kept].double(), w[res.kept].double()).aggregate
    assert (res.aggregate.double() - ref).abs().max().item() <= res.metrics[
        "quantization_error_bound"
    ] + 1e-6


def test_late_dropouts_stay_in_the_sum() -> None:
    n = 10
    U = torch.linspace(-1, 1, n * 3).reshape(n, 3)
    res = SecAggPlusAggregator(clip=1.0, dropout_rate=0.1, dropout_stage=Stage.UNMASKING).aggregate(
        U, ctx=_ctx(n, 0)
    )
    assert res.kept.all()
    assert torch.allclose(res.aggregate, U.mean(0), atol=1e-6)


def test_deterministic_given_the_round_generator() -> None:
    U = torch.rand(6, 5, generator=torch.Generator().manual_seed(0))
    a = SecAggPlusAggregator(clip=1.0).aggregate(U, ctx=_ctx(6, 3)).aggregate
    b = SecAggPlusAggregator(clip=1.0).aggregate(U, ctx=_ctx(6, 3)).aggregate
    assert torch.equal(a, b)  # masks cancel exactly; only the rounding noise is random


def test_clipping_is_counted() -> None:
    U = torch.tensor([[3.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    res = SecAggPlusAggregator(clip=1.0, gamma=0.0, delta=0.0).aggregate(U)
    assert res.metrics["n_clipped"] == 1.0
    assert res.aggregate[0].item() == pytest.approx(0.25, abs=1e-6)


def test_bad_configuration_and_weights_raise() -> None:
    with pytest.raises(SecAggConfigError, match="integer example counts"):
        SecAggPlusAggregator(clip=1.0).aggregate(torch.zeros(5, 2), torch.tensor([0.5, 1, 1, 1, 1]))
    with pytest.raises(SecAggConfigError, match="at least 2 clients"):
        SecAggPlusAggregator(clip=1.0).aggregate(torch.zeros(1, 2))
    with pytest.raises(SecAggConfigError, match="clip"):
        SecAggPlusAggregator(clip=-1.0)
    with pytest.raises(SecAggConfigError, match="lower gamma or delta"):
        SecAggPlusAggregator(clip=1.0, gamma=0.3, delta=0.3).aggregate(torch.zeros(3, 2))
